"""The model-selection hold-out: a seeded, label-stratified split of the training cache (issue 7).

:func:`stratified_holdout` — iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML-PKDD 2011) for a
two-part split, with an extra rule that every class with >= 2 positives gets at least one in each part
whenever its positives are still unassigned when the class's turn comes. Pure NumPy.
"""
from __future__ import annotations

import numpy as np

from iagcn.metrics import MetricInputError


def stratified_holdout(labels, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split images into (train_idx, holdout_idx), seeded, disjoint, covering, label-stratified.

    Args:
        labels: (n, C) with 1 for a positive (0 and -1 both count as "not positive" here).
        fraction: share of images in the hold-out part, 0 < fraction < 1 (rounded to whole images, >= 1 each).
        seed: the split depends only on (labels, fraction, seed).
    Returns:
        two sorted int64 index arrays that together cover range(n) exactly once.

    Iterative stratification: the class with the fewest not-yet-assigned positives is handled first; each of its
    images goes to the part that still *wants* the most positives of that class (ties: the part that wants the most
    images overall, then a seeded coin), unless that part is already full. If a class with >= 2 positives has none in a part yet, its next image goes
    to that part. Images without positives fill the parts up to their desired sizes at the end.
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise MetricInputError(f"labels: expected a 2-D (n_images, n_classes) array, got shape {y.shape}")
    fraction = float(fraction)
    if not (0.0 < fraction < 1.0):
        raise MetricInputError(f"--val-fraction: {fraction} must be strictly between 0 and 1 (e.g. 0.1)")
    n, n_classes = y.shape
    n_hold = int(round(fraction * n))
    if n < 2 or not (1 <= n_hold <= n - 1):
        raise MetricInputError(f"--val-fraction: {fraction} of {n} images leaves an empty part; "
                               "use a larger training cache or another fraction")
    positive = y == 1  # (n, C)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)  # random visiting order (ties broken by it)
    positive = positive[perm]  # (n, C) in visiting order

    part = np.full(n, -1, dtype=np.int8)  # 0 = train, 1 = hold-out, -1 = unassigned (visiting order)
    desired_size = np.array([n - n_hold, n_hold], dtype=np.float64)  # (2,)
    class_total = positive.sum(0)  # (C,)
    desired = np.stack([class_total * (1 - fraction), class_total * fraction])  # (2, C) positives each part wants
    have = np.zeros((2, n_classes), dtype=np.int64)  # (2, C) positives already in each part

    def assign(i: int, p: int) -> None:
        part[i] = p
        desired_size[p] -= 1
        desired[p] -= positive[i]
        have[p] += positive[i]

    while True:
        unassigned = part < 0  # (n,)
        remaining = positive[unassigned].sum(0)  # (C,)
        if not remaining.any():
            break
        c = int(np.argmin(np.where(remaining > 0, remaining, np.iinfo(np.int64).max)))  # rarest class left
        for i in np.flatnonzero(unassigned & positive[:, c]):
            missing = [p for p in (1, 0) if have[p, c] == 0]
            if class_total[c] >= 2 and missing and desired_size[missing[0]] > 0:
                p = missing[0]  # guarantee representation in both parts (hold-out first)
            else:
                want = desired[:, c]
                if want[0] != want[1]:
                    p = int(np.argmax(want))
                elif desired_size[0] != desired_size[1]:
                    p = int(np.argmax(desired_size))
                else:
                    p = int(rng.integers(2))
                if desired_size[p] <= 0:
                    p = 1 - p  # that part is full: keep the sizes exact
            assign(int(i), p)
    rest = np.flatnonzero(part < 0)  # images without positives, in random order
    n_fill = int(max(0, min(len(rest), desired_size[1])))
    part[rest[:n_fill]] = 1
    part[rest[n_fill:]] = 0
    train_idx = np.sort(perm[part == 0]).astype(np.int64)
    hold_idx = np.sort(perm[part == 1]).astype(np.int64)
    return train_idx, hold_idx
