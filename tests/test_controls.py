"""Issue 17, section 3: a control for every claim. The adjacency controls, the top-N ROI slice, the wide probe and
the legacy (test-set selection) protocol, each against an independent computation."""
from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch

from iagcn.cache.fake import write_fake_cache
from iagcn.errors import UserError
from iagcn.train.config import config_for_preset
from iagcn.train.data import CacheData
from iagcn.train.lcm import adjacency_control, normalize_adjacency, statistical_lcm
from iagcn.train.run import train_run

SMALL = {"gcn_widths": (16, 32), "region_widths": (16, 16, 32), "num_threads": 1}
KW = dict(num_rois=8, dim=16, num_classes=6, embedding_dim=10, prototypes_seed=3)


def _quiet(*_):
    return None


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    train = write_fake_cache(d / "train.h5", n=200, seed=0, split="train", **KW)
    test = write_fake_cache(d / "test.h5", n=100, seed=1, split="test", **KW)
    return train, test


def _A_S(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (rng.random((300, 7)) < np.array([0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.05])).astype(np.int8)
    labels[:, 1] |= labels[:, 0] & (rng.random(300) < 0.9)          # planted co-occurrence: 0 -> 1
    A = statistical_lcm(labels, tau=0.3, p=0.25)
    assert 0 < (A[~np.eye(7, dtype=bool)] != 0).sum() < 7 * 6        # some edges, not all: the controls differ
    return A


# -- 1. adjacency controls ----------------------------------------------------------------------------------
def test_identity_and_uniform_controls_normalise_to_I_and_one_over_C():
    A = _A_S()
    C = A.shape[0]
    I, rec = adjacency_control(A, control="identity", seed=0)
    assert rec == {"control": "identity"}
    assert torch.equal(normalize_adjacency(torch.from_numpy(I)), torch.eye(C))           # Â = I exactly
    U, _ = adjacency_control(A, control="uniform", seed=0)
    np.testing.assert_allclose(normalize_adjacency(torch.from_numpy(U)).numpy(), np.full((C, C), 1.0 / C), rtol=1e-6)
    same, rec = adjacency_control(A, control="none", seed=0)
    assert same is A and rec == {"control": "none"}


def test_shuffled_control_is_a_seeded_relabelling_of_A_S():
    A = _A_S()
    C = A.shape[0]
    S, rec = adjacency_control(A, control="shuffled", seed=3)
    perm = np.asarray(rec["permutation"])
    assert sorted(perm.tolist()) == list(range(C))
    P = np.eye(C)[perm]                                                                  # (C, C) P[i, perm[i]] = 1
    np.testing.assert_array_equal(S, (P @ A.astype(np.float64) @ P.T).astype(np.float32))  # P A_S P^T
    np.testing.assert_array_equal(np.sort(S.ravel()), np.sort(A.ravel()))                # same multiset of entries
    np.testing.assert_array_equal(np.diag(S), np.diag(A)[perm])                          # diagonal stays diagonal
    again, _ = adjacency_control(A, control="shuffled", seed=3)
    other, _ = adjacency_control(A, control="shuffled", seed=4)
    np.testing.assert_array_equal(again, S)
    assert not np.array_equal(other, S) and not np.array_equal(S, A)


def test_random_control_has_A_S_density_and_its_reweighting():
    A = _A_S()
    C = A.shape[0]
    off = ~np.eye(C, dtype=bool)
    R, rec = adjacency_control(A, control="random", seed=5, p=0.25)
    assert rec["edges"] == int((A[off] != 0).sum()) == int((R[off] != 0).sum())         # same density
    np.testing.assert_array_equal(np.diag(R), np.ones(C, np.float32))                   # the identity part
    col = R.astype(np.float64).sum(0) - 1.0                                              # (C,) off-diagonal column sums
    has = ((R * off) != 0).any(0)                                                        # columns with an edge
    np.testing.assert_allclose(col[has], 0.25, rtol=1e-4)                                # p / column sums, as A_S
    again, _ = adjacency_control(A, control="random", seed=5, p=0.25)
    other, _ = adjacency_control(A, control="random", seed=6, p=0.25)
    np.testing.assert_array_equal(again, R)
    assert not np.array_equal((other != 0), (R != 0)) and not np.array_equal((R != 0), (A != 0))


def test_identity_control_reaches_the_trained_heads_adjacency(caches, tmp_path):
    """mlgcn with the identity control trains on Â_S = I (its buffer in the checkpoint); the record names it."""
    train, test = caches
    with CacheData(train) as tr, CacheData(test) as te:
        for control in ("identity", "shuffled"):
            cfg = config_for_preset("mlgcn", epochs=1, batch_size=32, adjacency_control=control, **SMALL)
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / control, progress=False, log=_quiet)
        A_S = statistical_lcm(tr.labels, tau=0.4, p=0.25)
    state = torch.load(tmp_path / "identity" / "best.pt", weights_only=True)["model"]
    assert torch.equal(state["A_S_hat"], torch.eye(6)) and torch.equal(state["A_S"], torch.eye(6))
    record = json.loads((tmp_path / "shuffled" / "config.json").read_text())
    assert record["config"]["adjacency_control"] == "shuffled"
    perm = record["adjacency_control"]["permutation"]
    state = torch.load(tmp_path / "shuffled" / "best.pt", weights_only=True)["model"]
    np.testing.assert_array_equal(state["A_S"].numpy(), A_S[np.ix_(perm, perm)])


