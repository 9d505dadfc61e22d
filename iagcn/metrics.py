"""Multi-label classification metrics: per-class AP / mAP and ML-GCN's CP, CR, CF1, OP, OR, OF1 (+ top-3).

Pure functions over NumPy arrays (no torch). Conventions (see docs/metrics.md):

* ``scores`` is an (n_images, n_classes) float array of **logits** or **probabilities**; functions that
  threshold say which with the keyword ``scores_are="logits" | "probabilities"`` (no default, so a caller
  cannot silently threshold logits at 0.5). AP only ranks, so it accepts either.
* ``targets`` is an (n_images, n_classes) integer array with 1 (positive), 0 (negative), -1 (ignore,
  VOC "difficult"). For AP the -1 entries are removed per class; for CP ... OF1 they count as negatives.
* Every returned metric is a **percentage** in [0, 100] (the paper prints percentages, one decimal).
* A class without any positive target is *not evaluable*: its AP is NaN (with a warning naming it) and
  it is left out of mAP, CP and CR. O* pool the counts over all classes.
"""
from __future__ import annotations

import warnings
from typing import Literal, Sequence

import numpy as np

from iagcn.errors import UserError

ScoresAre = Literal["logits", "probabilities"]

MAIN_METRICS: tuple[str, ...] = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
THRESHOLD_METRICS: tuple[str, ...] = ("CP", "CR", "CF1", "OP", "OR", "OF1")


class MetricInputError(UserError, ValueError):
    """Scores / targets that cannot be evaluated (wrong shape, non-finite, bad labels)."""


def top_k_metric_names(k: int) -> tuple[str, ...]:
    """Names of the top-k block, e.g. ``CP_top3`` ... ``OF1_top3``."""
    return tuple(f"{m}_top{k}" for m in THRESHOLD_METRICS)


def metric_names(top_k: int | None = 3) -> tuple[str, ...]:
    """All keys returned by :func:`multilabel_metrics` for this ``top_k``, in table order."""
    return MAIN_METRICS + (top_k_metric_names(top_k) if top_k else ())


