"""Issue 20, the evaluation side: inputs that gave a wrong number with exit 0, names that broke outputs, and
outputs that mixed. Every case through the real CLI (click's CliRunner on `iagcn.cli.main`); reference numbers
come from scikit-learn on correctly aligned arrays, never from the code under test.

Families: score/target columns matched by class name (never a name list checked and then ignored); only the
documented keys of an .npz; a bootstrap interval needs enough resamples; runs averaged as seeds must differ only
in their seed (and a config.json must agree with its checkpoint); names are data in Markdown tables, figure file
names and plots; one evaluation's outputs per --out.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from iagcn.cache.fake import write_fake_cache
from tests.test_bad_input import assert_nothing_written, assert_one_line_error, invoke

NAMES = ["cat", "dog", "bird", "car", "boat"]


def sklearn_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP (percent) by scikit-learn: per class, entries labelled -1 removed, classes without positives skipped."""
    aps = []
    for c in range(targets.shape[1]):
        keep = targets[:, c] != -1
        y = targets[keep, c] == 1
        if y.any():
            aps.append(average_precision_score(y, scores[keep, c]))
    return 100.0 * float(np.mean(aps))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache (the targets, named in NAMES' order) and aligned scores with distinct per-class quality."""
    from iagcn.cache.format import FeatureCache

    d = tmp_path_factory.mktemp("cache")
    path = Path(write_fake_cache(d / "test.h5", n=60, num_rois=4, dim=8, num_classes=5, embedding_dim=5, seed=3,
                                 split="test", class_names=NAMES))
    with FeatureCache(path) as c:
        t, ids = c.labels(), c.image_ids()
    rng = np.random.default_rng(11)
    s = rng.standard_normal(t.shape) + np.array([3.0, 1.5, 0.6, 0.2, 0.0]) * (t == 1)   # (n, C)
    return {"path": path, "t": t, "s": s, "ids": ids, "ref": sklearn_map(s, t)}


def eval_json(args: list, out: Path) -> dict:
    code, err = invoke(["eval", *args, "--scores-are", "logits", "--no-plots", "--out", out])
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------------------------------------- columns by name
def test_unnamed_scores_are_read_in_the_order_of_class_names_not_the_caches(cache, tmp_path):
    """Issue 20: an .npy in another column order than the cache, with --class-names in that order: the names were
    checked as a set, then ignored (mAP 51.7 instead of 89.8). Now they name the columns."""
    perm = [3, 0, 4, 1, 2]
    np.save(tmp_path / "s.npy", cache["s"][:, perm])
    m = eval_json(["--scores", tmp_path / "s.npy", "--targets", cache["path"],
                   "--class-names", ",".join(NAMES[c] for c in perm)], tmp_path / "o")
    assert m["metrics"]["mAP"] == pytest.approx(cache["ref"], abs=1e-6)
    for c, name in enumerate(NAMES):
        assert m["per_class_ap"][name] == pytest.approx(sklearn_map(cache["s"][:, [c]], cache["t"][:, [c]]),
                                                        abs=1e-6)


def test_unnamed_targets_are_read_in_the_order_of_class_names(cache, tmp_path):
    """The same family on the other side: named scores (CSV header), unnamed targets named by --class-names."""
    perm = [2, 4, 0, 3, 1]
    np.save(tmp_path / "t.npy", cache["t"][:, perm])
    np.savez(tmp_path / "s.npz", scores=cache["s"], class_names=np.array(NAMES))
    m = eval_json(["--scores", tmp_path / "s.npz", "--targets", tmp_path / "t.npy",
                   "--class-names", ",".join(NAMES[c] for c in perm)], tmp_path / "o")
    assert m["metrics"]["mAP"] == pytest.approx(cache["ref"], abs=1e-6)


@pytest.mark.parametrize("kind", ["unnamed scores, named cache", "named scores, unnamed targets",
                                  "class-names of another width"])
def test_unnamed_columns_against_named_ones_are_refused(kind, cache, tmp_path):
    """Nothing says which unnamed column is which class: refused (one line naming the file), not guessed."""
    extra: list = []
    if kind == "unnamed scores, named cache":
        np.save(tmp_path / "s.npy", cache["s"])
        scores, targets, bad = tmp_path / "s.npy", cache["path"], "s.npy"
    elif kind == "named scores, unnamed targets":
        np.savez(tmp_path / "s.npz", scores=cache["s"], class_names=np.array(NAMES))
        np.save(tmp_path / "t.npy", cache["t"])
        scores, targets, bad = tmp_path / "s.npz", tmp_path / "t.npy", "t.npy"
    else:
        np.save(tmp_path / "s.npy", cache["s"][:, :4])
        scores, targets, bad = tmp_path / "s.npy", cache["path"], "s.npy"
        extra = ["--class-names", ",".join(NAMES)]
    code, err = invoke(["eval", "--scores", scores, "--targets", targets, "--scores-are", "logits", "--no-plots",
                        "--out", tmp_path / "out", *extra])
    assert_one_line_error(code, err, bad, "--class-names" if "width" not in kind else "columns")
    assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- npz keys
@pytest.mark.parametrize("kind", ["labels instead of scores", "an unknown extra key", "targets without labels",
                                  "a cache as scores", "scores_are disagrees"])
def test_npz_files_are_read_by_their_documented_keys_only(kind, cache, tmp_path):
    """Issue 20: an .npz without `scores` had its `labels` taken as the scores (mAP 100.0). Only the documented
    keys are read; anything else is refused, naming the keys found."""
    scores, targets = tmp_path / "s.npz", cache["path"]
    needles: list[str] = []
    if kind == "labels instead of scores":
        np.savez(scores, labels=cache["t"], image_ids=np.array(cache["ids"]), class_names=np.array(NAMES))
        needles = ["s.npz", "'labels'", "'scores'"]
    elif kind == "an unknown extra key":
        np.savez(scores, scores=cache["s"], class_names=np.array(NAMES), logits=cache["s"])
        needles = ["s.npz", "'logits'"]
    elif kind == "targets without labels":
        np.savez(scores, scores=cache["s"], class_names=np.array(NAMES))
        targets = tmp_path / "t.npz"
        np.savez(targets, targets=cache["t"])          # one array, but not under its key
        needles = ["t.npz", "'targets'", "'labels'"]
    elif kind == "a cache as scores":
        scores = cache["path"]
        needles = ["--scores", "test.h5", "labels"]
    else:
        np.savez(scores, scores=1 / (1 + np.exp(-cache["s"])), class_names=np.array(NAMES),
                 scores_are=np.asarray("probabilities"))
        needles = ["s.npz", "probabilities"]
    code, err = invoke(["eval", "--scores", scores, "--targets", targets, "--scores-are", "logits", "--no-plots",
                        "--out", tmp_path / "out"])
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(tmp_path / "out")


def test_an_evaluations_own_scores_npz_is_read_back(cache, tmp_path):
    """The keys `iagcn eval` writes (scores, image_ids, class_names, scores_are) are all documented ones."""
    perm = [4, 2, 0, 1, 3]
    np.savez(tmp_path / "s.npz", scores=cache["s"][:, perm], image_ids=np.array(cache["ids"]),
             class_names=np.array([NAMES[c] for c in perm]), scores_are=np.asarray("logits"))
    m = eval_json(["--scores", tmp_path / "s.npz", "--targets", cache["path"]], tmp_path / "o")
    assert m["metrics"]["mAP"] == pytest.approx(cache["ref"], abs=1e-6)


# ---------------------------------------------------------------------------------------------- compare
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """mlgcn seeds 0 and 1 on train cache A, seed 1 on train cache B, and seed 1 on A with another lr; 1 epoch."""
    from tests.test_bad_input import SMALL_SET

    d = tmp_path_factory.mktemp("runs")
    kw = dict(num_rois=4, dim=8, num_classes=5, embedding_dim=5, prototypes_seed=0, class_names=NAMES)
    train_a = write_fake_cache(d / "train_a.h5", n=40, seed=0, **kw)
    train_b = write_fake_cache(d / "train_b.h5", n=40, seed=7, **kw)
    test = write_fake_cache(d / "test.h5", n=30, seed=1, split="test", **kw)
    made = {}
    for name, train, seed, extra in (("s0", train_a, 0, []), ("s1", train_a, 1, []), ("s1-cacheB", train_b, 1, []),
                                     ("s1-lr", train_a, 1, ["--set", "lr=0.002"])):
        out = d / name
        code, err = invoke(["train", "--train-cache", train, "--eval-cache", test, "--preset", "mlgcn", "--epochs",
                            "1", "--seed", str(seed), "--quiet", "--out", out, *SMALL_SET, *extra])
        assert code == 0, err
        made[name] = out
    return {"test": Path(test), **made}


def _sweep_of(tmp_path: Path, runs: dict, names: list[str]) -> Path:
    import shutil

    sweep = tmp_path / "sweep"
    for k, name in enumerate(names):
        shutil.copytree(runs[name], sweep / f"mlgcn-run{k}")
    return sweep


@pytest.mark.parametrize("resamples,ci", [("1", None), ("50", None), ("150", "0.99")])
def test_compare_needs_enough_resamples_for_its_interval(resamples, ci, runs, tmp_path):
    """Issue 20: `compare --resamples 1` printed a "95% CI" of [-8.3, -8.3] and a star. Too few resamples for the
    interval's level are refused, as `sweep --bootstrap` refuses fewer than 100."""
    args = ["compare", runs["s0"], runs["s1"], "--cache", runs["test"], "--resamples", resamples,
            "--out", tmp_path / "out"] + (["--ci", ci] if ci else [])
    code, err = invoke(args)
    assert_one_line_error(code, err, "--resamples")
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("odd", ["s1-cacheB", "s1-lr"])
def test_compare_sweep_refuses_seeds_of_different_experiments(odd, runs, tmp_path):
    """Issue 20: `compare --sweep` averaged runs trained on another cache or with another config as seeds of one
    preset. Seeds of a preset must differ in the seed only: refused, naming what differs (also as --a/--b lists)."""
    sweep = _sweep_of(tmp_path, runs, ["s0", odd])
    code, err = invoke(["compare", "--sweep", sweep, "--baseline", "mlgcn", "--cache", runs["test"],
                        "--out", tmp_path / "out"])
    assert_one_line_error(code, err, "--sweep", "mlgcn", "train cache" if odd == "s1-cacheB" else "lr")
    assert_nothing_written(tmp_path / "out")
    code, err = invoke(["compare", "--a", runs["s0"], "--a", runs[odd], "--b", runs["s0"], "--b", runs["s1"],
                        "--cache", runs["test"]])
    assert_one_line_error(code, err, "compare side A", odd)


def test_compare_sweep_of_true_seeds_still_works(runs, tmp_path):
    """The check does not refuse what is right: seeds 0 and 1 of one config on one cache are one preset's seeds."""
    sweep = _sweep_of(tmp_path, runs, ["s0", "s1"])
    code, err = invoke(["compare", "--sweep", sweep, "--baseline", "mlgcn", "--cache", runs["test"],
                        "--out", tmp_path / "out"])
    assert code == 0, err
    rec = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert len(rec["run_dirs"]["mlgcn"]) == 2


@pytest.mark.parametrize("field,value", [("preset", "idlcm"), ("seed", 5), ("lr", 0.5)])
def test_a_config_json_that_disagrees_with_its_checkpoint_is_refused(field, value, runs, tmp_path):
    """Issue 20: compare trusted a config.json that disagreed with its checkpoint (another preset or seed in the
    table). Every compared run's config.json is checked against the config its best.pt stores."""
    sweep = _sweep_of(tmp_path, runs, ["s0", "s1"])
    cfg_path = sweep / "mlgcn-run1" / "config.json"
    record = json.loads(cfg_path.read_text())
    record["config"][field] = value
    cfg_path.write_text(json.dumps(record))
    for args in (["--sweep", sweep, "--baseline", "mlgcn"], [sweep / "mlgcn-run0", sweep / "mlgcn-run1"]):
        code, err = invoke(["compare", *args, "--cache", runs["test"], "--out", tmp_path / "out"])
        assert_one_line_error(code, err, "config.json", "best.pt", field)
        assert_nothing_written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------- names are data
ODD_NAMES = ["a|b", "line\nbreak", "<script>alert(1)</script>", "R&D", "plain"]
DOLLAR_NAMES = ["cost_$10_to_$20", "$x$", "a\\$b", "$", "plain"]


def _unescaped_pipes(line: str) -> int:
    import re

    return len(re.findall(r"(?<!\\)\|", line))


def test_tables_md_keeps_its_columns_and_holds_no_markup_from_names(cache, tmp_path):
    """Issue 20: class names holding `|` or a newline shifted tables.md's columns, and a raw `<script>` became live
    where the Markdown is rendered. Every cell (class names, the evaluation's name) is escaped: each row of a
    table has the header's number of cells and no name appears as markup."""
    scores = tmp_path / "run|x<b>.npz"
    np.savez(scores, scores=cache["s"], class_names=np.array(ODD_NAMES))
    np.savez(tmp_path / "t.npz", labels=cache["t"], class_names=np.array(ODD_NAMES))
    m = eval_json(["--scores", scores, "--targets", tmp_path / "t.npz"], tmp_path / "o")
    assert m["metrics"]["mAP"] == pytest.approx(cache["ref"], abs=1e-6)
    text = (tmp_path / "o" / "tables.md").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text and "R&amp;D" in text and "x&lt;b&gt;" in text
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    assert len(tables) == 5                 # all, top-3, per-class AP, mAP conventions, thresholds (0.5 | calibrated)
    for rows in tables:
        assert len({_unescaped_pipes(r) for r in rows}) == 1, rows
    [per_class] = [rows for rows in tables if "a\\|b" in rows[0]]
    assert _unescaped_pipes(per_class[0]) == 1 + len(ODD_NAMES) + 2    # Methods | 5 classes | mAP
    assert "a\\|b" in per_class[0] and "line<br>break" in per_class[0]
    # the sweep report reads such a table back cell by cell
    from iagcn.evaluate.sweep_report import markdown_table_to_html

    html_table = markdown_table_to_html("\n".join(per_class))
    assert html_table.count("<th>") == 1 + len(ODD_NAMES) + 1 and "<script>" not in html_table
    assert "<th>a|b</th>" in html_table and "<th>line<br>break</th>" in html_table


@pytest.fixture(scope="module")
def idlcm_run(tmp_path_factory):
    """An idlcm run (it has Fig. 1) on a cache whose image ids map to the same readable file name in pairs."""
    import h5py

    from tests.test_bad_input import SMALL_SET

    d = tmp_path_factory.mktemp("explain")
    path = Path(write_fake_cache(d / "c.h5", n=24, num_rois=4, dim=8, num_classes=5, embedding_dim=5, seed=2,
                                 class_names=DOLLAR_NAMES))      # Fig. 1's tick labels: names, not mathtext
    odd = ["img.jpg", "img.png", "a/b.jpg", "a_b.jpg"]
    with h5py.File(path, "r+") as f:
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in f["image_ids"][...]]
        ids[:4] = odd
        f["image_ids"][...] = np.array(ids, dtype=f["image_ids"].dtype)
    run = d / "run"
    code, err = invoke(["train", "--train-cache", path, "--eval-cache", path, "--preset", "idlcm", "--epochs", "1",
                        "--quiet", "--out", run, *SMALL_SET])
    assert code == 0, err
    return run, path, odd


