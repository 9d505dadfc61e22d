"""Hold-out split, paired bootstrap and seed test: checked against scikit-learn / SciPy and by construction."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from iagcn.evaluate.stats import (bootstrap_weights, paired_bootstrap, paired_seed_test, weighted_average_precision,
                                  weighted_multilabel_metrics)
from iagcn.metrics import MetricInputError, metric_names, multilabel_metrics
from iagcn.train.holdout import stratified_holdout


def synthetic(seed, *, n=400, n_classes=5, prevalence=0.25, signal_a=1.0, signal_b=1.0, p_ignore=0.03):
    """Targets and two runs' logits: signal * y + independent unit noise (B better when signal_b > signal_a)."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, n_classes)) < prevalence).astype(np.int8)
    targets[rng.random((n, n_classes)) < p_ignore] = -1
    positive = targets == 1
    a = signal_a * positive + rng.normal(size=(n, n_classes)) - 0.5
    b = signal_b * positive + rng.normal(size=(n, n_classes)) - 0.5
    return a, b, targets


# ------------------------------------------------------------------ vectorised metrics vs direct computation
@pytest.mark.parametrize("rounded", [False, True])
def test_weighted_ap_equals_sklearn_on_the_resampled_images(rounded):
    rng = np.random.default_rng(1)
    a, _, targets = synthetic(1, n=120)
    scores = np.round(a) if rounded else a  # rounded: many ties
    idx, counts = bootstrap_weights(120, n_resamples=20, rng=rng)  # (R, n)
    for c in range(scores.shape[1]):
        keep = np.flatnonzero(targets[:, c] != -1)
        ours = weighted_average_precision(scores[keep, c], targets[keep, c] == 1, counts[:, keep].T.copy())
        for r in range(idx.shape[0]):
            rows = idx[r][targets[idx[r], c] != -1]
            y = targets[rows, c] == 1
            expected = average_precision_score(y, scores[rows, c]) if y.any() else math.nan
            assert ours[r] == pytest.approx(expected, rel=1e-12, nan_ok=True)


def test_weighted_metrics_with_unit_weights_equal_multilabel_metrics():
    a, _, targets = synthetic(2)
    plain = multilabel_metrics(a, targets, scores_are="logits")
    weighted = weighted_multilabel_metrics(a, targets, np.ones((1, a.shape[0]), dtype=np.int32), scores_are="logits")
    assert set(weighted) == set(plain)
    for k in plain:
        assert weighted[k][0] == pytest.approx(plain[k], rel=1e-12), k


def test_vectorised_bootstrap_equals_per_resample_multilabel_metrics():
    a, b, targets = synthetic(3, n=80)
    fn = functools.partial(multilabel_metrics, scores_are="logits", warn=False)
    fast = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=40, seed=5, return_samples=True)
    slow = paired_bootstrap(a, b, targets, metric_fn=fn, n_resamples=40, seed=5, return_samples=True)
    for k in metric_names(3):
        np.testing.assert_allclose(fast["samples"][k], slow["samples"][k], rtol=1e-9, atol=1e-9)
        assert fast["metrics"][k]["diff"] == pytest.approx(slow["metrics"][k]["diff"], abs=1e-9)


# ------------------------------------------------------------------ bootstrap behaviour
def test_run_against_itself_gives_exactly_zero():
    a, _, targets = synthetic(4)
    res = paired_bootstrap(a, a.copy(), targets, scores_are="logits", n_resamples=300, seed=1)
    for k, m in res["metrics"].items():
        assert (m["diff"], m["low"], m["high"]) == (0.0, 0.0, 0.0), k
        assert not m["excludes_zero"]


def test_better_by_construction_excludes_zero():
    a, b, targets = synthetic(5, n=600, signal_a=0.8, signal_b=1.6)
    res = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=1000, seed=0)
    m = res["metrics"]["mAP"]
    assert m["diff"] > 0 and m["low"] > 0 and m["excludes_zero"]
    assert m["low"] <= m["diff"] <= m["high"]
    assert m["b"] - m["a"] == pytest.approx(m["diff"])


# 50 seeded repetitions where A and B are independent draws from the same distribution: the 95 % interval of the
# mAP difference covered zero in 47 of 50 (measured; binomial expectation 47.5, P(<= 43) ~ 1 %).
COVERAGE_MIN = 44


def test_identically_distributed_runs_cover_zero_in_most_repetitions():
    covered = 0
    for rep in range(50):
        a, b, targets = synthetic(1000 + rep, n=300, signal_a=1.0, signal_b=1.0)
        m = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=1000, seed=rep,
                             top_k=None)["metrics"]["mAP"]
        covered += m["low"] <= 0.0 <= m["high"]
    print(f"coverage of zero: {covered}/50")
    assert covered >= COVERAGE_MIN


def test_classes_losing_all_positives_in_a_resample_are_left_out_of_the_mean():
    a, b, targets = synthetic(6, n=40, n_classes=3)
    targets[:, 2] = 0
    targets[7, 2] = 1  # a single positive: absent from ~37 % of resamples
    res = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=200, seed=2, return_samples=True)
    assert np.all(np.isfinite(res["samples"]["mAP"])) and res["metrics"]["mAP"]["n_valid"] == 200
    _, counts = bootstrap_weights(40, n_resamples=200, rng=np.random.default_rng(2))
    lost = counts[:, 7] == 0
    assert 30 < lost.sum() < 120  # the situation does occur
    w = weighted_multilabel_metrics(a, targets, counts[lost], scores_are="logits")
    w2 = weighted_multilabel_metrics(a[:, :2], targets[:, :2], counts[lost], scores_are="logits")
    np.testing.assert_allclose(w["mAP"], w2["mAP"])  # the class without positives does not count