# ----------------------------------------------------------------------------------------------- validation
def validate_scores_targets(scores, targets, *, scores_are: ScoresAre | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, finiteness, label values (and the [0, 1] range for probabilities).

    Returns ``(scores float64 (n, C), targets int8 (n, C))``; raises :class:`MetricInputError`.
    """
    s = np.asarray(scores)
    t = np.asarray(targets)
    if s.ndim != 2:
        raise MetricInputError(f"scores: expected a 2-D (n_images, n_classes) array, got shape {s.shape}; "
                               "pass one row per image and one column per class")
    if t.shape != s.shape:
        raise MetricInputError(f"targets: shape {t.shape} does not match scores {s.shape}; "
                               "pass scores and targets for the same images and classes")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise MetricInputError(f"scores: empty array of shape {s.shape}; evaluate at least one image and one class")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise MetricInputError(f"scores: dtype {s.dtype} is not numeric; pass float logits or probabilities")
    s = s.astype(np.float64, copy=False)
    bad = ~np.isfinite(s)
    if bad.any():
        i, c = np.argwhere(bad)[0]
        raise MetricInputError(f"scores: {int(bad.sum())} non-finite value(s) (first at image {i}, class {c}: {s[i, c]}); "
                               "fix the model output (NaN/inf) before evaluating")
    if not (np.issubdtype(t.dtype, np.integer) or np.issubdtype(t.dtype, np.floating) or t.dtype == bool):
        raise MetricInputError(f"targets: dtype {t.dtype} is not numeric; use 1 / 0 / -1")
    if np.issubdtype(t.dtype, np.floating) and not np.all(np.isfinite(t)):
        raise MetricInputError("targets: non-finite values; use 1 (positive), 0 (negative), -1 (ignore)")
    values = np.unique(t)
    extra = sorted(set(values.tolist()) - {-1, 0, 1})
    if extra:
        raise MetricInputError(f"targets: unexpected values {extra[:5]}; use 1 (positive), 0 (negative), -1 (ignore)")
    t = t.astype(np.int8)
    if scores_are is not None:
        if scores_are not in ("logits", "probabilities"):
            raise MetricInputError(f"scores_are: {scores_are!r} is not one of 'logits', 'probabilities'")
        if scores_are == "probabilities" and (s.min() < 0.0 or s.max() > 1.0):
            raise MetricInputError(f"scores: values in [{s.min():.4g}, {s.max():.4g}] are not probabilities; "
                                   "pass scores_are='logits' (or --scores-are logits) if these are logits")
    return s, t


def _validate_threshold(threshold: float) -> float:
    if not (0.0 < float(threshold) < 1.0):
        raise MetricInputError(f"threshold: {threshold} must be a probability strictly between 0 and 1")
    return float(threshold)


# ----------------------------------------------------------------------------------------------- AP / mAP
def average_precision_per_class(scores, targets, *, class_names: Sequence[str] | None = None,
                                warn: bool = True) -> np.ndarray:
    """Per-class average precision in percent, shape (C,).

    scikit-learn's ``average_precision_score`` (non-interpolated: sum over thresholds of
    (R_k - R_{k-1}) * P_k, tied scores form one threshold) on each class column, after removing that
    column's ignored (-1) entries. Classes with no positive target get NaN and one warning naming them.
    Logits and probabilities give the same AP (it only ranks).
    """
    from sklearn.metrics import average_precision_score

    s, t = validate_scores_targets(scores, targets)
    n_classes = s.shape[1]
    ap = np.full(n_classes, np.nan)  # (C,)
    no_positives: list[int] = []
    for c in range(n_classes):
        keep = t[:, c] != -1  # (n,) entries that count for this class
        y = t[keep, c] == 1
        if not y.any():
            no_positives.append(c)
            continue
        ap[c] = 100.0 * average_precision_score(y, s[keep, c])
    if no_positives and warn:
        names = [class_names[c] if class_names is not None else str(c) for c in no_positives]
        warnings.warn(f"AP undefined for {len(no_positives)} class(es) without positive targets "
                      f"({', '.join(names)}): reported as NaN and left out of mAP, CP and CR", stacklevel=2)
    return ap


def mean_average_precision(ap: np.ndarray) -> float:
    """mAP in percent: mean of the per-class APs that are not NaN (NaN when no class is evaluable)."""
    ap = np.asarray(ap, dtype=np.float64)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


# ----------------------------------------------------------------------------------------------- AP conventions
#: every mAP convention ``map_conventions`` reports, in table order (docs/metrics.md, "mAP conventions")
AP_CONVENTIONS: tuple[str, ...] = ("all_point", "voc07_11point", "voc10_all_point", "difficult_as_negative",
                                   "labelled_images")


def precision_recall_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) after each distinct score, highest first; tied scores form one point. Shapes (K,).

    ``scores`` (n,) one class's scores, ``positive`` (n,) bool with at least one True.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # (n,) the last row of each group of tied scores
    tp = np.cumsum(y)[last_of_tie]  # (K,)
    n_pred = np.flatnonzero(last_of_tie) + 1  # (K,)
    return tp / n_pred, tp / y.sum()


def ap_voc07_11point(scores: np.ndarray, positive: np.ndarray) -> float:
    """VOC2007 devkit AP (fraction): mean over t = 0, 0.1, ..., 1 of the highest precision at recall >= t
    (0 when no point reaches recall t).

    t is k / 10 (correctly rounded), so a recall of exactly 3/10 reaches t = 0.3; ``np.arange(0, 1.1, 0.1)`` (the
    Python ports of the devkit) holds 0.30000000000000004 there and misses it."""
    precision, recall = precision_recall_points(scores, positive)
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.arange(11) / 10.0]))


def ap_voc10_all_point(scores: np.ndarray, positive: np.ndarray) -> float:
    """VOC2010+ devkit AP (fraction): area under the precision envelope (precision made monotonically
    non-increasing in recall, p_interp(r) = max_{r' >= r} p(r')), summed at the points where recall changes."""
    precision, recall = precision_recall_points(scores, positive)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # (K,) max precision at this recall or beyond
    steps = np.diff(np.r_[0.0, recall])  # (K,) recall gained at each point
    return float(np.sum(steps * envelope))


def average_precision_by_rule(scores, targets, *, rule: Literal["voc07_11point", "voc10_all_point"]) -> np.ndarray:
    """Per-class AP in percent (C,) under a VOC devkit rule, -1 entries removed per class, NaN without positives."""
    fn = {"voc07_11point": ap_voc07_11point, "voc10_all_point": ap_voc10_all_point}.get(rule)
    if fn is None:
        raise MetricInputError(f"rule: {rule!r} is not one of 'voc07_11point', 'voc10_all_point'")
    s, t = validate_scores_targets(scores, targets)
    ap = np.full(s.shape[1], np.nan)  # (C,)
    for c in range(s.shape[1]):
        keep = t[:, c] != -1  # (n,)
        y = t[keep, c] == 1
        if y.any():
            ap[c] = 100.0 * fn(s[keep, c], y)
    return ap


def labelled_rows(targets) -> np.ndarray:
    """Bool (n,): images with at least one label (a positive or an ignored entry), i.e. COCO's images with an
    annotation; ``extract --keep-empty`` keeps the others as all-zero rows."""
    return np.any(np.asarray(targets) != 0, axis=1)


def map_conventions(scores, targets) -> dict[str, dict]:
    """Per-class AP (C,) and mAP (percent) under every convention of :data:`AP_CONVENTIONS`, from one score matrix.

    * ``all_point``: :func:`average_precision_per_class` (the default mAP, unchanged);
    * ``voc07_11point`` / ``voc10_all_point``: the VOC devkit rules, -1 removed per class;
    * ``difficult_as_negative``: -1 entries counted as negatives, then the default AP;
    * ``labelled_images``: the default AP on the images with at least one label (:func:`labelled_rows`).

    Returns ``{convention: {"per_class_ap": (C,), "mAP": float, "num_images": int}}``.
    """
    s, t = validate_scores_targets(scores, targets)
    keep = labelled_rows(t)  # (n,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller reports classes without positives once
        per_class = {
            "all_point": (average_precision_per_class(s, t, warn=False), len(s)),
            "voc07_11point": (average_precision_by_rule(s, t, rule="voc07_11point"), len(s)),
            "voc10_all_point": (average_precision_by_rule(s, t, rule="voc10_all_point"), len(s)),
            "difficult_as_negative": (average_precision_per_class(s, np.where(t == -1, 0, t), warn=False), len(s)),
            "labelled_images": (average_precision_per_class(s[keep], t[keep], warn=False) if keep.any()
                                else np.full(s.shape[1], np.nan), int(keep.sum())),
        }
    return {k: {"per_class_ap": ap, "mAP": mean_average_precision(ap), "num_images": n}
            for k, (ap, n) in per_class.items()}


# ----------------------------------------------------------------------------------------------- predictions
def logit_threshold(threshold: float) -> float:
    """The logit equivalent of a probability threshold: sigmoid(x) >= t  <=>  x >= log(t / (1 - t))."""
    t = _validate_threshold(threshold)
    return 0.0 if t == 0.5 else float(np.log(t / (1.0 - t)))


def predict_threshold(scores: np.ndarray, *, threshold: float = 0.5, scores_are: ScoresAre) -> np.ndarray:
    """Boolean (n, C): label predicted when its probability >= threshold (for logits: logit >= logit(threshold)).

    Thresholding logits in logit space avoids sigmoid rounding (sigmoid(-1e-20) == 0.5 in float64).
    """
    if scores_are == "logits":
        return scores >= logit_threshold(threshold)
    return scores >= _validate_threshold(threshold)


def predict_top_k(scores: np.ndarray, *, k: int, threshold: float = 0.5, scores_are: ScoresAre) -> np.ndarray:
    """Boolean (n, C): label among the image's k highest scores AND over the threshold (ML-GCN's top-3 rule).

    Ties at the k-th place are broken by class index (lower index first), deterministically.
    """
    n, n_classes = scores.shape
    if k < 1:
        raise MetricInputError(f"top_k: {k} must be a positive integer")
    k = min(k, n_classes)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (n, k) class indices, highest first
    in_top_k = np.zeros_like(scores, dtype=bool)  # (n, C)
    np.put_along_axis(in_top_k, order, True, axis=1)
    return in_top_k & predict_threshold(scores, threshold=threshold, scores_are=scores_are)


# ----------------------------------------------------------------------------------------------- CP ... OF1
def prf_counts(predicted: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class counts (C,): true positives, predicted positives, actual positives (-1 counts as negative)."""
    positive = targets == 1  # (n, C)
    tp = np.sum(predicted & positive, axis=0)  # (C,)
    n_pred = np.sum(predicted, axis=0)  # (C,)
    n_pos = np.sum(positive, axis=0)  # (C,)
    return tp, n_pred, n_pos