def test_explain_writes_one_set_of_files_per_image_id(idlcm_run, tmp_path):
    """Issue 20: `img.jpg` / `img.png` and `a/b.jpg` / `a_b.jpg` mapped to one file name: the second figure
    overwrote the first. Each id now has its own files, and each record names its own id."""
    run, cache_path, odd = idlcm_run
    out = tmp_path / "figs"
    args = ["explain", "--run", run, "--cache", cache_path, "--out", out, "--device", "cpu"]
    for image_id in odd:
        args += ["--image-id", image_id]
    code, err = invoke(args)
    assert code == 0, err
    records = sorted(out.glob("explain_*.json"))
    figures = sorted(out.glob("fig1_lcm_*.png"))
    assert len(records) == len(odd) and len(figures) == len(odd), sorted(p.name for p in out.iterdir())
    seen = {json.loads(p.read_text())["image_id"]: p for p in records}
    assert set(seen) == set(odd)
    for image_id, rec_path in seen.items():
        rec = json.loads(rec_path.read_text())
        assert Path(rec["figures"]["fig1"]).exists()
        with np.load(rec["figures"]["fig1"] + ".npz") as z:      # the figure's data is this image's A_F
            assert z["A_F"].shape == (5, 5)
        assert rec_path.name == f"explain_{Path(rec['figures']['fig1']).name[len('fig1_lcm_'):-len('.png')]}.json"


