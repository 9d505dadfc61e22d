"""Calibrated thresholds: chosen on a hold-out of the train cache only, checked against a brute-force search and
explicit counting written here; the run's saved hold-out scores against a direct forward pass; the CLI's table and
metrics.json; the cases where calibration is unavailable."""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cli import main
from iagcn.metrics import calibrate_thresholds, thresholded_metrics


# ------------------------------------------------------------------ independent references
def counts_f1(pred, positive):
    tp = int(np.sum(pred & positive))
    return 2 * tp / (int(pred.sum()) + int(positive.sum()))


def ref_best_threshold(scores, positive):
    """Brute force: every distinct score v as "predict s >= v"; the best F1, ties -> the highest v."""
    best_v, best_f1 = None, -1.0
    for v in sorted(set(scores.ravel().tolist()), reverse=True):
        f1 = counts_f1(scores >= v, positive)
        if f1 > best_f1:
            best_v, best_f1 = v, f1
    return best_v, best_f1


def ref_prf(pred, targets):
    """ML-GCN's CP ... OF1 by explicit counting (-1 negative; classes without positives left out of CP/CR)."""
    precisions, recalls, tp_all, pred_all, pos_all = [], [], 0, 0, 0
    for c in range(targets.shape[1]):
        tp = sum(1 for i in range(len(pred)) if pred[i, c] and targets[i, c] == 1)
        npred, npos = int(pred[:, c].sum()), int((targets[:, c] == 1).sum())
        tp_all, pred_all, pos_all = tp_all + tp, pred_all + npred, pos_all + npos
        if npos:
            precisions.append(tp / npred if npred else 0.0)
            recalls.append(tp / npos)
    cp, cr = np.mean(precisions), np.mean(recalls)
    op, orr = (tp_all / pred_all if pred_all else 0.0), tp_all / pos_all
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    return {k: 100 * v for k, v in dict(CP=cp, CR=cr, CF1=f1(cp, cr), OP=op, OR=orr, OF1=f1(op, orr)).items()}


def case(seed, n, shift, n_classes=5):
    """Logits whose negatives sit around ``shift``: the best threshold moves with it."""
    rng = np.random.default_rng(seed)
    t = (rng.random((n, n_classes)) < 0.3).astype(np.int8)
    t[rng.random((n, n_classes)) < 0.05] = -1
    t[:6, :] = 1
    s = np.round(rng.normal(size=(n, n_classes)) + shift + 2.5 * (t == 1), 1)   # rounded: ties
    return s, t


# ------------------------------------------------------------------ the choice
def test_global_and_per_class_thresholds_are_the_holdouts_best():
    hs, ht = case(0, 120, shift=3.0)
    hs[:, 4] = np.round(hs[:, 4] - 1.0, 1)
    ht[:, 4] = 0
    ht[:3, 4] = 1                                             # class 4: 3 hold-out positives -> global
    chosen = calibrate_thresholds(hs, ht)
    v, f1 = ref_best_threshold(hs, ht == 1)
    assert np.array_equal(hs >= chosen["global"], hs >= v)   # the same predictions as the brute-force best
    assert chosen["global_OF1"] == pytest.approx(f1, abs=1e-12)
    assert not np.any(hs == chosen["global"])                 # a midpoint: no hold-out score sits on it
    for c in range(4):
        vc, _ = ref_best_threshold(hs[:, c], ht[:, c] == 1)
        assert np.array_equal(hs[:, c] >= chosen["per_class"][c], hs[:, c] >= vc), c
    assert chosen["fallback"].tolist() == [False] * 4 + [True]
    assert chosen["per_class"][4] == chosen["global"]