def prf_from_counts(tp, n_pred, n_pos) -> dict[str, np.ndarray]:
    """CP, CR, CF1, OP, OR, OF1 in percent from per-class counts of shape (..., C) (leading axes: e.g. resamples).

    * per class: precision = tp / n_pred (0 when n_pred == 0), recall = tp / n_pos;
    * CP, CR: means over the classes with n_pos > 0 (NaN when there is none);
      CF1 = 2 CP CR / (CP + CR) (0 when CP + CR == 0), the harmonic mean of the averages (ML-GCN);
    * OP = sum tp / sum n_pred (0 when nothing is predicted), OR = sum tp / sum n_pos, OF1 likewise.
    """
    tp = np.asarray(tp, dtype=np.float64)
    n_pred = np.asarray(n_pred, dtype=np.float64)
    n_pos = np.asarray(n_pos, dtype=np.float64)
    evaluable = n_pos > 0  # (..., C)
    precision_c = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)  # (..., C)
    recall_c = np.divide(tp, n_pos, out=np.zeros_like(tp), where=evaluable)  # (..., C)
    n_eval = evaluable.sum(axis=-1)  # (...)
    with np.errstate(invalid="ignore", divide="ignore"):
        cp = np.where(n_eval > 0, (precision_c * evaluable).sum(-1) / np.maximum(n_eval, 1), np.nan)
        cr = np.where(n_eval > 0, (recall_c * evaluable).sum(-1) / np.maximum(n_eval, 1), np.nan)
        tp_all, pred_all, pos_all = tp.sum(-1), n_pred.sum(-1), n_pos.sum(-1)
        op = np.where(pred_all > 0, tp_all / np.maximum(pred_all, 1), 0.0)
        orr = np.where(pos_all > 0, tp_all / np.maximum(pos_all, 1), np.nan)
    out = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orr, "OF1": _f1(op, orr)}
    return {k: 100.0 * v for k, v in out.items()}


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        s = p + r
        return np.where(np.isnan(s), np.nan, np.where(s > 0, 2.0 * p * r / np.where(s > 0, s, 1.0), 0.0))