def test_defaults_of_the_new_fields_change_no_number(caches, tmp_path):
    """A fixed-seed run with the issue-17 fields left out equals one that passes their defaults explicitly."""
    train, test = caches
    results = []
    with CacheData(train) as tr, CacheData(test) as te:
        for name, extra in (("plain", {}), ("explicit", {"adjacency_control": "none", "num_rois": None,
                                                         "legacy_report": False})):
            cfg = config_for_preset("iagcn", epochs=2, batch_size=32, **SMALL, **extra)
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / name, progress=False, log=_quiet)
            results.append(np.load(tmp_path / name / "scores.npy"))
    np.testing.assert_array_equal(results[0], results[1])


# -- 2. top-N ROIs of an existing cache -------------------------------------------------------------------
def _sorted_copy(src: str, dst, *, poison_from: int | None = None) -> str:
    """A copy of ``src`` whose ROIs are in proposer-score order (valid first, non-increasing scores, padding 0);
    with ``poison_from`` the features of ROIs ``poison_from``.. are NaN (a top-N read must never touch them)."""
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        valid = f["box_valid"][...]                                                      # (n, N) a valid prefix
        N = valid.shape[1]
        f["box_scores"][...] = np.where(valid, 1.0 - np.arange(N) / N, 0.0).astype(np.float32)
        if poison_from is not None:
            r = f["regions"][...]
            r[:, poison_from:] = np.nan
            f["regions"][...] = r
    return str(dst)


@pytest.fixture(scope="module")
def sorted_caches(caches, tmp_path_factory):
    d = tmp_path_factory.mktemp("sorted")
    train, test = caches
    return {"clean": (_sorted_copy(train, d / "tr.h5"), _sorted_copy(test, d / "te.h5")),
            "poisoned": (_sorted_copy(train, d / "tr_nan.h5", poison_from=4),
                         _sorted_copy(test, d / "te_nan.h5", poison_from=4))}


@pytest.mark.parametrize("budget", [4.0, 0.0])                                          # in RAM, streamed
def test_top_n_reads_the_first_n_rois_only(sorted_caches, budget):
    path = sorted_caches["poisoned"][0]
    with h5py.File(path, "r") as f:
        want_X = f["regions"][:, :4].astype(np.float32)                                  # (n, 4, D)
        want_valid = f["box_valid"][:, :4]
    with CacheData(path, memory_budget_gib=budget, num_rois=4, block_rows=64) as data:
        assert data.N == 4 and data.in_memory == (budget > 0)
        got = {}
        for b in data.batches(batch_size=50, shuffle=True, rng=np.random.default_rng(0)):
            for i, row in enumerate(b.index):
                got[int(row)] = (b.X[i].numpy().copy(), b.valid[i].numpy().copy())
    assert sorted(got) == list(range(len(want_X)))
    for row, (X, v) in got.items():
        np.testing.assert_array_equal(X, want_X[row])
        np.testing.assert_array_equal(v, want_valid[row])
    with pytest.raises(UserError, match="non-finite"):                                    # what N = 8 would read
        with CacheData(path, memory_budget_gib=budget) as data:
            list(data.batches(batch_size=50))


