"""Statistics for honest ablations: a paired bootstrap over images, a paired test across seeds (the label-stratified
hold-out split that chooses the epoch lives with training: :mod:`train.holdout`).

NumPy, and scipy.stats for the seed tests (``ttest_rel``, ``wilcoxon``, ``binomtest``). See docs/statistics.md.
The bootstrap stays our own: its vectorised, weighted AP over 1,000 resamples at once is what makes a sweep's
ΔmAP intervals cheap (``scipy.stats.bootstrap`` would recompute every metric per resample).

* :func:`paired_bootstrap` — B - A for every metric of :func:`iagcn.metrics.multilabel_metrics`, percentile
  interval over resamples of the *same* images for both runs. The default path is vectorised: a resample is a
  vector of image multiplicities w (R, n), and each metric is computed from w-weighted counts (AP with tied
  scores grouped, as scikit-learn does with ``sample_weight``), which equals the metric on the duplicated images.
* :func:`paired_seed_test` — paired t-test across seeds (reported), with the Wilcoxon signed-rank and sign
  tests alongside.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from iagcn.metrics import (MetricInputError, ScoresAre, metric_names, predict_threshold, predict_top_k,
                           prf_from_counts, validate_scores_targets)


# =============================================================================================== bootstrap
def bootstrap_weights(n: int, *, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Resampled image indices (R, n) and the multiplicity of every image in each resample (R, n) int32."""
    idx = rng.integers(0, n, size=(n_resamples, n))  # (R, n)
    offsets = (np.arange(n_resamples) * n)[:, None]  # (R, 1)
    counts = np.bincount((idx + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)  # (R, n)
    return idx, counts.astype(np.int32)


def weighted_average_precision(scores_c: np.ndarray, positive_c: np.ndarray, weights_t: np.ndarray) -> np.ndarray:
    """AP (fraction) of one class under R weightings of its images: (m,), (m,), (m, R) -> (R,), NaN without positives.

    AP = sum_g (TP_g - TP_{g-1}) / TP_total * TP_g / N_g over groups g of tied scores in descending order, where
    TP_g, N_g are the weighted cumulative true positives and images down to the end of group g. Only groups that
    hold a positive contribute, so TP is accumulated over the positives alone. ``weights_t`` is image-major (m, R)
    so that the cumulative sums run over contiguous rows (vectorised across resamples).
    """
    order = np.argsort(-scores_c, kind="stable")  # (m,) descending
    s_sorted = scores_c[order]
    new_group = np.r_[False, s_sorted[1:] != s_sorted[:-1]]  # (m,) a new tie group starts here
    group = np.cumsum(new_group)  # (m,) tie-group id of each position
    group_end = np.flatnonzero(np.r_[new_group[1:], True])  # (G,) last position of each group
    pos_at = np.flatnonzero(positive_c[order])  # (P,) positions of the positives, ascending
    first_pos_in_group = np.flatnonzero(np.r_[True, group[pos_at[1:]] != group[pos_at[:-1]]])  # (Gp,) into pos_at
    ends = group_end[group[pos_at[first_pos_in_group]]]  # (Gp,) end positions of the groups holding positives
    w = weights_t[order]  # (m, R) multiplicities in score order
    n_cum = np.cumsum(w[: ends[-1] + 1], axis=0, dtype=np.int32)[ends]  # (Gp, R) images down to each group end
    last_pos_in_group = np.r_[first_pos_in_group[1:] - 1, len(pos_at) - 1]  # (Gp,) into pos_at
    tp_cum = np.cumsum(w[pos_at], axis=0, dtype=np.int32)[last_pos_in_group].astype(np.float64)  # (Gp, R)
    precision = np.divide(tp_cum, n_cum, out=np.zeros_like(tp_cum), where=n_cum > 0)  # (Gp, R)
    d_tp = np.diff(tp_cum, axis=0, prepend=0.0)  # (Gp, R)
    total = tp_cum[-1]  # (R,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (d_tp * precision).sum(0) / np.where(total > 0, total, 1.0), np.nan)


def weighted_multilabel_metrics(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray, *,
                                scores_are: ScoresAre, threshold: float = 0.5,
                                top_k: int | None = 3) -> dict[str, np.ndarray]:
    """:func:`iagcn.metrics.multilabel_metrics` for R image weightings at once: (n, C), (n, C), (R, n) -> {name: (R,)}.

    With integer multiplicities this equals the metrics of the resampled (duplicated) images; with all-ones weights
    it equals the plain metrics. Percent, NaN-aware mAP (classes without positives in a resample are left out).
    """
    n, n_classes = scores.shape
    w = np.asarray(weights)
    w_t = np.ascontiguousarray(w.T)  # (n, R) image-major
    ap = np.full((w.shape[0], n_classes), np.nan)  # (R, C)
    for c in range(n_classes):
        keep = np.flatnonzero(targets[:, c] != -1)  # (m,)
        pos = targets[keep, c] == 1  # (m,)
        if pos.any():
            ap[:, c] = weighted_average_precision(scores[keep, c], pos, w_t[keep])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN mAP
        out = {"mAP": 100.0 * np.nanmean(ap, axis=1)}  # (R,)
    wf = w.astype(np.float64)
    positive = (targets == 1).astype(np.float64)  # (n, C)
    n_pos = wf @ positive  # (R, C)
    blocks = [("", predict_threshold(scores, threshold=threshold, scores_are=scores_are))]
    if top_k:
        blocks.append((f"_top{top_k}", predict_top_k(scores, k=top_k, threshold=threshold, scores_are=scores_are)))
    for suffix, predicted in blocks:
        pred = predicted.astype(np.float64)  # (n, C)
        tp = wf @ (pred * positive)  # (R, C)
        n_pred = wf @ pred  # (R, C)
        out.update({f"{k}{suffix}": v for k, v in prf_from_counts(tp, n_pred, n_pos).items()})
    return out


def _percentile_interval(samples: np.ndarray, ci: float) -> tuple[float, float, int]:
    valid = samples[np.isfinite(samples)]
    if valid.size == 0:
        return float("nan"), float("nan"), 0
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return float(low), float(high), int(valid.size)


def paired_bootstrap_runs(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets, *,
                          scores_are: ScoresAre, n_resamples: int = 1000, seed: int = 0, ci: float = 0.95,
                          threshold: float = 0.5, top_k: int | None = 3, return_samples: bool = False,
                          chunk: int = 250) -> dict:
    """B - A of the seed-averaged metrics (runs of one side averaged per resample), with a paired percentile-bootstrap
    interval over images: every run of a resample weights the *same* images. The one bootstrap loop of the project:
    :func:`paired_bootstrap` is this with one run per side; ``iagcn compare`` / ``sweep --baseline`` call it directly.

    Args:
        scores_a, scores_b: lists of (n, C) scores (one per seed) on the same images, of kind ``scores_are``.
        targets: (n, C) 1 / 0 / -1.
        n_resamples, seed, ci: number of resamples, RNG seed (a seeded generator drawn in chunks of ``chunk``),
            interval level. return_samples: also return the (R,) bootstrap differences per metric.
    Returns:
        ``{"metrics": {name: {"a", "b", "diff", "low", "high", "excludes_zero", "n_valid"}}, "n_images",
        "n_resamples", "seed", "ci", "runs_a", "runs_b", "method", ["samples"]}`` in percent(age points).
        Resamples where a metric is NaN (e.g. no positives at all) are left out of its interval (``n_valid``).
    """
    if not len(scores_a) or not len(scores_b):
        raise MetricInputError("paired bootstrap: each side needs at least one run")
    t = None
    side_scores: list[list[np.ndarray]] = [[], []]
    for side, given in zip(side_scores, (scores_a, scores_b)):
        for sc in given:
            checked, t = validate_scores_targets(sc, targets, scores_are=scores_are)
            side.append(checked)
    _check_interval(ci, n_resamples)
    n = t.shape[0]
    names = list(metric_names(top_k))

    def side_mean(side: list[np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
        per_run = [weighted_multilabel_metrics(sc, t, weights, scores_are=scores_are, threshold=threshold,
                                               top_k=top_k) for sc in side]
        return {k: np.mean([m[k] for m in per_run], axis=0) for k in names}  # (R,) each

    ones = np.ones((1, n), dtype=np.int32)
    full_a, full_b = ({k: float(v[0]) for k, v in side_mean(side, ones).items()} for side in side_scores)
    rng = np.random.default_rng(seed)
    diffs = {k: np.empty(n_resamples) for k in names}
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        _, weights = bootstrap_weights(n, n_resamples=stop - start, rng=rng)  # (r, n) multiplicities
        ma, mb = side_mean(side_scores[0], weights), side_mean(side_scores[1], weights)
        for k in names:
            diffs[k][start:stop] = mb[k] - ma[k]  # (r,)
    out = {"metrics": _interval_summary(full_a, full_b, diffs, ci), "n_images": n, "n_resamples": n_resamples,
           "seed": seed, "ci": ci, "runs_a": len(side_scores[0]), "runs_b": len(side_scores[1]),
           "method": "paired percentile bootstrap over images (same resampled images for every run); "
                     "statistic: mean over seeds of B minus mean over seeds of A"}
    if return_samples:
        out["samples"] = diffs
    return out


def paired_bootstrap(scores_a, scores_b, targets, *, scores_are: ScoresAre | None = None,
                     metric_fn: Callable[[np.ndarray, np.ndarray], Mapping[str, float]] | None = None,
                     n_resamples: int = 1000, seed: int = 0, ci: float = 0.95, threshold: float = 0.5,
                     top_k: int | None = 3, return_samples: bool = False, chunk: int = 250) -> dict:
    """Difference B - A of each metric with a paired percentile-bootstrap interval over images.

    Each resample draws n images with replacement, the *same* images for both runs, and computes B - A.
    The point estimate is B - A on all images.

    Args:
        scores_a, scores_b: (n, C) scores of the two runs on the same images (same kind: ``scores_are``).
        targets: (n, C) 1 / 0 / -1.
        scores_are: "logits" | "probabilities" (required unless ``metric_fn`` is given).
        metric_fn: optional ``f(scores, targets) -> {name: value}``; called per resample (slow path). Default: the
            vectorised :func:`weighted_multilabel_metrics` (all keys of ``multilabel_metrics``) through
            :func:`paired_bootstrap_runs` with one run per side.
        n_resamples, seed, ci: number of resamples, RNG seed, interval level.
        return_samples: also return the (R,) bootstrap differences per metric.
    Returns:
        ``{"metrics": {name: {"a", "b", "diff", "low", "high", "excludes_zero", "n_valid"}}, "n_images",
        "n_resamples", "seed", "ci", "method", ["samples": {name: (R,)}]}`` in percent(age points).
        Resamples where a metric is NaN (e.g. no positives at all) are left out of its interval (``n_valid``).
    """
    method = "paired percentile bootstrap over images (same resampled images for both runs)"
    if metric_fn is None:
        if scores_are is None:
            raise MetricInputError("scores_are: say whether the scores are 'logits' or 'probabilities'")
        out = paired_bootstrap_runs([scores_a], [scores_b], targets, scores_are=scores_are, n_resamples=n_resamples,
                                    seed=seed, ci=ci, threshold=threshold, top_k=top_k,
                                    return_samples=return_samples, chunk=chunk)
        del out["runs_a"], out["runs_b"]
        out["method"] = method
        return out
    sa, t = validate_scores_targets(scores_a, targets, scores_are=scores_are)
    sb, _ = validate_scores_targets(scores_b, targets, scores_are=scores_are)
    _check_interval(ci, n_resamples)
    n = sa.shape[0]
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full_a, full_b = dict(metric_fn(sa, t)), dict(metric_fn(sb, t))
        names = list(full_a)
        diffs = {k: np.empty(n_resamples) for k in names}
        for start in range(0, n_resamples, chunk):
            idx, _ = bootstrap_weights(n, n_resamples=min(chunk, n_resamples - start), rng=rng)
            for r, rows in enumerate(idx):
                ma, mb = metric_fn(sa[rows], t[rows]), metric_fn(sb[rows], t[rows])
                for k in names:
                    diffs[k][start + r] = mb[k] - ma[k]
    out = {"metrics": _interval_summary(full_a, full_b, diffs, ci), "n_images": n, "n_resamples": n_resamples,
           "seed": seed, "ci": ci, "method": method}
    if return_samples:
        out["samples"] = diffs
    return out


def _check_interval(ci: float, n_resamples: int) -> None:
    if not (0.0 < ci < 1.0):
        raise MetricInputError(f"ci: {ci} must be strictly between 0 and 1 (e.g. 0.95)")
    if n_resamples < 1:
        raise MetricInputError(f"n_resamples: {n_resamples} must be >= 1")


def _interval_summary(full_a: Mapping[str, float], full_b: Mapping[str, float], diffs: Mapping[str, np.ndarray],
                      ci: float) -> dict[str, dict]:
    metrics = {}
    for k in diffs:
        low, high, n_valid = _percentile_interval(diffs[k], ci)
        metrics[k] = {"a": full_a[k], "b": full_b[k], "diff": full_b[k] - full_a[k], "low": low, "high": high,
                      "excludes_zero": bool(n_valid > 0 and (low > 0 or high < 0)), "n_valid": n_valid}
    return metrics


# =============================================================================================== seeds
def paired_seed_test(values_a: Sequence[float], values_b: Sequence[float], *, ci: float = 0.95) -> dict:
    """Compare one metric of two presets across seeds, paired by seed (values_a[i] and values_b[i] share seed i).

    Reported: the paired t-test (two-sided) on d = b - a, with a t-interval for the mean difference. Alongside:
    the Wilcoxon signed-rank test (exact for small n) and the sign test. With n <= 5 seeds neither rank test can
    reach p < 0.05 (smallest two-sided p = 2 / 2**n), so the t-test is the one reported.
    """
    from scipy import stats as sps

    a = np.asarray(values_a, dtype=np.float64).ravel()
    b = np.asarray(values_b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise MetricInputError(f"seed test: {a.size} values for A but {b.size} for B; pair the runs by seed")
    if a.size < 2:
        raise MetricInputError(f"seed test: needs at least 2 seeds per preset, got {a.size}; run more seeds")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise MetricInputError("seed test: non-finite metric values; check the runs' metrics")
    d = b - a  # (n,)
    n = d.size
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:  # SciPy returns NaN here (0 / 0); a constant difference is decided without a test
        t_stat, p_t = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        low = high = mean
    else:
        res = sps.ttest_rel(b, a, alternative="two-sided")
        t_stat, p_t = float(res.statistic), float(res.pvalue)
        interval = res.confidence_interval(confidence_level=ci)      # t-interval of the mean difference
        low, high = float(interval.low), float(interval.high)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        p_w = 1.0
    else:
        p_w = float(sps.wilcoxon(nonzero, alternative="two-sided").pvalue)
    n_better, n_worse = int((d > 0).sum()), int((d < 0).sum())
    p_sign = float(sps.binomtest(n_better, n_better + n_worse, 0.5).pvalue) if n_better + n_worse else 1.0
    return {"n_seeds": n, "mean_diff": mean, "std_diff": sd, "t": float(t_stat), "df": n - 1, "p_t": p_t,
            "low": low, "high": high, "ci": ci, "p_wilcoxon": p_w, "n_better": n_better,
            "n_worse": n_worse, "p_sign": p_sign, "reported": "paired t-test (two-sided)"}