# ----------------------------------------------------------------------------------------------- calibration
#: a class with fewer hold-out positives than this gets the global threshold instead of its own
CALIBRATION_MIN_POSITIVES = 5


def _best_cut(scores: np.ndarray, positive: np.ndarray, n_pos: int) -> tuple[float, float]:
    """(threshold, F1) maximising 2 tp / (n_pred + n_pos) over "predict scores >= threshold" for 1-D pooled inputs.

    Candidates are the distinct scores (tied scores are predicted together); among equal F1s the highest threshold
    wins (fewest predictions). The threshold returned is the midpoint between the chosen score and the next lower
    distinct score (the chosen score itself when it is the lowest): the same predictions on these data, and no
    score of the calibration data sits exactly on it.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # (n,)
    tp = np.cumsum(y)[last_of_tie]  # (K,) true positives when predicting down to this distinct score
    n_pred = np.flatnonzero(last_of_tie) + 1  # (K,)
    f1 = 2.0 * tp / (n_pred + n_pos)  # (K,)
    k = int(np.argmax(f1))  # first maximum = highest threshold
    values = s[last_of_tie]  # (K,) distinct scores, decreasing
    threshold = values[k] if k + 1 == len(values) else 0.5 * (values[k] + values[k + 1])
    return float(threshold), float(f1[k])


def calibrate_thresholds(scores, targets, *, min_positives: int = CALIBRATION_MIN_POSITIVES) -> dict:
    """Thresholds chosen on calibration (hold-out) scores, in the scores' own space (logits or probabilities).

    * ``global``: one threshold for every class, maximising OF1 (pooled counts) on these data;
    * ``per_class`` (C,): each class's threshold maximising its F1 = 2 tp / (n_pred + n_pos), for classes with
      at least ``min_positives`` positives; the others (``fallback`` True) get the global threshold.
    -1 entries count as negatives, as in CP ... OF1. Returns ``{"global", "global_OF1", "per_class", "fallback",
    "positives"}`` (OF1 as a fraction on these data).
    """
    s, t = validate_scores_targets(scores, targets)
    positive = t == 1  # (n, C)
    if not positive.any():
        raise MetricInputError("calibration: the hold-out has no positive label; use a larger hold-out")
    g, g_f1 = _best_cut(s.ravel(), positive.ravel(), int(positive.sum()))
    n_pos = positive.sum(0)  # (C,)
    per_class = np.full(s.shape[1], g)  # (C,)
    fallback = n_pos < max(int(min_positives), 1)  # (C,)
    for c in np.flatnonzero(~fallback):
        per_class[c] = _best_cut(s[:, c], positive[:, c], int(n_pos[c]))[0]
    return {"global": g, "global_OF1": g_f1, "per_class": per_class, "fallback": fallback, "positives": n_pos}


def thresholded_metrics(scores, targets, thresholds) -> dict[str, float]:
    """CP ... OF1 (percent) predicting ``scores >= thresholds`` (a scalar or (C,), in the scores' own space)."""
    s, t = validate_scores_targets(scores, targets)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (s.shape[1],))  # (C,)
    return {k: float(v) for k, v in prf_from_counts(*prf_counts(s >= thr[None, :], t)).items()}