def test_dollar_class_names_are_drawn_as_text_in_every_plot(cache, tmp_path):
    """Issue 20: a class `cost_$10_to_$20` made matplotlib's mathtext raise (no plots, no outputs). Names are data:
    eval writes every plot and they show the names."""
    from PIL import Image

    np.savez(tmp_path / "s.npz", scores=cache["s"], class_names=np.array(DOLLAR_NAMES))
    np.savez(tmp_path / "t.npz", labels=cache["t"], class_names=np.array(DOLLAR_NAMES))
    out = tmp_path / "o"
    code, err = invoke(["eval", "--scores", tmp_path / "s.npz", "--targets", tmp_path / "t.npz", "--scores-are",
                        "logits", "--out", out, "--pr-classes", "cost_$10_to_$20,$x$,a\\$b"])
    assert code == 0, err
    for name in ("per_class_ap.png", "pr_curves.png"):
        with Image.open(out / name) as im:
            assert min(im.size) >= 100
    assert json.loads((out / "metrics.json").read_text())["metrics"]["mAP"] == pytest.approx(cache["ref"], abs=1e-6)


def test_matplotlib_draws_the_names_literally():
    """The helper every plot uses: the drawn string equals the name (matplotlib's own text layout, no mathtext)."""
    from matplotlib.text import Text

    from iagcn.evaluate.plots import plain_text

    for name in DOLLAR_NAMES + ["$\\alpha$"]:
        shown, math = Text(text=plain_text(name))._preprocess_math(plain_text(name))
        assert (shown, math) == (name, False)


