"""Every mAP convention of `iagcn eval` against independent implementations written here from the rules'
definitions (exact fractions, brute-force counting at every threshold), hand-computed toy cases, and the CLI's
metrics.json / tables.md.

Rules (docs/metrics.md, "mAP conventions"):
* all-point (default): AP = sum over distinct thresholds of (R_k - R_{k-1}) P_k (tied scores: one threshold);
* VOC2007 11-point: mean over t in {0, 0.1, ..., 1} of max{P_k : R_k >= t} (0 when no R_k >= t);
* VOC2010+: area under p_interp(r) = max{P_k : R_k >= r}, a step function of recall;
* difficult as negatives: -1 -> 0, then all-point;
* labelled images: all-point on the images with at least one non-zero target.
"""
from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cli import main
from iagcn.metrics import (ap_voc07_11point, ap_voc10_all_point, average_precision_by_rule, labelled_rows,
                           map_conventions)


# ------------------------------------------------------------------ independent references (exact arithmetic)
def pr_by_counting(scores, y):
    """[(precision, recall)] as Fractions, one point per distinct score v (predict s >= v), highest v first."""
    n_pos = sum(y)
    points = []
    for v in sorted(set(scores), reverse=True):
        predicted = [i for i, s in enumerate(scores) if s >= v]
        tp = sum(y[i] for i in predicted)
        points.append((Fraction(tp, len(predicted)), Fraction(tp, n_pos)))
    return points


def ref_all_point(scores, y):
    total, prev_r = Fraction(0), Fraction(0)
    for p, r in pr_by_counting(scores, y):
        total += (r - prev_r) * p
        prev_r = r
    return total


def ref_11_point(scores, y):
    points = pr_by_counting(scores, y)
    total = Fraction(0)
    for k in range(11):
        t = Fraction(k, 10)
        reach = [p for p, r in points if r >= t]
        total += max(reach) if reach else Fraction(0)
    return total / 11


def ref_interpolated_area(scores, y):
    """Integral of p_interp over recall: between consecutive recall levels r_{j-1} < r <= r_j the envelope is the
    highest precision of any point at recall >= r_j."""
    points = pr_by_counting(scores, y)
    levels = sorted({r for _, r in points})
    area, prev = Fraction(0), Fraction(0)
    for level in levels:
        area += (level - prev) * max(p for p, r in points if r >= level)
        prev = level
    return area


def ref_per_class(scores, targets, rule, *, difficult_negative=False, rows=None):
    out = []
    n = scores.shape[0]
    rows = range(n) if rows is None else rows
    for c in range(scores.shape[1]):
        keep = [i for i in rows if difficult_negative or targets[i, c] != -1]
        y = [int(targets[i, c] == 1) for i in keep]
        s = [float(scores[i, c]) for i in keep]
        out.append(100.0 * float(rule(s, y)) if sum(y) else math.nan)
    return np.array(out)


def ref_map(ap):
    finite = [a for a in ap if not math.isnan(a)]
    return sum(finite) / len(finite)


def random_case(seed, n=50, n_classes=6, *, ties=False, empty_rows=0):
    rng = np.random.default_rng(seed)
    t = (rng.random((n, n_classes)) < 0.3).astype(np.int8)
    t[rng.random((n, n_classes)) < 0.1] = -1
    t[0, :] = 1                                        # every class has a positive
    t[n - empty_rows:, :] = 0                          # images without any label (COCO --keep-empty)
    s = rng.normal(size=(n, n_classes)) + 1.2 * (t == 1)
    if ties:
        s = np.round(s * 2) / 2                        # many tied scores
    return s, t


# ------------------------------------------------------------------ hand-computed toy cases
def test_hand_computed_three_rules_differ():
    # ranks: + - + - + ; PR points (1, 1/3), (1/2, 1/3), (2/3, 2/3), (1/2, 2/3), (3/5, 1)
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 0, 1, 0, 1], dtype=bool)
    # 11-point: t = 0..0.3 -> 1 (4x); t = 0.4..0.6 -> 2/3 (3x); t = 0.7..1 -> 3/5 (4x)
    assert ap_voc07_11point(s, y) == pytest.approx((4 + 2 + 2.4) / 11, abs=1e-12)
    # envelope (1, 2/3, 2/3, 3/5, 3/5), recall steps 1/3 at points 1, 3, 5
    assert ap_voc10_all_point(s, y) == pytest.approx((1 + 2 / 3 + 0.6) / 3, abs=1e-12)
    ap = map_conventions(s[:, None], y[:, None].astype(int))
    assert ap["all_point"]["mAP"] == pytest.approx(100 * (1 + 2 / 3 + 0.6) / 3, abs=1e-9)
    assert ap["voc07_11point"]["mAP"] != pytest.approx(ap["all_point"]["mAP"], abs=0.1)   # 76.4 vs 75.6


