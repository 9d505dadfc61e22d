"""Metrics against hand-computed toy cases and independent straightforward implementations written here."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from iagcn.metrics import (MetricInputError, average_precision_per_class, metric_names, multilabel_metrics,
                              predict_top_k, sigmoid)


# ------------------------------------------------------------------ independent reference implementations
def ap_by_positive_ranks(scores, y):
    """Mean over positives of the precision at that positive's rank (= sklearn AP when there are no ties)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if y[i]:
            hits += 1
            precisions.append(hits / rank)
    return sum(precisions) / len(precisions)


def ap_tie_aware(scores, y):
    """Same, but a positive in a group of tied scores gets the precision at the end of its group."""
    total = 0.0
    n_pos = sum(y)
    for i in range(len(scores)):
        if y[i]:
            at_or_above = [j for j in range(len(scores)) if scores[j] >= scores[i]]
            total += sum(y[j] for j in at_or_above) / len(at_or_above)
    return total / n_pos


def reference_ap_per_class(scores, targets, ap_fn=ap_by_positive_ranks):
    out = []
    for c in range(scores.shape[1]):
        keep = [i for i in range(scores.shape[0]) if targets[i, c] != -1]
        y = [int(targets[i, c] == 1) for i in keep]
        s = [float(scores[i, c]) for i in keep]
        out.append(100.0 * ap_fn(s, y) if sum(y) else math.nan)
    return np.array(out)


def reference_prf(predicted, targets):
    """Loops over classes and images, ML-GCN's rules; classes without positives left out of CP/CR."""
    n, n_classes = predicted.shape
    precisions, recalls = [], []
    tp_all = pred_all = pos_all = 0
    for c in range(n_classes):
        tp = sum(1 for i in range(n) if predicted[i, c] and targets[i, c] == 1)
        npred = sum(1 for i in range(n) if predicted[i, c])
        npos = sum(1 for i in range(n) if targets[i, c] == 1)
        tp_all, pred_all, pos_all = tp_all + tp, pred_all + npred, pos_all + npos
        if npos:
            precisions.append(tp / npred if npred else 0.0)
            recalls.append(tp / npos)
    cp, cr = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    op, orr = (tp_all / pred_all if pred_all else 0.0), tp_all / pos_all
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    return {k: 100 * v for k, v in dict(CP=cp, CR=cr, CF1=f1(cp, cr), OP=op, OR=orr, OF1=f1(op, orr)).items()}


def reference_top_k(probs, k, threshold):
    predicted = np.zeros(probs.shape, dtype=bool)
    for i in range(probs.shape[0]):
        ranked = sorted(range(probs.shape[1]), key=lambda c: (-probs[i, c], c))[:k]
        for c in ranked:
            predicted[i, c] = probs[i, c] >= threshold
    return predicted


def random_case(seed, n=60, n_classes=7, p_ignore=0.1):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, n_classes)) < 0.3).astype(np.int8)
    targets[rng.random((n, n_classes)) < p_ignore] = -1
    targets[rng.integers(n), :] = 1  # every class has a positive
    logits = rng.normal(size=(n, n_classes)) + 1.5 * (targets == 1)
    return logits, targets


# ------------------------------------------------------------------ AP
def test_ap_hand_computed_toy():
    s = np.array([[0.9], [0.8], [0.7], [0.6]])
    t = np.array([[1], [0], [1], [0]])
    assert average_precision_per_class(s, t)[0] == pytest.approx(100 * (1 / 1 + 2 / 3) / 2)


def test_ap_ties_hand_computed():
    # thresholds 0.9: P=0; 0.5 (tied pair, one positive): P=1/3, R=1/2; 0.1: P=2/4, R=1
    s = np.array([[0.9], [0.5], [0.5], [0.1]])
    t = np.array([[0], [1], [0], [1]])
    expected = 0.5 * (1 / 3) + 0.5 * (2 / 4)
    assert average_precision_per_class(s, t)[0] == pytest.approx(100 * expected)
    assert expected == pytest.approx(ap_tie_aware([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]))
    # the no-tie formula gives a different (optimistic) number here, so the test distinguishes them
    assert ap_by_positive_ranks([0.9, 0.5, 0.5, 0.1], [0, 1, 0, 1]) != pytest.approx(expected)