def test_ties_are_predicted_together_and_the_highest_best_threshold_wins():
    # scores 3, 2, 2, 1: F1 at >=3: 2/3 (tp 1, pred 1, pos 2); at >=2: tp 2 of pred 3 -> 0.8; at >=1: 2*2/6
    s = np.array([[3.0], [2.0], [2.0], [1.0]])
    t = np.array([[1], [1], [0], [0]])
    chosen = calibrate_thresholds(s, t, min_positives=1)
    assert chosen["global"] == pytest.approx(1.5) and chosen["per_class"][0] == pytest.approx(1.5)
    # best at the lowest score: the threshold is that score itself (everything predicted)
    s2 = np.array([[3.0], [1.0], [1.0]])
    t2 = np.array([[1], [0], [1]])                           # >=3: 2/3; >=1: 2*2/(3+2) = 0.8
    assert calibrate_thresholds(s2, t2, min_positives=1)["global"] == pytest.approx(1.0)
    # equal F1 at >= 4 and at >= 1 (2*1/(1+2) = 2*2/(4+2) = 2/3): the higher threshold, midpoint of 4 and 3
    s3 = np.array([[4.0], [3.0], [2.0], [1.0]])
    t3 = np.array([[1], [0], [0], [1]])
    assert calibrate_thresholds(s3, t3, min_positives=1)["global"] == pytest.approx(3.5)


def test_reported_thresholds_are_the_holdouts_not_the_eval_sets():
    """The eval set's own best threshold is elsewhere (its negatives sit 3 logits lower); the calibrated block
    uses the hold-out's and its metrics equal an independent count at that threshold."""
    from iagcn.evaluate.calibration import Holdout, calibration_record

    hs, ht = case(1, 150, shift=3.0)
    es, et = case(2, 100, shift=0.0)
    rec = calibration_record(es, et, class_names=list("abcde"), scores_are="logits", threshold=0.5,
                             holdout=Holdout(scores=hs, targets=ht, image_ids=None, source="test"))
    v_hold, _ = ref_best_threshold(hs, ht == 1)
    v_eval, f1_eval_best = ref_best_threshold(es, et == 1)
    g = rec["global"]["threshold"]
    assert np.array_equal(hs >= g, hs >= v_hold)
    assert not np.array_equal(es >= g, es >= v_eval)          # the eval set would have chosen otherwise
    assert counts_f1(es >= g, et == 1) < f1_eval_best          # ... and scored better on itself: not peeked
    assert rec["global"]["threshold_probability"] == pytest.approx(1 / (1 + np.exp(-g)))
    assert rec["global"]["metrics"] == pytest.approx(ref_prf(es >= g, et), abs=1e-9)
    per_class = np.array([rec["per_class"]["thresholds"][c] for c in "abcde"])
    for c in range(5):
        vc, _ = ref_best_threshold(hs[:, c], ht[:, c] == 1)
        assert np.array_equal(hs[:, c] >= per_class[c], hs[:, c] >= vc)
    assert rec["per_class"]["metrics"] == pytest.approx(ref_prf(es >= per_class[None, :], et), abs=1e-9)
    assert rec["fixed"]["metrics"] == pytest.approx(ref_prf(es >= 0, et), abs=1e-9)   # the paper's 0.5
    assert thresholded_metrics(es, et, 0.0) == pytest.approx(rec["fixed"]["metrics"])


def test_holdout_sharing_evaluated_images_or_without_positives_is_unavailable():
    from iagcn.evaluate.calibration import Holdout, calibration_record

    s, t = case(3, 30, shift=0.0)
    ids = [f"im{i}" for i in range(30)]
    rec = calibration_record(s, t, class_names=list("abcde"), scores_are="logits", threshold=0.5, image_ids=ids,
                             holdout=Holdout(scores=s[:10], targets=t[:10], image_ids=ids[:10], source="x"))
    assert rec["available"] is False and "among the evaluated images" in rec["reason"]
    rec = calibration_record(s, t, class_names=list("abcde"), scores_are="logits", threshold=0.5,
                             holdout=Holdout(scores=s[:4], targets=np.zeros((4, 5), int), image_ids=None, source="x"))
    assert rec["available"] is False and "no positive label" in rec["reason"]