def test_interpolation_lifts_a_rising_precision():
    # ranks: - + + ; PR (0, 0), (1/2, 1/2), (2/3, 1): all-point 1/2*1/2 + 1/2*2/3 = 7/12; envelope 2/3 everywhere
    s = np.array([0.9, 0.8, 0.7])
    t = np.array([[0], [1], [1]])
    conv = map_conventions(s[:, None], t)
    assert conv["all_point"]["mAP"] == pytest.approx(100 * 7 / 12, abs=1e-9)
    assert conv["voc10_all_point"]["mAP"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert conv["voc07_11point"]["mAP"] == pytest.approx(100 * 2 / 3, abs=1e-9)


def test_tied_scores_form_one_point_in_every_rule():
    # a positive tied with a negative at the top: one point (1/2, 1/2), then (2/3, 1)
    s = np.array([[0.9], [0.9], [0.5]])
    t = np.array([[1], [0], [1]])
    conv = map_conventions(s, t)
    assert conv["all_point"]["mAP"] == pytest.approx(100 * 7 / 12, abs=1e-9)
    assert conv["voc10_all_point"]["mAP"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert conv["voc07_11point"]["mAP"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    # the order of the tied rows does not matter
    conv2 = map_conventions(s[[1, 0, 2]], t[[1, 0, 2]])
    assert {k: v["mAP"] for k, v in conv2.items()} == pytest.approx({k: v["mAP"] for k, v in conv.items()})


def test_recall_of_exactly_three_tenths_reaches_t_03():
    # 3 positives on top, 10 negatives, 7 positives: recall 3/10 with precision 1 must count for t = 0.3
    y = np.array([1] * 3 + [0] * 10 + [1] * 7, dtype=bool)
    s = -np.arange(len(y), dtype=float)
    expect = ref_11_point(list(s), list(y.astype(int)))
    assert ap_voc07_11point(s, y) == pytest.approx(float(expect), abs=1e-12)
    # t = 0, 0.1, 0.2, 0.3 -> 1; t = 0.4 ... 1 -> 10/20 (the last point has the highest precision after rank 3)
    assert float(expect) == pytest.approx((4 + 7 * 0.5) / 11, abs=1e-12)


def test_ignored_entries_removed_per_class_but_negative_under_difficult_rule():
    # class 0: the top-scored entry is difficult (-1); class 1: no difficult entries
    s = np.array([[0.9, 0.9], [0.8, 0.1], [0.7, 0.8], [0.1, 0.2]])
    t = np.array([[-1, 1], [1, 0], [0, 1], [1, 0]])
    conv = map_conventions(s, t)
    # class 0, -1 removed: ranks + - + -> (1 + 2/3) / 2; as a negative: - + - + -> (1/2 + 1/2) / 2
    for rule in ("all_point", "voc10_all_point"):
        assert conv[rule]["per_class_ap"][0] == pytest.approx(100 * (1 + 2 / 3) / 2, abs=1e-9)
    assert conv["difficult_as_negative"]["per_class_ap"][0] == pytest.approx(100 * 0.5, abs=1e-9)
    assert conv["difficult_as_negative"]["per_class_ap"][1] == pytest.approx(conv["all_point"]["per_class_ap"][1])


def test_class_without_positives_is_nan_and_left_out_of_every_map():
    s = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.4]])
    t = np.array([[1, 0], [0, -1], [1, 0]])              # class 1: no positives
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # map_conventions itself stays quiet
        conv = map_conventions(s, t)
    for k in ("all_point", "voc07_11point", "voc10_all_point", "labelled_images"):
        assert math.isnan(conv[k]["per_class_ap"][1])
        assert conv[k]["mAP"] == pytest.approx(100.0)
    # as negatives the -1 entry does not make a positive: still NaN
    assert math.isnan(conv["difficult_as_negative"]["per_class_ap"][1])


def test_labelled_images_drop_all_zero_rows_only():
    s = np.array([[0.9], [0.8], [0.7], [0.6]])
    t = np.array([[0], [1], [0], [0]])
    assert labelled_rows(np.array([[0, 0], [1, 0], [0, -1], [0, 0]])).tolist() == [False, True, True, False]
    conv = map_conventions(s, t)
    assert conv["all_point"]["mAP"] == pytest.approx(50.0)        # the positive ranks second
    assert conv["labelled_images"]["mAP"] == pytest.approx(100.0)  # only row 1 is labelled
    assert conv["labelled_images"]["num_images"] == 1 and conv["all_point"]["num_images"] == 4