def test_ap_ignored_entries_are_removed_per_class():
    s = np.array([[0.9, 0.1], [0.8, 0.9], [0.7, 0.5]])
    t = np.array([[-1, 0], [1, -1], [0, 1]])
    ap = average_precision_per_class(s, t)
    assert ap[0] == pytest.approx(100.0)  # the top-ranked ignored negative-looking entry does not count
    assert ap[1] == pytest.approx(100.0)  # the higher-scored ignored entry in class 1 does not count
    as_negatives = average_precision_per_class(s, np.where(t == -1, 0, t))
    assert as_negatives[0] == pytest.approx(50.0) and as_negatives[1] == pytest.approx(50.0)


def test_class_without_positives_is_nan_warned_and_left_out_of_map():
    s = np.array([[0.9, 0.3, 0.2], [0.1, 0.6, 0.8], [0.4, 0.5, 0.1]])
    t = np.array([[1, 0, -1], [0, 0, 1], [0, 1, -1]])
    t[:, 1] = [0, 0, 0]
    t[2, 1] = -1
    with pytest.warns(UserWarning, match=r"\bbus\b"):
        ap = average_precision_per_class(s, t, class_names=["aeroplane", "bus", "cat"])
    assert math.isnan(ap[1]) and not np.isnan(ap[[0, 2]]).any()
    with pytest.warns(UserWarning):
        m = multilabel_metrics(s, t, scores_are="probabilities")
    assert m["mAP"] == pytest.approx(np.mean(ap[[0, 2]]))


@pytest.mark.parametrize("seed", range(5))
def test_ap_matches_independent_implementation_without_ties(seed):
    logits, targets = random_case(seed)
    ours = average_precision_per_class(logits, targets)
    np.testing.assert_allclose(ours, reference_ap_per_class(logits, targets), rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_ap_matches_tie_aware_implementation_with_many_ties(seed):
    logits, targets = random_case(seed)
    rounded = np.round(logits)  # a handful of distinct values -> many ties
    np.testing.assert_allclose(average_precision_per_class(rounded, targets),
                               reference_ap_per_class(rounded, targets, ap_tie_aware), rtol=1e-12)


def test_ap_is_the_same_for_logits_and_probabilities():
    logits, targets = random_case(11)
    np.testing.assert_allclose(average_precision_per_class(logits, targets),
                               average_precision_per_class(sigmoid(logits), targets), rtol=1e-12)


# ------------------------------------------------------------------ CP ... OF1
def test_prf_hand_computed_toy_with_a_class_without_predicted_positives():
    probs = np.array([[0.9, 0.2, 0.1], [0.6, 0.7, 0.2], [0.3, 0.4, 0.3]])
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, -1, 0]])
    # predicted: class 0 images {0, 1} (tp 1 of 2 positives), class 1 image {1} (tp 1 of 1), class 2 none (0 of 1)
    m = multilabel_metrics(probs, targets, scores_are="probabilities", top_k=None)
    cp = (1 / 2 + 1 + 0) / 3
    cr = (1 / 2 + 1 + 0) / 3
    op, orr = 2 / 3, 2 / 4
    assert m["CP"] == pytest.approx(100 * cp) and m["CR"] == pytest.approx(100 * cr)
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr))
    assert m["OP"] == pytest.approx(100 * op) and m["OR"] == pytest.approx(100 * orr)
    assert m["OF1"] == pytest.approx(100 * 2 * op * orr / (op + orr))
    assert set(m) == set(metric_names(None))


def test_cf1_is_harmonic_mean_of_averages_not_average_of_f1s():
    probs = np.array([[0.9, 0.9], [0.9, 0.1], [0.1, 0.1], [0.1, 0.9]])
    targets = np.array([[1, 1], [0, 0], [1, 0], [0, 0]])
    m = multilabel_metrics(probs, targets, scores_are="probabilities", top_k=None)
    # class 0: P=1/2 R=1/2; class 1: P=1/2 R=1 -> CP=1/2, CR=3/4, CF1=0.6 (mean of per-class F1 would be 7/12)
    assert m["CF1"] == pytest.approx(60.0)