def test_a_sweep_with_dollar_class_names_writes_its_report(tmp_path):
    """Issue 20: with such a class the sweep failed after every run had trained (its report's plots), and every
    rerun failed the same way. Through the real `iagcn sweep`: the table and report.html are written."""
    from tests.test_bad_input import SMALL_SET

    kw = dict(num_rois=4, dim=8, num_classes=5, embedding_dim=5, prototypes_seed=0, class_names=DOLLAR_NAMES)
    train = write_fake_cache(tmp_path / "train.h5", n=40, seed=0, **kw)
    test = write_fake_cache(tmp_path / "test.h5", n=30, seed=1, split="test", **kw)
    out = tmp_path / "sweep"
    code, err = invoke(["sweep", "--train-cache", train, "--eval-cache", test, "--presets", "mlgcn,resnet",
                        "--seeds", "0", "--epochs", "1", "--no-probe", "--bootstrap", "100", "--quiet", "--out", out,
                        *SMALL_SET])
    assert code == 0, err
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and (out / "table.md").exists()


# ---------------------------------------------------------------------------------------------- one eval per --out
def test_a_second_eval_into_one_out_replaces_the_first(runs, tmp_path):
    """Issue 20: two `eval`s into one --out left files of both. The second replaces the first's outputs (its
    per-run folders, its training curves, its scores.npz), leaves the user's own files, and lists its files in
    eval_outputs.json."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = invoke(["eval", "--run", runs["s0"], "--run", runs["s1"], "--cache", runs["test"], "--out", out,
                        "--quiet", "--device", "cpu"])
    assert code == 0, err
    assert (out / "s0" / "metrics.json").exists() and (out / "training_curves.png").exists()
    code, err = invoke(["eval", "--run", runs["s0"], "--cache", runs["test"], "--out", out, "--quiet",
                        "--device", "cpu", "--no-plots"])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        ["eval_config.json", "metrics.json", "per_class_ap.csv", "scores.npz", "tables.md", "eval_outputs.json",
         "notes.txt"])
    from iagcn.cache.format import FeatureCache

    with FeatureCache(runs["test"]) as c:
        n = c.num_images
    np.savez(tmp_path / "s.npz", scores=np.random.default_rng(0).standard_normal((n, 5)), class_names=np.array(NAMES))
    code, err = invoke(["eval", "--scores", tmp_path / "s.npz", "--targets", runs["test"], "--scores-are", "logits",
                        "--out", out])
    assert code == 0, err
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert "scores.npz" not in left and "notes.txt" in left          # --scores saves no scores: the old ones went
    manifest = json.loads((out / "eval_outputs.json").read_text())
    assert manifest["complete"] and sorted(manifest["files"]) == sorted(
        n for n in left if n not in ("notes.txt", "eval_outputs.json"))
    assert json.loads((out / "eval_config.json").read_text())["inputs"]["scores"].endswith("s.npz")


def test_an_evaluation_killed_before_its_manifest_is_still_replaced(runs, tmp_path, monkeypatch):
    """The same family after a kill: an evaluation stopped while writing (here: its plots fail) leaves a manifest
    listing every file it may have written, so the next evaluation still removes its per-run folders; another
    evaluation's folder below --out (written with its own --out) is left alone."""
    from iagcn.evaluate import evaluation as E

    out = tmp_path / "out"
    code, err = invoke(["eval", "--run", runs["s0"], "--cache", runs["test"], "--out", out / "kept", "--quiet",
                        "--no-plots"])
    assert code == 0, err

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(E, "run_plots", killed)
        code, err = invoke(["eval", "--run", runs["s0"], "--run", runs["s1"], "--cache", runs["test"], "--out", out,
                            "--quiet"])
    assert code != 0 and (out / "s0" / "metrics.json").exists()
    assert not json.loads((out / "eval_outputs.json").read_text())["complete"]
    code, err = invoke(["eval", "--run", runs["s1"], "--cache", runs["test"], "--out", out, "--quiet", "--no-plots"])
    assert code == 0, err
    assert not (out / "s0").exists() and not (out / "s1").exists()
    assert (out / "kept" / "metrics.json").exists() and (out / "metrics.json").exists()


def test_several_runs_never_share_an_output_folder(runs, tmp_path):
    """The same family: runs x/a, y/a and z/a-1 were named a-0, a-1 and a-1; the third's files overwrote the
    second's. Such a name clash is refused before anything is written; distinct names still work."""
    import shutil

    for folder, name in (("x", "a"), ("y", "a"), ("z", "a-1")):
        shutil.copytree(runs["s0"], tmp_path / folder / name)
    out = tmp_path / "out"
    code, err = invoke(["eval", "--run", tmp_path / "x" / "a", "--run", tmp_path / "y" / "a", "--run",
                        tmp_path / "z" / "a-1", "--cache", runs["test"], "--out", out, "--quiet", "--no-plots"])
    assert_one_line_error(code, err, "'a-1'", "rename")
    assert_nothing_written(out)
    code, err = invoke(["eval", "--run", tmp_path / "x" / "a", "--run", tmp_path / "y" / "a", "--cache",
                        runs["test"], "--out", out, "--quiet", "--no-plots"])
    assert code == 0, err
    assert (out / "a-0" / "metrics.json").exists() and (out / "a-1" / "metrics.json").exists()
