"""`iagcn eval` / `compare` / `explain` end to end: score files, runs from a tiny training, plots, Fig. 1 data.

Reference values come from independent computations written here: AP as the mean of the precision at each
positive's rank (scores without ties), and the model's logits / A_F from a direct forward pass of the checkpoint.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from iagcn.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def reference_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Percent AP per class: mean precision at the rank of each positive (ignored entries dropped; no ties)."""
    aps = []
    for c in range(scores.shape[1]):
        keep = targets[:, c] != -1
        s, y = scores[keep, c], targets[keep, c] == 1
        if not y.any():
            aps.append(np.nan)
            continue
        order = np.argsort(-s)
        hits = y[order]
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the positives
        aps.append(100.0 * np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return np.array(aps)


def invoke(args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 2000, path
    with Image.open(path) as im:
        assert min(im.size) >= 100


# ---------------------------------------------------------------------------------------------- --scores/--targets
@pytest.fixture
def score_files(tmp_path):
    rng = np.random.default_rng(3)
    n, C = 80, 5
    targets = (rng.random((n, C)) < 0.3).astype(np.int8)
    targets[rng.random((n, C)) < 0.05] = -1
    targets[:2, :] = 1  # every class has positives
    logits = rng.standard_normal((n, C)) + 1.5 * (targets == 1)
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "targets.npy", targets)
    return tmp_path, logits, targets


def test_eval_scores_targets_npy(score_files):
    tmp_path, logits, targets = score_files
    out = tmp_path / "out"
    r = invoke(["eval", "--scores", tmp_path / "logits.npy", "--targets", tmp_path / "targets.npy",
                "--scores-are", "logits", "--class-names", "a,b,c,d,e", "--out", out])
    assert r.exit_code == 0, r.output
    assert "Top-3" in r.output and "mAP" in r.output and "Per-class AP" in r.output
    rec = json.loads((out / "metrics.json").read_text())
    ref = reference_ap(logits, targets)
    assert rec["metrics"]["mAP"] == pytest.approx(ref.mean(), abs=1e-9)
    assert [rec["per_class_ap"][c] for c in "abcde"] == pytest.approx(ref.tolist(), abs=1e-9)
    # CP at threshold 0.5 = logit 0, computed directly (-1 counts as negative)
    pred = logits >= 0
    cp = np.mean([(pred[:, c] & (targets[:, c] == 1)).sum() / max(pred[:, c].sum(), 1) for c in range(5)]) * 100
    assert rec["metrics"]["CP"] == pytest.approx(cp, abs=1e-9)
    rows = (out / "per_class_ap.csv").read_text().splitlines()
    assert rows[0] == "class,ap,positives,ignored" and len(rows) == 6
    assert float(rows[1].split(",")[1]) == pytest.approx(ref[0], abs=1e-3)
    assert json.loads((out / "eval_config.json").read_text())["config"]["scores_are"] == "logits"
    for name in ("per_class_ap.png", "pr_curves.png"):
        assert_png(out / name)


def test_eval_csv_probabilities_aligned_by_id(score_files):
    """A CSV with a header and shuffled image-id rows gives the same metrics as the ordered npy."""
    tmp_path, logits, targets = score_files
    n = len(logits)
    ids = [f"im{i:03d}" for i in range(n)]
    perm = np.random.default_rng(0).permutation(n)
    probs = 1 / (1 + np.exp(-logits))
    lines = ["image_id,a,b,c,d,e"] + [",".join([ids[i], *(f"{v:.17g}" for v in probs[i])]) for i in perm]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "t.npz", labels=targets, image_ids=np.array(ids))
    out = tmp_path / "csvout"
    r = invoke(["eval", "--scores", tmp_path / "p.csv", "--targets", tmp_path / "t.npz", "--scores-are",
                "probabilities", "--out", out, "--no-plots", "--class-names", "a,b,c,d,e"])  # t.npz's column order
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["metrics"]["mAP"] == pytest.approx(reference_ap(logits, targets).mean(), abs=1e-9)
    assert list(rec["per_class_ap"]) == list("abcde")  # names from the CSV header


