"""Label correlation matrices: the statistical LCM A_S (ML-GCN), its controls, and the GCN adjacency normalisation.

Plain functions over NumPy arrays / torch tensors (see ../shared/design/paper-decisions.md,
"Statistical LCM A_S"). :func:`adjacency_control` replaces A_S by a control matrix (issue 17, docs/training.md
"Controls") before anything reads it: the static Â_S of the label GCN and the A_S factor of A_F = A_S ⊙ A_I (Eq. 1).
"""
from __future__ import annotations

import numpy as np
import torch


def statistical_lcm(labels: np.ndarray, *, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """The statistical LCM A_S (C, C) of ML-GCN, from positive labels only.

    Args:
        labels: (n, C) with 1 present, 0 absent, -1 ignored (ignored entries do not count).
        tau: threshold on the conditional probability P(j | i).
        p: total weight given to a label's neighbours (ML-GCN's re-weighting, column sums as in its code).

    Returns:
        (C, C) float32: A = binarise(P >= tau) re-weighted by p / column sums, plus the identity.
    """
    Y = (np.asarray(labels) == 1).astype(np.float64)              # (n, C) positives only
    M = Y.T @ Y                                                    # (C, C) co-occurrence counts
    n = np.diag(M).copy()                                          # (C,) images with label i
    np.fill_diagonal(M, 0.0)                                       # i != j only
    P = M / np.maximum(n, 1.0)[:, None]                            # (C, C) P[i, j] = P(j | i); absent label -> 0
    A = (P >= tau).astype(np.float64)                              # (C, C) binarised
    return _reweight(A, p=p)


def _reweight(A: np.ndarray, *, p: float) -> np.ndarray:
    """ML-GCN's re-weighting of a binary (C, C) graph: A * p / column sums, plus the identity (float32)."""
    A = A * p / (A.sum(axis=0, keepdims=True) + 1e-6)              # (C, C) column-sum re-weighting
    A = A + np.eye(A.shape[0])                                     # (C, C) self loops
    return A.astype(np.float32)


#: the values of TrainConfig.adjacency_control
ADJACENCY_CONTROLS = ("none", "identity", "uniform", "shuffled", "random")


def adjacency_control(A_S: np.ndarray, *, control: str, seed: int, p: float = 0.25) -> tuple[np.ndarray, dict]:
    """The control matrix that replaces A_S (C, C), and what defines it (for the run's record).

    * ``none``: A_S itself (the same array).
    * ``identity``: I, so Â = D I^T D = I exactly: no message passing between labels.
    * ``uniform``: the all-ones matrix, so Â = 1/C everywhere: every label receives the mean of all labels.
    * ``shuffled``: P A_S P^T, A'[i, j] = A_S[pi(i), pi(j)] for a permutation pi seeded by ``seed``: the same graph
      with its labels renamed (diagonal stays on the diagonal, the multiset of entries is A_S's).
    * ``random``: a binary graph with A_S's number of non-zero off-diagonal entries at positions drawn uniformly
      (seeded by ``seed``) among the C (C - 1) off-diagonal ones, re-weighted exactly as A_S is (p / column sums,
      plus I). Not symmetric, as A_S is not.

    Returns (A (C, C) float32, record): the record holds ``control`` and, for ``shuffled`` the permutation pi, for
    ``random`` the number of off-diagonal edges.
    """
    A_S = np.asarray(A_S)
    C = A_S.shape[0]
    rng = np.random.default_rng(seed)
    if control == "none":
        return A_S, {"control": "none"}
    if control == "identity":
        return np.eye(C, dtype=np.float32), {"control": control}
    if control == "uniform":
        return np.ones((C, C), np.float32), {"control": control}
    if control == "shuffled":
        perm = rng.permutation(C)                                  # (C,) pi
        return A_S[np.ix_(perm, perm)].astype(np.float32), {"control": control, "permutation": perm.tolist()}
    if control == "random":
        off = ~np.eye(C, dtype=bool)                               # (C, C) off-diagonal positions
        edges = int((A_S[off] != 0).sum())                         # A_S's density off the diagonal
        B = np.zeros(C * C, np.float64)                            # (C * C,) flat binary graph
        B[rng.choice(np.flatnonzero(off.ravel()), size=edges, replace=False)] = 1.0
        return _reweight(B.reshape(C, C), p=p), {"control": control, "edges": edges}
    raise ValueError(f"adjacency_control: unknown control {control!r}; one of {', '.join(ADJACENCY_CONTROLS)}")


def normalize_adjacency(A: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Â = D A^T D with D = diag(rowsum(A)^-1/2) (ML-GCN's ``gen_adj``), batched over leading dims.

    Rows that sum to (almost) zero are clamped at ``eps`` so nothing divides by zero (labels whose
    image-level probability is ~0 give near-empty rows of A_F).

    Args:
        A: (..., C, C) non-negative adjacency (tensor or array).
    Returns:
        (..., C, C) tensor.
    """
    A = torch.as_tensor(A)
    d = A.sum(dim=-1).clamp_min(eps).rsqrt()                       # (..., C) rowsum^-1/2
    return d.unsqueeze(-1) * A.transpose(-1, -2) * d.unsqueeze(-2)  # (..., C, C) D A^T D