# ----------------------------------------------------------------------------------------------- all together
def multilabel_metrics(scores, targets, *, scores_are: ScoresAre, threshold: float = 0.5, top_k: int | None = 3,
                       class_names: Sequence[str] | None = None, warn: bool = True) -> dict[str, float]:
    """mAP, CP, CR, CF1, OP, OR, OF1 and the top-k block (``CP_top3`` ...), all in percent.

    Args:
        scores: (n, C) logits or probabilities, as ``scores_are`` says (required keyword).
        targets: (n, C) with 1 / 0 / -1 (ignored for AP, negative for CP ... OF1).
        threshold: probability at or above which a label is predicted (0.5 = logit 0, as ML-GCN).
        top_k: size of the top-k block (the paper's 3); ``None`` omits it.
        class_names: used in the warning about classes without positives.
    Returns:
        ``{name: float}`` with the keys of :func:`metric_names` (``top_k``); NaN where undefined.
    """
    s, t = validate_scores_targets(scores, targets, scores_are=scores_are)
    ap = average_precision_per_class(s, t, class_names=class_names, warn=warn)  # (C,)
    out: dict[str, float] = {"mAP": mean_average_precision(ap)}
    predicted = predict_threshold(s, threshold=threshold, scores_are=scores_are)  # (n, C)
    out.update({k: float(v) for k, v in prf_from_counts(*prf_counts(predicted, t)).items()})
    if top_k:
        predicted_k = predict_top_k(s, k=top_k, threshold=threshold, scores_are=scores_are)  # (n, C)
        out.update({f"{k}_top{top_k}": float(v) for k, v in prf_from_counts(*prf_counts(predicted_k, t)).items()})
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (for converting logits to probabilities for display)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out