def test_eval_scores_refuses_bad_input(score_files):
    tmp_path, logits, _ = score_files
    r = invoke(["eval", "--scores", tmp_path / "logits.npy", "--targets", tmp_path / "targets.npy"])
    assert r.exit_code == 2 and "--scores-are" in r.output
    r = invoke(["eval", "--scores", tmp_path / "logits.npy", "--targets", tmp_path / "targets.npy",
                "--scores-are", "probabilities"])
    assert r.exit_code == 2 and "not probabilities" in r.output
    np.save(tmp_path / "short.npy", logits[:10])
    r = invoke(["eval", "--scores", tmp_path / "short.npy", "--targets", tmp_path / "targets.npy",
                "--scores-are", "logits"])
    assert r.exit_code == 2 and "rows" in r.output


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two seeds of `iagcn` and one of `mlgcn` trained for 2 epochs on a tiny fake cache."""
    pytest.importorskip("iagcn.train.run", reason="stage two (train/) has not landed")
    import dataclasses

    from iagcn.cache.fake import write_fake_cache
    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.run import train_run

    d = tmp_path_factory.mktemp("runs")
    common = dict(num_rois=6, dim=16, num_classes=5, embedding_dim=8, prototypes_seed=7)
    train_path = write_fake_cache(d / "train.h5", n=96, seed=1, split="train", **common)
    test_path = write_fake_cache(d / "test.h5", n=48, seed=2, split="test", **common)
    runs = {}
    small = dict(epochs=2, batch_size=16, device="cpu", gcn_widths=(16,), region_widths=(16,), num_threads=1,
                 val_fraction=0.25)
    for preset, seed in (("iagcn", 0), ("iagcn", 1), ("mlgcn", 0)):
        cfg = dataclasses.replace(config_for_preset(preset), seed=seed, **small)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train_run(cfg, train_data=CacheData(train_path), eval_data=CacheData(test_path),
                      out_dir=d / "sweep" / f"{preset}-s{seed}", progress=False, log=lambda *_: None)
        runs[(preset, seed)] = d / "sweep" / f"{preset}-s{seed}"
    return {"dir": d, "train": train_path, "test": test_path, "runs": runs}


def direct_logits(run_dir, cache_path):
    """Logits of the best checkpoint by a plain forward pass over the cache arrays (no stage-two data loader)."""
    import torch

    from iagcn.cache.format import FeatureCache
    from iagcn.train.inference import load_run

    run = load_run(run_dir)
    with FeatureCache(cache_path) as c:
        x = torch.from_numpy(c.read("global").astype(np.float32))  # (n, D)
        X = torch.from_numpy(c.read("regions").astype(np.float32))  # (n, N, D)
        valid = torch.from_numpy(c.read("box_valid"))  # (n, N)
        labels = c.read("labels")
    with torch.no_grad():
        out = run.model(x, X, valid)
    return out.logits.numpy().astype(np.float64), labels, run, out


def test_eval_run_metrics_scores_and_plots(tiny_runs):
    run_dir = tiny_runs["runs"][("iagcn", 0)]
    out = tiny_runs["dir"] / "eval-one"
    r = invoke(["eval", "--run", run_dir, "--cache", tiny_runs["test"], "--out", out, "--quiet",
                "--pr-classes", "class00,class03"])
    assert r.exit_code == 0, r.output
    logits, labels, _, _ = direct_logits(run_dir, tiny_runs["test"])
    rec = json.loads((out / "metrics.json").read_text())
    assert rec["metrics"]["mAP"] == pytest.approx(np.nanmean(reference_ap(logits, labels)), abs=1e-3)
    with np.load(out / "scores.npz") as z:
        np.testing.assert_allclose(z["scores"], logits, atol=1e-4)
        from iagcn.cache.format import FeatureCache

        with FeatureCache(tiny_runs["test"]) as c:
            assert list(z["image_ids"]) == c.image_ids()
    for name in ("per_class_ap.png", "pr_curves.png", "training_curves.png"):
        assert_png(out / name)
    assert (out / "per_class_ap.csv").read_text().count("\n") == 6
    # tables.md next to metrics.json: the printed tables, as Markdown, with the numbers of metrics.json
    md = (out / "tables.md").read_text()
    assert "| Methods" in md and "Top-3" in md and "Per-class AP (Table 2 layout)" in md
    assert f" {rec['metrics']['mAP']:.1f} |" in md
    _assert_wrote_lines_name_real_files(r.output, expect={out: ["metrics.json", "tables.md", "pr_curves.png"]})


def _assert_wrote_lines_name_real_files(output: str, *, expect: dict) -> None:
    lines = [line for line in output.splitlines() if line.startswith("wrote ")]
    assert lines
    listed = {}
    for line in lines:
        folder, names = line[len("wrote "):].split("/: ")
        listed[folder] = names.split(", ")
        for name in listed[folder]:
            assert (Path(folder) / name).is_file(), (folder, name)
    for folder, names in expect.items():
        assert set(names) <= set(listed[str(folder)])


def test_eval_several_runs_side_by_side(tiny_runs):
    runs = tiny_runs["runs"]
    out = tiny_runs["dir"] / "eval-many"
    r = invoke(["eval", "--run", runs[("iagcn", 0)], "--run", runs[("mlgcn", 0)], "--cache", tiny_runs["test"],
                "--out", out, "--quiet"])
    assert r.exit_code == 0, r.output
    assert "iagcn-s0" in r.output and "mlgcn-s0" in r.output
    assert_png(out / "per_class_ap.png")
    for name in ("iagcn-s0", "mlgcn-s0"):
        assert (out / name / "metrics.json").exists()
        assert_png(out / name / "training_curves.png")
        own = (out / name / "tables.md").read_text()
        assert f"| {name}" in own and ("mlgcn-s0" if name == "iagcn-s0" else "iagcn-s0") not in own
    combined = (out / "tables.md").read_text()                # both runs side by side at the top of --out
    assert "| iagcn-s0" in combined and "| mlgcn-s0" in combined
    assert_png(out / "pr_curves.png")                          # runs overlaid
    assert_png(out / "training_curves.png")
    _assert_wrote_lines_name_real_files(r.output, expect={out: ["tables.md", "per_class_ap.png", "pr_curves.png"],
                                                           out / "iagcn-s0": ["metrics.json", "tables.md"],
                                                           out / "mlgcn-s0": ["metrics.json", "scores.npz"]})


def test_eval_checkpoint_file(tiny_runs):
    run_dir = tiny_runs["runs"][("iagcn", 1)]
    out = tiny_runs["dir"] / "eval-ckpt"
    r = invoke(["eval", "--checkpoint", run_dir / "last.pt", "--cache", tiny_runs["test"], "--out", out,
                "--no-plots", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["inputs"]["checkpoint"].endswith("last.pt")


def _explain_setup(tiny_runs, tmp_path, k):
    """(run dir, the run, the head's outputs on the test cache, image id k of it with a grey image file under
    tmp_path)."""
    run_dir = tiny_runs["runs"][("iagcn", 0)]
    _, _, run, out_all = direct_logits(run_dir, tiny_runs["test"])
    from iagcn.cache.format import FeatureCache

    with FeatureCache(tiny_runs["test"]) as c:
        image_id = c.image_ids()[k]
    Image.fromarray(np.full((100, 120, 3), 128, np.uint8)).save(tmp_path / f"{image_id}.png")
    return run_dir, run, out_all, image_id


def test_explain_fig1_matrix_is_the_models(tiny_runs, tmp_path):
    k = 5
    run_dir, run, out_all, image_id = _explain_setup(tiny_runs, tmp_path, k)
    out = tmp_path / "explain"
    r = invoke(["explain", "--run", run_dir, "--cache", tiny_runs["test"], "--image-id", image_id,
                "--image-root", tmp_path, "--out", out])
    assert r.exit_code == 0, r.output
    fig1, fig3 = out / f"fig1_lcm_{image_id}.png", out / f"fig3_rois_{image_id}.png"
    assert_png(fig1)
    assert_png(fig3)
    with np.load(str(fig1) + ".npz") as z:
        np.testing.assert_allclose(z["A_F"], out_all.A_F[k].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["A_S"], run.A_S, rtol=1e-6)
    with np.load(str(fig3) + ".npz") as z:
        np.testing.assert_allclose(z["weights"], out_all.z[k].numpy(), rtol=1e-5, atol=1e-6)
    rec = json.loads((out / f"explain_{image_id}.json").read_text())
    assert set(rec["figures"]) >= {"fig1", "fig3"}
    with np.load(str(fig3) + ".npz") as z:       # Fig. 3 names the image's labels and the top predictions
        caption = str(z["caption"])
    assert caption.startswith(f"labels: {', '.join(rec['labels']) or 'none'}")
    top = sorted(rec["probabilities"].items(), key=lambda kv: -kv[1])[:3]
    assert "predicted: " + ", ".join(f"{n} {p:.2f}" for n, p in top) in caption
    r = invoke(["explain", "--run", run_dir, "--cache", tiny_runs["test"], "--image-id", "nope", "--out", out])
    assert r.exit_code == 2 and "nope" in r.output


# ---------------------------------------------------------------------------------------------- compare
def test_compare_run_against_itself_is_exactly_zero(tiny_runs):
    run_dir = tiny_runs["runs"][("iagcn", 0)]
    out = tiny_runs["dir"] / "cmp-self"
    r = invoke(["compare", run_dir, run_dir, "--cache", tiny_runs["test"], "--resamples", "200", "--out", out])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "compare.json").read_text())
    for name, m in rec["bootstrap"]["metrics"].items():
        if m["diff"] is not None:
            assert (m["diff"], m["low"], m["high"]) == (0.0, 0.0, 0.0), name
            assert not m["excludes_zero"]
    assert "saved scores" in " ".join(rec["sources"].values())  # never retrained, not even re-scored


def test_compare_seeds_sweep_spec_matches_stats(tiny_runs):
    """SWEEP:PRESET expands to the seeds; the bootstrap of one pair equals evaluate.stats.paired_bootstrap."""
    from iagcn.evaluate.stats import paired_bootstrap, paired_bootstrap_runs

    sweep = tiny_runs["dir"] / "sweep"
    r = invoke(["compare", f"{sweep}:iagcn", f"{sweep}:iagcn", "--cache", tiny_runs["test"], "--resamples", "100",
                "--out", tiny_runs["dir"] / "cmp-seeds"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tiny_runs["dir"] / "cmp-seeds" / "compare.json").read_text())
    assert rec["seeds_a"] == [0, 1] and rec["pairing"] == "by seed"
    assert rec["seed_tests"]["mAP"]["mean_diff"] == 0.0 and rec["seed_tests"]["mAP"]["p_t"] == 1.0
    rng = np.random.default_rng(0)
    t = (rng.random((40, 4)) < 0.4).astype(np.int8)
    t[0] = 1
    a, b = rng.standard_normal((40, 4)), rng.standard_normal((40, 4)) + t
    mine = paired_bootstrap_runs([a], [b], t, scores_are="logits", n_resamples=300, seed=4)
    ref = paired_bootstrap(a, b, t, scores_are="logits", n_resamples=300, seed=4)
    for k, m in ref["metrics"].items():
        for field in ("diff", "low", "high"):
            assert mine["metrics"][k][field] == pytest.approx(m[field], abs=1e-12, nan_ok=True), (k, field)


def fake_run(dir_, *, scores, image_ids, cache_path, seed, preset, class_names):
    """A run folder holding only what compare reads: config.json, the saved scores and the completion marker
    metrics.json (no checkpoint at all)."""
    from iagcn.cache.format import FeatureCache

    dir_.mkdir(parents=True)
    with FeatureCache(cache_path) as c:
        h = c.attrs["extract_config_hash"]
    from iagcn.train import runfolder

    runfolder.write_record(dir_, {
        "config": {"seed": seed, "preset": preset}, "class_names": class_names, "protocol": "last-epoch",
        "git_commit": None, "train_cache": {"path": str(cache_path.resolve()), "extract_config_hash": h},
        "eval_cache": {"path": str(cache_path.resolve()), "extract_config_hash": h}})
    runfolder.save_scores(dir_, np.asarray(scores), [str(i) for i in image_ids])
    # metrics.json marks a complete run: compare refuses interrupted ones (its content is not read here)
    runfolder.write_metrics(dir_, {"metrics": {}, "protocol": "last-epoch", "selected_epoch": 1,
                                   "selection_mAP": None, "epochs_run": 1, "train_seconds": 0.0,
                                   "eval_cache": {}, "preset": preset, "seed": seed})


def test_compare_better_by_construction_excludes_zero(tmp_path):
    """B's scores separate the classes much better than A's: the mAP interval lies above zero (saved scores only)."""
    from iagcn.cache.fake import write_fake_cache
    from iagcn.cache.format import FeatureCache

    cache = write_fake_cache(tmp_path / "c.h5", n=200, num_rois=2, dim=4, num_classes=4, embedding_dim=2, seed=5)
    from pathlib import Path

    cache = Path(cache)
    with FeatureCache(cache) as c:
        labels, ids, names = c.read("labels"), c.image_ids(), c.class_names
    rng = np.random.default_rng(1)
    pos = (labels == 1).astype(float)
    a = rng.standard_normal(labels.shape) + 0.3 * pos
    b = rng.standard_normal(labels.shape) + 2.5 * pos
    perm = rng.permutation(len(ids))  # saved in another order: compare aligns by image id
    fake_run(tmp_path / "A", scores=a[perm], image_ids=[ids[i] for i in perm], cache_path=cache, seed=0,
             preset="a", class_names=names)
    fake_run(tmp_path / "B", scores=b, image_ids=ids, cache_path=cache, seed=0, preset="b", class_names=names)
    r = invoke(["compare", tmp_path / "A", tmp_path / "B", "--cache", cache, "--resamples", "300",
                "--out", tmp_path / "cmp"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "cmp" / "compare.json").read_text())["bootstrap"]["metrics"]["mAP"]
    assert m["low"] > 0 and m["excludes_zero"]
    assert m["diff"] == pytest.approx(np.nanmean(reference_ap(b, labels)) - np.nanmean(reference_ap(a, labels)),
                                      abs=1e-9)
    assert "*" in r.output


def test_compare_sweep_ablation_table(tiny_runs):
    """--sweep DIR --baseline P: one row per preset, the baseline marked, ΔmAP = B - A of the runs' own metrics."""
    out = tiny_runs["dir"] / "ablation"
    r = invoke(["compare", "--sweep", tiny_runs["dir"] / "sweep", "--baseline", "mlgcn", "--cache", tiny_runs["test"],
                "--resamples", "100", "--out", out, "--format", "markdown"])
    assert r.exit_code == 0, r.output
    md = (out / "ablation.md").read_text()
    import re

    assert "ΔmAP vs mlgcn" in md
    assert re.search(r"\| mlgcn\s*\|.*\|\s*baseline \|", md) and re.search(r"\| iagcn\s*\|\s*2 \|", md)
    from iagcn.evaluate.ablation import ABLATION_KEYS

    rec = json.loads((out / "ablation.json").read_text())
    assert set(rec) == set(ABLATION_KEYS)  # the one schema (also what `sweep --baseline` writes)
    assert rec["deltas"]["iagcn"]["metrics"]["mAP"] == rec["comparisons"]["iagcn"]["bootstrap"]["metrics"]["mAP"]
    m = rec["comparisons"]["iagcn"]["bootstrap"]["metrics"]["mAP"]
    runs = tiny_runs["runs"]
    mean_b = np.mean([json.loads((runs[("iagcn", s)] / "metrics.json").read_text())["metrics"]["mAP"] for s in (0, 1)])
    base = json.loads((runs[("mlgcn", 0)] / "metrics.json").read_text())["metrics"]["mAP"]
    assert m["diff"] == pytest.approx(mean_b - base, abs=1e-3)