# ------------------------------------------------------------------ score files through the CLI
def invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_holdout_files_give_the_side_by_side_table(tmp_path):
    hs, ht = case(4, 120, shift=2.0)
    es, et = case(5, 80, shift=2.0)
    for name, arr in (("hs", hs), ("ht", ht), ("es", es), ("et", et)):
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "out"
    r = invoke(["eval", "--scores", tmp_path / "es.npy", "--targets", tmp_path / "et.npy", "--scores-are", "logits",
                "--holdout-scores", tmp_path / "hs.npy", "--holdout-targets", tmp_path / "ht.npy", "--out", out,
                "--no-plots"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "metrics.json").read_text())
    cal = rec["calibration"]
    assert cal["available"] and cal["holdout_images"] == 120
    g = cal["global"]["threshold"]
    assert np.array_equal(hs >= g, hs >= ref_best_threshold(hs, ht == 1)[0])
    assert cal["global"]["metrics"] == pytest.approx(ref_prf(es >= g, et), abs=1e-9)
    assert cal["fixed"]["metrics"]["CF1"] == pytest.approx(rec["metrics"]["CF1"], abs=1e-12)   # metrics unchanged
    md = (out / "tables.md").read_text()
    section = md.split("**Thresholded metrics: fixed threshold vs calibrated on the hold-out**")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| es ")]
    assert [r[1] for r in rows] == ["0.5 (paper)", f"global {cal['global']['threshold_probability']:.3g} (hold-out)",
                                    "per class (hold-out)"]
    assert rows[1][2:] == [f"{cal['global']['metrics'][k]:.1f}" for k in ("CP", "CR", "CF1", "OP", "OR", "OF1")]
    # without hold-out files: the fixed row, and a row saying why there is no calibrated one
    r = invoke(["eval", "--scores", tmp_path / "es.npy", "--targets", tmp_path / "et.npy", "--scores-are", "logits"])
    assert r.exit_code == 0 and "calibrated: unavailable" in r.output and "--holdout-scores" in r.output
    r = invoke(["eval", "--scores", tmp_path / "es.npy", "--targets", tmp_path / "et.npy", "--scores-are", "logits",
                "--holdout-scores", tmp_path / "hs.npy"])
    assert r.exit_code == 2 and "--holdout-targets" in r.output


# ------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import write_cache_pair
    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.run import train_run

    d = tmp_path_factory.mktemp("cal")
    train_path, test_path = write_cache_pair(d, n_train=80, n_eval=40, num_rois=4, dim=12, num_classes=4,
                                             embedding_dim=6, prototypes_seed=3)
    small = dict(epochs=2, batch_size=16, device="cpu", gcn_widths=(8,), num_threads=1)
    out = {}
    for name, frac in (("hold", 0.3), ("nohold", 0.0)):
        cfg = dataclasses.replace(config_for_preset("mlgcn"), val_fraction=frac, **small)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_run(cfg, train_data=CacheData(train_path), eval_data=CacheData(test_path), out_dir=d / name,
                      progress=False, log=lambda *_: None)
        out[name] = d / name
    return {"dir": d, "train": train_path, "test": test_path, **out}


def forward(run_dir, cache_path, rows):
    """Logits of the best checkpoint by a direct forward pass over the cache arrays."""
    import torch

    from iagcn.cache.format import FeatureCache
    from iagcn.train.inference import load_run

    run = load_run(run_dir)
    with FeatureCache(cache_path) as c:
        x = torch.from_numpy(c.read("global").astype(np.float32))[rows]
        X = torch.from_numpy(c.read("regions").astype(np.float32))[rows]
        valid = torch.from_numpy(c.read("box_valid"))[rows]
        labels, ids = c.read("labels")[rows], [c.image_ids()[i] for i in rows]
    with torch.no_grad():
        return run.model(x, X, valid).logits.numpy().astype(np.float64), labels, ids