def test_top_n_training_and_rescoring_never_read_the_rois_past_n(sorted_caches, tmp_path):
    """iagcn with num_rois=4: the same scores whether ROIs 4.. hold features or NaN; `iagcn eval`'s rescoring from
    the checkpoint on the full cache reproduces them; config.json and the record say N."""
    from iagcn.evaluate.evaluation import EvalConfig
    from iagcn.evaluate.runscores import score_run_on_cache

    scores = {}
    for name, (train, test) in sorted_caches.items():
        cfg = config_for_preset("iagcn", epochs=2, batch_size=32, num_rois=4, **SMALL)
        with CacheData(train, num_rois=4) as tr, CacheData(test, num_rois=4) as te:
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / name, progress=False, log=_quiet)
        scores[name] = np.load(tmp_path / name / "scores.npy")
    np.testing.assert_array_equal(scores["clean"], scores["poisoned"])
    record = json.loads((tmp_path / "clean" / "config.json").read_text())
    assert record["config"]["num_rois"] == 4 and record["rois"] == {"read": 4, "cached": 8}
    rescored = score_run_on_cache(run_dir=tmp_path / "poisoned", checkpoint=None,
                                  cache_path=sorted_caches["poisoned"][1], config=EvalConfig(device="cpu"))
    np.testing.assert_allclose(rescored.scores, scores["clean"], rtol=1e-5, atol=1e-5)
    from iagcn.train.inference import explain_image, load_run

    run = load_run(tmp_path / "poisoned")                                               # `iagcn explain`'s read
    info = explain_image(run.model, sorted_caches["poisoned"][1], 3, num_rois=run.config.num_rois)
    assert info["boxes"].shape == (4, 4) and info["region_scores"].shape[0] == 4
    np.testing.assert_allclose(info["logits"], scores["clean"][3], rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="non-finite"):                                   # all 8 ROIs: the NaNs
        explain_image(run.model, sorted_caches["poisoned"][1], 3)
    with CacheData(sorted_caches["clean"][0]) as tr, CacheData(sorted_caches["clean"][1]) as te:   # all 8 ROIs
        full = config_for_preset("iagcn", epochs=1, num_rois=4, **SMALL)
        with pytest.raises(UserError, match="num_rois"):
            train_run(full, train_data=tr, eval_data=te, out_dir=tmp_path / "mixed", progress=False, log=_quiet)


def test_top_n_refuses_unsorted_caches_and_n_above_the_cache(caches, sorted_caches, tmp_path):
    train, _ = caches                                        # write_fake_cache draws box_scores at random
    with pytest.raises(UserError, match=r"cache .*train\.h5: its ROIs are not in proposer-score order"):
        CacheData(train, num_rois=4)
    with pytest.raises(UserError, match="holds 8 ROIs"):
        CacheData(sorted_caches["clean"][0], num_rois=9)
    bad = _sorted_copy(train, tmp_path / "padding_first.h5")
    with h5py.File(bad, "r+") as f:                          # a valid box after a padding box
        v = f["box_valid"][...]
        row = int(np.flatnonzero(~v.all(1))[0])
        v[row] = v[row][::-1]
        f["box_valid"][...] = v
    with pytest.raises(UserError, match="not in proposer-score order"):
        CacheData(bad, num_rois=4)
    with CacheData(train, num_rois=8) as data:               # N = the cache's own: nothing is sliced
        assert data.N == 8