# ------------------------------------------------------------------ random cases against the references
@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False), (3, True), (4, True)])
def test_every_convention_matches_its_reference(seed, ties):
    s, t = random_case(seed, ties=ties, empty_rows=6)
    conv = map_conventions(s, t)
    refs = {"all_point": ref_per_class(s, t, ref_all_point),
            "voc07_11point": ref_per_class(s, t, ref_11_point),
            "voc10_all_point": ref_per_class(s, t, ref_interpolated_area),
            "difficult_as_negative": ref_per_class(np.asarray(s), np.where(t == -1, 0, t), ref_all_point),
            "labelled_images": ref_per_class(s, t, ref_all_point,
                                             rows=[i for i in range(len(t)) if any(t[i] != 0)])}
    for k, ref in refs.items():
        np.testing.assert_allclose(conv[k]["per_class_ap"], ref, atol=1e-9, err_msg=k)
        assert conv[k]["mAP"] == pytest.approx(ref_map(ref), abs=1e-9), k
    assert conv["labelled_images"]["num_images"] == sum(any(row != 0) for row in t) <= len(t) - 6
    # the rules differ on these data (they are not one number under five names)
    maps = [conv[k]["mAP"] for k in refs]
    assert len({round(m, 6) for m in maps}) == len(maps)


def test_rule_functions_refuse_an_unknown_rule():
    from iagcn.metrics import MetricInputError

    with pytest.raises(MetricInputError, match="rule"):
        average_precision_by_rule(np.zeros((2, 1)), np.array([[1], [0]]), rule="voc12")


# ------------------------------------------------------------------ tables and the CLI
def test_per_class_table_shows_positives_and_flags_fewer_than_five():
    from iagcn.evaluate.report import per_class_table

    text = per_class_table([("m", [80.0, 50.0, float("nan")])], ["a", "b", "c"], fmt="markdown",
                           positives=[12, 4, 0])
    rows = [r for r in text.splitlines() if r.startswith("| positives")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells == ["positives", "12", "4*", "0*", "-"]
    assert "* = fewer than 5 positives (2 of 3 classes)" in text


def test_eval_cli_writes_every_convention(tmp_path):
    s, t = random_case(7, n=60, n_classes=5, ties=True, empty_rows=8)
    t[1:4, 2] = 0
    t[1, 2] = 1
    t[5:, 2] = np.where(t[5:, 2] == 1, 0, t[5:, 2])     # class 2: two positives -> flagged
    np.save(tmp_path / "s.npy", s)
    np.save(tmp_path / "t.npy", t)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = CliRunner().invoke(main, ["eval", "--scores", str(tmp_path / "s.npy"), "--targets", str(tmp_path / "t.npy"),
                                      "--scores-are", "logits", "--class-names", "a,b,c,d,e", "--out", str(out),
                                      "--no-plots"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "metrics.json").read_text())
    conv = rec["map_conventions"]
    assert set(conv) == {"all_point", "voc07_11point", "voc10_all_point", "difficult_as_negative", "labelled_images"}
    assert conv["all_point"]["mAP"] == pytest.approx(rec["metrics"]["mAP"], abs=1e-12)  # the default, unchanged
    labelled = [i for i in range(len(t)) if any(t[i] != 0)]
    refs = {"voc07_11point": ref_per_class(s, t, ref_11_point),
            "voc10_all_point": ref_per_class(s, t, ref_interpolated_area),
            "difficult_as_negative": ref_per_class(s, np.where(t == -1, 0, t), ref_all_point),
            "labelled_images": ref_per_class(s, t, ref_all_point, rows=labelled)}
    for k, ref in refs.items():
        assert conv[k]["mAP"] == pytest.approx(ref_map(ref), abs=1e-9), k
        assert [conv[k]["per_class_ap"][c] for c in "abcde"] == pytest.approx(ref.tolist(), abs=1e-9), k
    assert conv["labelled_images"]["num_images"] == len(labelled) < len(t) == conv["all_point"]["num_images"]
    assert rec["positives_per_class"] == {c: int((t[:, j] == 1).sum()) for j, c in enumerate("abcde")}
    md = (out / "tables.md").read_text()
    assert "**mAP under each convention (percent)**" in md
    section = md.split("**mAP under each convention (percent)**")[1]
    row = next(line for line in section.splitlines() if line.startswith("| s "))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == [f"{conv[k]['mAP']:.1f}" for k in ("all_point", "voc07_11point", "voc10_all_point",
                                                       "difficult_as_negative", "labelled_images")]
    assert f"on the {len(labelled)} of {len(t)} images" in md
    positives_row = [c.strip() for c in next(line for line in md.splitlines()
                                             if line.startswith("| positives")).strip("|").split("|")]
    assert positives_row[3] == f"{(t[:, 2] == 1).sum()}*" and "*" not in positives_row[1]
    assert "mAP under each convention" in r.output