def test_nothing_predicted_gives_zero_precision():
    probs = np.full((4, 2), 0.2)
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    m = multilabel_metrics(probs, targets, scores_are="probabilities", top_k=3)
    for k in ("CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "OF1_top3"):
        assert m[k] == 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_prf_and_top3_match_independent_implementation(seed, threshold):
    logits, targets = random_case(seed, n_classes=6)
    probs = sigmoid(logits)
    m = multilabel_metrics(logits, targets, scores_are="logits", threshold=threshold, top_k=3)
    ref = reference_prf(probs >= threshold, targets)
    ref_top = reference_prf(reference_top_k(probs, 3, threshold), targets)
    for k in ref:
        assert m[k] == pytest.approx(ref[k], rel=1e-12)
        assert m[f"{k}_top3"] == pytest.approx(ref_top[k], rel=1e-12)
    assert m["mAP"] == pytest.approx(np.nanmean(reference_ap_per_class(logits, targets)))


def test_top3_with_fewer_than_three_positive_scores():
    # image 0: only two labels over 0.5 -> top-3 predicts just those two; image 1: four over 0.5 -> only 3 kept
    probs = np.array([[0.9, 0.8, 0.3, 0.2, 0.1], [0.9, 0.8, 0.7, 0.6, 0.1]])
    targets = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    pred = predict_top_k(probs, k=3, scores_are="probabilities")
    np.testing.assert_array_equal(pred, [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    with pytest.warns(UserWarning, match="without positive"):
        m = multilabel_metrics(probs, targets, scores_are="probabilities", top_k=3)
    # counts: tp only class 0 (image 0); predicted 5; positives 4. per class P: [1/2, 0, 0, 0, 0] over 4 evaluable
    assert m["OP_top3"] == pytest.approx(100 * 1 / 5) and m["OR_top3"] == pytest.approx(100 * 1 / 4)
    assert m["CP_top3"] == pytest.approx(100 * (1 / 2) / 4)  # class 1 has no positives: not evaluable
    assert m["CR_top3"] == pytest.approx(100 * 1 / 4)
    assert m["OR"] == pytest.approx(100 * 2 / 4)  # the non-top-k rule also catches class 3 of image 1


def test_top_k_tie_broken_by_class_index_and_fewer_classes_than_k():
    probs = np.array([[0.6, 0.9, 0.6, 0.6]])
    np.testing.assert_array_equal(predict_top_k(probs, k=3, scores_are="probabilities"), [[1, 1, 1, 0]])
    two = np.array([[0.6, 0.9]])
    np.testing.assert_array_equal(predict_top_k(two, k=3, scores_are="probabilities"), [[1, 1]])


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_logits_and_probabilities_give_identical_metrics(threshold):
    logits, targets = random_case(3)
    a = multilabel_metrics(logits, targets, scores_are="logits", threshold=threshold)
    b = multilabel_metrics(sigmoid(logits), targets, scores_are="probabilities", threshold=threshold)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12), k


def test_logit_zero_is_predicted_at_threshold_half():
    logits = np.array([[0.0, -1e-20], [1.0, -1.0]])
    targets = np.array([[1, 1], [1, 0]])
    m = multilabel_metrics(logits, targets, scores_are="logits", top_k=None)
    assert m["OR"] == pytest.approx(100 * 2 / 3)  # logit 0 predicted, -1e-20 not (although sigmoid rounds to 0.5)


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("scores,targets,match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "does not match"),
    (np.zeros(3), np.zeros(3), "2-D"),
    (np.array([[0.1, np.nan]]), np.array([[1, 0]]), "non-finite"),
    (np.array([[0.1, np.inf]]), np.array([[1, 0]]), "non-finite"),
    (np.array([[0.1, 0.2]]), np.array([[2, 0]]), "unexpected values"),
    (np.zeros((0, 2)), np.zeros((0, 2)), "empty"),
])
def test_bad_inputs_raise_clear_errors(scores, targets, match):
    with pytest.raises(MetricInputError, match=match):
        multilabel_metrics(scores, targets, scores_are="logits")


def test_probabilities_are_range_checked_and_scores_are_is_required():
    with pytest.raises(MetricInputError, match="not probabilities"):
        multilabel_metrics(np.array([[1.5, -0.2]]), np.array([[1, 0]]), scores_are="probabilities")
    with pytest.raises(MetricInputError, match="scores_are"):
        multilabel_metrics(np.array([[0.5, 0.2]]), np.array([[1, 0]]), scores_are="probs")
    with pytest.raises(TypeError):
        multilabel_metrics(np.array([[0.5, 0.2]]), np.array([[1, 0]]))  # no silent default
    with pytest.raises(MetricInputError, match="threshold"):
        multilabel_metrics(np.array([[0.5, 0.2]]), np.array([[1, 0]]), scores_are="probabilities", threshold=1.0,
                           warn=False)


def test_metric_input_error_is_a_value_error_and_user_error():
    from iagcn.errors import UserError
    with pytest.raises(ValueError):
        average_precision_per_class(np.zeros((2, 2)), np.zeros((2, 1)))
    assert issubclass(MetricInputError, UserError)


def test_no_warning_when_every_class_has_positives():
    logits, targets = random_case(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        multilabel_metrics(logits, targets, scores_are="logits")