def test_top_n_from_the_command_line(sorted_caches, tmp_path):
    from tests.conftest import run_cli

    train, test = sorted_caches["poisoned"]
    out = tmp_path / "run"
    run_cli(["train", "--train-cache", train, "--eval-cache", test, "--preset", "comsco", "--epochs", "1",
             "--threads", "1", "--quiet", "--out", out, "--set", "num_rois=4", "--set", "region_widths=8,8,8"],
            check=True)
    assert json.loads((out / "config.json").read_text())["config"]["num_rois"] == 4
    refused = run_cli(["train", "--train-cache", train, "--eval-cache", test, "--preset", "comsco", "--epochs", "1",
                       "--quiet", "--out", tmp_path / "r2", "--set", "num_rois=9"])
    assert refused.returncode != 0 and "holds 8 ROIs" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_first_n_of_a_top_40_selection_are_the_top_n_selection():
    """What the slice relies on: every proposer's top_n_with_padding keeps boxes in score order, so the first N of
    N = 40 are the boxes (and padding) a --num-rois N extraction keeps; selective search's 1 - i / M ranks too."""
    from iagcn.extract.proposers import build_proposer, top_n_with_padding

    rng = np.random.default_rng(0)
    xy = rng.random((300, 2)) * 80
    boxes = np.concatenate([xy, xy + 5 + rng.random((300, 2)) * 40], 1).astype(np.float32)  # (300, 4)
    scores = rng.random(300).astype(np.float32)
    big = top_n_with_padding(boxes, scores, num=40, height=128, width=128)
    for n in (10, 20):
        small = top_n_with_padding(boxes, scores, num=n, height=128, width=128)
        for a, b in ((big.boxes, small.boxes), (big.scores, small.scores), (big.valid, small.valid)):
            np.testing.assert_array_equal(a[:n], b)
    img = (rng.random((80, 96, 3)) * 255).astype(np.uint8)
    (p40,) = build_proposer("selective-search", num_rois=40).propose([img])
    (p10,) = build_proposer("selective-search", num_rois=10).propose([img])
    np.testing.assert_array_equal(p40.boxes[:10], p10.boxes)
    assert np.all(np.diff(p40.scores[p40.valid]) <= 0) and not p40.valid[p40.valid.sum():].any()


# -- 3. the wide probe -------------------------------------------------------------------------------------
def test_wide_probe_features_are_x_and_the_max_over_valid_rois(caches, tmp_path):
    import shutil

    from iagcn.train.probe import probe_features

    path = tmp_path / "padded.h5"
    shutil.copy(caches[0], path)
    with h5py.File(path, "r+") as f:                     # padding boxes with huge features must not enter the max
        valid = f["box_valid"][...]
        r = f["regions"][...]
        r[~valid] = 60000.0
        valid[0] = False                                  # an image without a valid ROI: read through its padding
        f["box_valid"][...] = valid
        f["regions"][...] = r
        x = f["global"][...].astype(np.float64)
        R = r.astype(np.float64)
    want = np.empty((len(x), 2 * x.shape[1]))
    for i in range(len(x)):                               # independent: a Python loop over images and boxes
        rows = [R[i, j] for j in range(R.shape[1]) if valid[i, j]] or list(R[i])
        want[i] = np.concatenate([x[i], np.max(rows, axis=0)])
    assert want[0, x.shape[1]:].max() == 60000.0 and want[1:, x.shape[1]:].max() < 100
    for budget in (4.0, 0.0):
        with CacheData(path, memory_budget_gib=budget, block_rows=64) as data:
            np.testing.assert_array_equal(probe_features(data, features="wide", batch_size=48), want)
            np.testing.assert_array_equal(probe_features(data, features="global"), x)