def test_run_saves_holdout_scores_of_its_selected_epoch(runs):
    from iagcn.cache.format import FeatureCache
    from iagcn.train.holdout import stratified_holdout
    from iagcn.train.inference import load_run

    with np.load(runs["hold"] / "holdout_scores.npz") as z:
        scores, ids, labels, epoch = z["scores"], list(z["image_ids"]), z["labels"], int(z["epoch"])
    with FeatureCache(runs["train"]) as c:
        _, hold = stratified_holdout(c.read("labels"), fraction=0.3, seed=0)
    logits, ref_labels, ref_ids = forward(runs["hold"], runs["train"], hold)
    assert ids == ref_ids and np.array_equal(labels, ref_labels)
    np.testing.assert_allclose(scores, logits, atol=1e-4)
    assert epoch == load_run(runs["hold"]).epoch
    assert not (runs["nohold"] / "holdout_scores.npz").exists()


def test_eval_run_calibrates_on_its_holdout_saved_or_recomputed(runs, tmp_path):
    out = tmp_path / "e1"
    r = invoke(["eval", "--run", runs["hold"], "--cache", runs["test"], "--out", out, "--no-plots", "--quiet"])
    assert r.exit_code == 0, r.output
    cal = json.loads((out / "metrics.json").read_text())["calibration"]
    assert cal["available"] and "holdout_scores.npz" in cal["source"]
    with np.load(runs["hold"] / "holdout_scores.npz") as z:
        hs, ht = z["scores"].astype(np.float64), z["labels"]
    with np.load(out / "scores.npz") as z:
        es = z["scores"].astype(np.float64)
    from iagcn.cache.format import FeatureCache

    with FeatureCache(runs["test"]) as c:
        et = c.read("labels")
    g = cal["global"]["threshold"]
    assert np.array_equal(hs >= g, hs >= ref_best_threshold(hs, ht == 1)[0])
    assert cal["global"]["metrics"] == pytest.approx(ref_prf(es >= g, et), abs=1e-6)
    # without the saved file: the same split of the train cache is scored again, the same thresholds come out
    saved = runs["hold"] / "holdout_scores.npz"
    backup = tmp_path / "holdout_scores.npz"
    saved.rename(backup)
    try:
        out2 = tmp_path / "e2"
        r = invoke(["eval", "--run", runs["hold"], "--cache", runs["test"], "--out", out2, "--no-plots", "--quiet"])
        assert r.exit_code == 0, r.output
        cal2 = json.loads((out2 / "metrics.json").read_text())["calibration"]
    finally:
        backup.rename(saved)
    assert cal2["available"] and "scoring the run's" in cal2["source"]
    assert cal2["global"]["threshold"] == pytest.approx(g, abs=1e-4)
    assert cal2["per_class"]["metrics"] == pytest.approx(cal["per_class"]["metrics"], abs=1e-9)


def test_eval_run_without_holdout_says_calibration_is_unavailable(runs, tmp_path):
    r = invoke(["eval", "--run", runs["nohold"], "--cache", runs["test"], "--out", tmp_path / "n", "--no-plots",
                "--quiet"])
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "n" / "metrics.json").read_text())["calibration"]
    assert cal["available"] is False and "val_fraction 0" in cal["reason"]
    md = (tmp_path / "n" / "tables.md").read_text()
    assert "calibrated: unavailable" in md and "val_fraction 0" in md
    # evaluating a run with a hold-out on its own train cache: the hold-out rows are evaluated images
    r = invoke(["eval", "--run", runs["hold"], "--cache", runs["train"], "--out", tmp_path / "t", "--no-plots",
                "--quiet"])
    assert r.exit_code == 0, r.output
    cal = json.loads((tmp_path / "t" / "metrics.json").read_text())["calibration"]
    assert cal["available"] is False and "train cache" in cal["reason"]