def test_bootstrap_is_seeded_and_validates():
    a, b, targets = synthetic(7, n=60)
    r1 = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=50, seed=3)
    r2 = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=50, seed=3)
    r3 = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=50, seed=4)
    assert r1["metrics"] == r2["metrics"] and r1["metrics"] != r3["metrics"]
    with pytest.raises(MetricInputError, match="scores_are"):
        paired_bootstrap(a, b, targets)
    with pytest.raises(MetricInputError, match="does not match"):
        paired_bootstrap(a, b[:, :2], targets, scores_are="logits")


# ------------------------------------------------------------------ seed test
def test_paired_seed_test_matches_hand_computation():
    from scipy import stats as sps

    a = [80.1, 79.5, 80.9, 80.3, 79.8]
    b = [80.9, 80.2, 81.0, 81.4, 80.1]
    d = np.array(b) - np.array(a)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    res = paired_seed_test(a, b)
    assert res["t"] == pytest.approx(t) and res["df"] == 4
    assert res["p_t"] == pytest.approx(2 * sps.t.sf(abs(t), 4))
    assert res["p_t"] == pytest.approx(sps.ttest_rel(b, a).pvalue)
    assert (res["n_better"], res["n_worse"]) == (5, 0)
    assert res["p_sign"] == pytest.approx(2 / 2 ** 5)
    assert res["low"] < d.mean() < res["high"] and res["low"] > 0
    half = sps.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)             # t-interval by hand
    assert (res["low"], res["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert paired_seed_test(a, b, ci=0.9)["high"] < res["high"]
    assert res["reported"].startswith("paired t-test")


def test_paired_seed_test_identical_and_bad_inputs():
    res = paired_seed_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert res["mean_diff"] == 0.0 and res["p_t"] == 1.0 and res["p_wilcoxon"] == 1.0
    with pytest.raises(MetricInputError, match="pair"):
        paired_seed_test([1.0, 2.0], [1.0])
    with pytest.raises(MetricInputError, match="at least 2"):
        paired_seed_test([1.0], [2.0])


# ------------------------------------------------------------------ hold-out split
def multilabel_with_rare_classes(seed, n=1000):
    rng = np.random.default_rng(seed)
    prevalence = np.array([0.4, 0.2, 0.1, 0.05, 0.02, 0.0, 0.0, 0.0])
    labels = (rng.random((n, prevalence.size)) < prevalence).astype(np.int8)
    for c, k in ((5, 2), (6, 3), (7, 1)):  # classes with exactly 2, 3 and 1 positives
        labels[rng.choice(n, size=k, replace=False), c] = 1
    labels[rng.random(labels.shape) < 0.01] = -1
    return labels


def test_holdout_is_deterministic_disjoint_and_covering():
    labels = multilabel_with_rare_classes(0)
    tr, ho = stratified_holdout(labels, fraction=0.2, seed=7)
    tr2, ho2 = stratified_holdout(labels, fraction=0.2, seed=7)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(ho, ho2)
    assert not np.array_equal(ho, stratified_holdout(labels, fraction=0.2, seed=8)[1])
    assert np.intersect1d(tr, ho).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[tr, ho]), np.arange(len(labels)))
    assert len(ho) == 200


def test_holdout_is_stratified_and_keeps_rare_classes_in_both_parts():
    labels = multilabel_with_rare_classes(1)
    positive = labels == 1
    tr, ho = stratified_holdout(labels, fraction=0.2, seed=0)
    for c in range(labels.shape[1]):
        total = positive[:, c].sum()
        if total >= 2:
            assert positive[ho, c].sum() >= 1 and positive[tr, c].sum() >= 1, c
        if total >= 20:
            assert abs(positive[ho, c].sum() - 0.2 * total) <= 1.5, c
    # better balanced than plain random splits of the same size
    rng = np.random.default_rng(0)
    common = positive.sum(0) >= 20

    def worst_deviation(hold):
        return np.max(np.abs(positive[hold][:, common].sum(0) / positive[:, common].sum(0) - 0.2))

    random_worst = [worst_deviation(rng.permutation(len(labels))[:200]) for _ in range(20)]
    assert worst_deviation(ho) < min(random_worst)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.0001])
def test_holdout_rejects_fractions_that_leave_a_part_empty(fraction):
    with pytest.raises(MetricInputError, match="--val-fraction"):
        stratified_holdout(multilabel_with_rare_classes(0, n=100), fraction=fraction, seed=0)


def test_holdout_size_is_exact_when_every_image_has_a_positive():
    rng = np.random.default_rng(4)
    labels = (rng.random((3000, 30)) < rng.uniform(0.01, 0.3, 30)).astype(np.int8)
    labels[np.arange(3000), rng.integers(0, 30, 3000)] = 1  # no image without positives: no slack to fill
    tr, ho = stratified_holdout(labels, fraction=0.15, seed=1)
    assert len(ho) == 450 and len(tr) == 2550
    share = (labels[ho] == 1).sum(0) / (labels == 1).sum(0)
    assert np.all(np.abs(share - 0.15) < 0.02)