def test_wide_probe_scores_from_the_region_features_beside_linear_probe_in_a_sweep(caches, tmp_path):
    from iagcn.evaluate.ablation import read_results, write_sweep_table
    from iagcn.metrics import multilabel_metrics
    from iagcn.train.probe import ProbeConfig, fit_predict, probe_features, standardise
    from iagcn.train.sweep import run_sweep

    train, test = caches
    cfg = config_for_preset("resnet", epochs=1, **SMALL)
    with CacheData(train) as tr, CacheData(test) as te:
        run_sweep([cfg], train_data=tr, eval_data=te, out_dir=tmp_path, progress=False, log=_quiet,
                  on_results=write_sweep_table, wide_probe=True)
        wide = json.loads((tmp_path / "wide-probe-s0" / "metrics.json").read_text())
        xtr, xev = standardise(probe_features(tr, features="wide"), probe_features(te, features="wide"))
        ref = fit_predict(xtr, tr.labels, xev, C=wide["C"], max_iter=ProbeConfig().max_iter)
        labels = te.labels
    np.testing.assert_allclose(np.load(tmp_path / "wide-probe-s0" / "scores.npy"), ref, rtol=1e-4, atol=1e-4)
    assert wide["metrics"]["mAP"] == pytest.approx(multilabel_metrics(ref, labels, scores_are="logits")["mAP"], abs=1e-3)
    linear = json.loads((tmp_path / "linear-probe-s0" / "metrics.json").read_text())
    assert wide["metrics"]["mAP"] != linear["metrics"]["mAP"]
    assert [r["preset"] for r in read_results(tmp_path)] == ["linear-probe", "wide-probe", "resnet"]
    table = (tmp_path / "table.md").read_text()
    assert re.search(r"\| wide-probe +\|", table) and "`wide-probe` = LogisticRegression on [x, max over ROIs of X]" in table
    assert "Model selection: last-epoch." in table                # the probes' CV is no training protocol


# -- 4. the legacy protocol -----------------------------------------------------------------------------------
def test_legacy_protocol_reports_the_test_best_epoch_of_the_same_training(caches, tmp_path):
    """legacy_report: one training gives the run's own number (last epoch here) and the legacy one (the epoch with
    the best eval mAP); the legacy number equals a separate select_on_eval run's, the run's own equals a run
    without legacy_report (scoring the eval cache every epoch changes no weight), and each says its protocol."""
    import csv

    from iagcn.evaluate.ablation import read_results, write_sweep_table
    from iagcn.train.sweep import run_sweep

    train, test = caches
    base = dict(epochs=6, lr=0.5, batch_size=32, **SMALL)            # measured: eval mAP peaks at epoch 5 of 6
    with CacheData(train) as tr, CacheData(test) as te:
        run_sweep([config_for_preset("mlgcn", legacy_report=True, **base)], train_data=tr, eval_data=te,
                  out_dir=tmp_path / "sweep", progress=False, log=_quiet, on_results=write_sweep_table, probe=False)
        plain = train_run(config_for_preset("mlgcn", **base), train_data=tr, eval_data=te, out_dir=tmp_path / "plain",
                          progress=False, log=_quiet)
        on_eval = train_run(config_for_preset("mlgcn", select_on_eval=True, **base), train_data=tr, eval_data=te,
                            out_dir=tmp_path / "on_eval", progress=False, log=_quiet)
    run = tmp_path / "sweep" / "mlgcn-s0"
    result = json.loads((run / "metrics.json").read_text())
    log = list(csv.DictReader(open(run / "log.csv")))
    eval_maps = [float(r["eval_mAP"]) for r in log]
    best = int(np.argmax(eval_maps)) + 1
    assert best != len(log) == 6, "the case must tell the last epoch from the test-best one"
    legacy = result["legacy"]
    assert result["protocol"] == "last-epoch" and result["selected_epoch"] == 6
    assert legacy["protocol"] == "legacy" and legacy["selected_epoch"] == best
    assert legacy["metrics"]["mAP"] == pytest.approx(max(eval_maps), abs=1e-4)
    assert on_eval["protocol"] == "select-on-eval" and on_eval["selected_epoch"] == best
    assert legacy["metrics"]["mAP"] == pytest.approx(on_eval["metrics"]["mAP"], abs=1e-9)
    assert legacy["metrics"]["mAP"] > result["metrics"]["mAP"]
    assert result["metrics"] == plain["metrics"]
    np.testing.assert_array_equal(np.load(run / "scores.npy"), np.load(tmp_path / "plain" / "scores.npy"))
    (row,) = read_results(tmp_path / "sweep")
    assert row["protocol"] == "last-epoch" and float(row["legacy_mAP"]) == pytest.approx(legacy["metrics"]["mAP"], abs=1e-4)
    assert int(row["legacy_selected_epoch"]) == best
    table = (tmp_path / "sweep" / "table.md").read_text()
    assert "legacy_mAP" in table.splitlines()[0] and f"{legacy['metrics']['mAP']:.1f}" in table.splitlines()[2]
    assert "the legacy protocol: test-set selection" in table