def test_explain_file_stem_drops_the_image_suffix():
    from iagcn.evaluate.explain import file_stem

    assert file_stem("000208") == "000208"
    assert file_stem("v1.2") == "v1.2"            # not an image suffix: kept, and a plain name: itself
    # anything else: a readable form plus 8 hex digits of the raw id's hash (one file name per id)
    for image_id, readable in (("img_000208.jpg", "img_000208"), ("street/001.JPEG", "street_001"),
                               ("a b/c.png", "a_b_c")):
        stem = file_stem(image_id)
        assert stem.startswith(readable + "+") and len(stem) == len(readable) + 9, stem


def test_eval_on_cuda_sends_the_model_and_batches_to_the_gpu(tiny_runs, tmp_path, fake_gpu):
    """`eval --run R --device cuda` (simulated GPU, conftest.fake_gpu): the run's head is moved to cuda:0 before
    its batches, which go there too (the head used to stay on the CPU); the metrics equal --device cpu's."""
    import torch

    run = tiny_runs["runs"][("iagcn", 0)]

    def metrics(device):
        out = tmp_path / device
        r = invoke(["eval", "--run", run, "--cache", tiny_runs["test"], "--no-plots", "--out", out, "--quiet",
                    "--device", device])
        assert r.exit_code == 0, r.output
        return json.loads((out / "metrics.json").read_text())["metrics"]

    on_cpu = metrics("cpu")
    assert fake_gpu == []
    on_gpu = metrics("cuda:0")
    cuda0 = torch.device("cuda", 0)
    assert fake_gpu[0] == ("module", "IAGCNHead", cuda0), fake_gpu[:3]   # the model first ...
    batches = [e for e in fake_gpu[1:] if e[0] == "tensor"]
    assert len(batches) >= 4 and all(dev == cuda0 for _, _, dev in batches)  # ... then x, X, valid, labels
    assert sum(shape[0] for _, shape, _ in batches if len(shape) == 3) == 48   # X of all 48 images moved
    assert on_gpu == on_cpu