class _Stop(Exception):
    pass


def test_legacy_protocol_survives_an_interruption(caches, tmp_path):
    """An interrupted legacy_report run resumes with its legacy epoch and metrics (kept in last.pt), and ends with
    the uninterrupted run's numbers under both protocols."""
    train, test = caches
    cfg = config_for_preset("mlgcn", epochs=6, lr=0.5, batch_size=32, legacy_report=True, **SMALL)

    def stop_after_five(msg):
        if msg.startswith("epoch 5/"):
            raise _Stop                                     # epoch 5, the test-best one, is in last.pt only

    with CacheData(train) as tr, CacheData(test) as te:
        full = train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "full", progress=False, log=_quiet)
        with pytest.raises(_Stop):
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "cut", progress=False, log=stop_after_five)
        resumed = train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "cut", resume=True, progress=False,
                            log=_quiet)
    assert full["legacy"]["selected_epoch"] == 5
    assert resumed["legacy"] == full["legacy"] and resumed["metrics"] == full["metrics"]


def test_top_n_on_a_real_extraction_and_predict(tmp_path):
    """A cache written by `iagcn extract` (selective search) passes the score-order check; a run trained on its top
    2 of 4 ROIs predicts new images (stage one on the fly, 4 ROIs) as it scores the cache's first 2."""
    import dataclasses
    import warnings

    from iagcn.cache.format import FeatureCache
    from iagcn.evaluate.predict import predict_images
    from iagcn.metrics import sigmoid
    from iagcn.train.inference import load_run, predict_cache
    from tests.extract_helpers import extract_synth_pair

    root, _, caches = extract_synth_pair(tmp_path, num_rois=4)
    cfg = dataclasses.replace(config_for_preset("iagcn"), epochs=1, batch_size=8, device="cpu", gcn_widths=(16,),
                              region_widths=(16,), num_threads=1, num_rois=2)
    with warnings.catch_warnings(), CacheData(caches["trainval"], num_rois=2) as tr, \
            CacheData(caches["test"], num_rois=2) as te:
        warnings.simplefilter("ignore")
        train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "run", progress=False, log=_quiet)
    with FeatureCache(caches["test"]) as c:
        ids = c.image_ids()
    preds = predict_images(tmp_path / "run", [root / "JPEGImages" / f"{i}.jpg" for i in ids], threshold=0.5,
                           progress=False, log=_quiet)
    run = load_run(tmp_path / "run")
    ref = sigmoid(np.asarray(predict_cache(run.model, caches["test"], num_rois=2)["scores"], dtype=np.float64))
    np.testing.assert_allclose(np.asarray(np.load(tmp_path / "run" / "scores.npy"), np.float64),
                               np.log(ref / (1 - ref)), atol=1e-4)
    for p, row in zip(preds, ref):
        np.testing.assert_allclose([p.probabilities[n] for n in run.class_names], row, atol=1e-4)


def test_adjacency_control_on_a_preset_that_reads_no_A_S_is_refused(sorted_caches, tmp_path):
    from tests.conftest import run_cli

    train, test = sorted_caches["clean"]
    for preset in ("resnet", "comsco"):
        proc = run_cli(["train", "--train-cache", train, "--eval-cache", test, "--preset", preset, "--epochs", "1",
                        "--quiet", "--out", tmp_path / preset, "--set", "adjacency_control=identity"])
        assert proc.returncode == 2 and "reads no A_S" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / preset).exists()