def test_explain_image_on_cuda_moves_model_and_batch(tiny_runs, fake_gpu):
    import torch

    from iagcn.train.inference import explain_image, load_run

    run = tiny_runs["runs"][("iagcn", 0)]
    ref = explain_image(load_run(run).model, tiny_runs["test"], 3, device="cpu")
    assert fake_gpu == []
    got = explain_image(load_run(run).model, tiny_runs["test"], 3, device="cuda")
    cuda0 = torch.device("cuda", 0)
    assert fake_gpu[0] == ("module", "IAGCNHead", cuda0)
    assert [e[1] for e in fake_gpu[1:] if e[0] == "tensor"] and all(e[2] == cuda0 for e in fake_gpu)
    for key in ("logits", "z", "A_F"):
        np.testing.assert_array_equal(got[key], ref[key])


def test_eval_never_overwrites_the_runs_own_files(tiny_runs):
    """`iagcn eval --run R --out R` used to replace R/metrics.json (training's completion marker): a later sweep
    then failed with KeyError 'protocol'. An evaluation refuses a run folder as its output, leaving it intact."""
    from iagcn.train import runfolder

    run_dir = tiny_runs["runs"][("mlgcn", 0)]
    before = {name: (run_dir / name).read_bytes() for name in runfolder.RUN_FILES if (run_dir / name).exists()}
    assert {"metrics.json", "config.json", "scores.npz"} <= set(before)
    for args in (["eval", "--run", run_dir, "--cache", tiny_runs["test"], "--out", run_dir, "--quiet", "--no-plots"],
                 ["eval", "--scores", run_dir / "scores.npz", "--targets", tiny_runs["test"], "--scores-are",
                  "logits", "--out", run_dir]):
        r = invoke(args)
        assert r.exit_code == 2, r.output
        assert "error: --out" in r.output and "training run folder" in r.output
    after = {name: (run_dir / name).read_bytes() for name in runfolder.RUN_FILES if (run_dir / name).exists()}
    assert after == before
    assert not (run_dir / "eval_config.json").exists() and not (run_dir / "per_class_ap.csv").exists()
    assert runfolder.read_metrics(run_dir)["protocol"].startswith("holdout")  # what a sweep reads
    # the default output (R/eval) and any other folder still work
    r = invoke(["eval", "--run", run_dir, "--cache", tiny_runs["test"], "--quiet", "--no-plots"])
    assert r.exit_code == 0, r.output
    assert (run_dir / "eval" / "metrics.json").exists()
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_explain_top_rois_draws_the_rois_of_largest_z(tiny_runs, tmp_path):
    """explain --top-rois K: Fig. 3 draws the K valid ROIs whose model weight z is largest."""
    k = 5
    run_dir, _, out_all, image_id = _explain_setup(tiny_runs, tmp_path, k)
    out = tmp_path / "explain"
    r = invoke(["explain", "--run", run_dir, "--cache", tiny_runs["test"], "--image-id", image_id,
                "--image-root", tmp_path, "--out", out, "--top-rois", "2"])
    assert r.exit_code == 0, r.output
    (fig3,) = out.glob("fig3*.png")
    with np.load(str(fig3) + ".npz") as data:
        z, valid, drawn = data["weights"], data["valid"], data["drawn"]
    np.testing.assert_allclose(z, out_all.z[k].numpy(), rtol=1e-5, atol=1e-6)
    ref = sorted(sorted(np.flatnonzero(valid), key=lambda i: -z[i])[:2])
    assert drawn.tolist() == ref and len(ref) == 2
