"""Issue 11, "Wrong results" and "Messages that name the cause": every example through the real CLI, plus other
members of each family (a wrong number with exit 0 is the worst defect; a refusal is one line, exit 2).

Families: score columns matched by class name; only this invocation's complete runs in a sweep table; duplicate
image ids; the cache contract checked on open (and before a cache is committed); a run's caches as part of its
identity; a complete cache reused only with equal inputs; reader edge cases (COCO duplicate categories, UTF-8
BOM); a validated range for every config field; messages naming the real cause.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from iagcn.cache.fake import write_fake_cache
from tests.test_bad_input import CHEAP, SMALL_SET, assert_nothing_written, assert_one_line_error, invoke
from tests.test_datasets import _voc_xml, make_coco, make_voc

KW = dict(num_rois=4, dim=8, num_classes=3, embedding_dim=5)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    return (Path(write_fake_cache(d / "train.h5", n=48, seed=0, prototypes_seed=0, **KW)),
            Path(write_fake_cache(d / "test.h5", n=24, seed=1, prototypes_seed=0, split="test", **KW)))


def reference_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP (percent) by an independent computation: VOC-style non-interpolated AP per class, ignoring -1."""
    aps = []
    for c in range(targets.shape[1]):
        keep = targets[:, c] != -1
        s, t = scores[keep, c], targets[keep, c] == 1
        if not t.any():
            continue
        order = np.argsort(-s, kind="stable")
        hits = t[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(precision[hits].mean())
    return 100.0 * float(np.mean(aps))


def eval_metrics(scores: Path, targets: Path, out: Path, *extra) -> dict:
    code, err = invoke(["eval", "--scores", scores, "--targets", targets, "--scores-are", "logits", "--no-plots",
                        "--out", out, *extra])
    assert code == 0, err
    return json.loads((out / "metrics.json").read_text())


def write_csv(path: Path, ids, names, values) -> Path:
    lines = [",".join(["image_id", *names])]
    lines += [",".join([i, *(f"{v:.6f}" for v in row)]) for i, row in zip(ids, values)]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- score columns
@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Scores and targets of 40 images x 4 classes, with ids and names (distinct classes, so a swap shows)."""
    d = tmp_path_factory.mktemp("scored")
    rng = np.random.default_rng(7)
    names = ["cat", "dog", "bird", "car"]
    t = (rng.random((40, 4)) < np.array([0.5, 0.2, 0.35, 0.1])).astype(np.int8)
    t[0] = 1
    s = rng.standard_normal((40, 4)) + np.array([2.0, 0.2, 1.0, 0.0]) * t
    ids = [f"im{k:03d}" for k in range(40)]
    np.savez(d / "targets.npz", labels=t, image_ids=np.array(ids), class_names=np.array(names))
    return {"dir": d, "names": names, "t": t, "s": s, "ids": ids, "targets": d / "targets.npz",
            "ref": reference_map(s, t)}


@pytest.mark.parametrize("fmt", ["csv", "npz"])
def test_eval_scores_matches_columns_by_class_name(fmt, scored, tmp_path):
    """The same scores with reordered (named) columns and rows give the same numbers (issue: 41.6 vs 40.2)."""
    perm_c, perm_r = [2, 0, 3, 1], np.random.default_rng(1).permutation(40)
    names = [scored["names"][c] for c in perm_c]
    values = scored["s"][perm_r][:, perm_c]
    ids = [scored["ids"][r] for r in perm_r]
    if fmt == "csv":
        path = write_csv(tmp_path / "s.csv", ids, names, values)
    else:
        path = tmp_path / "s.npz"
        np.savez(path, scores=values, image_ids=np.array(ids), class_names=np.array(names))
    straight = write_csv(tmp_path / "straight.csv", scored["ids"], scored["names"], scored["s"])
    m_perm = eval_metrics(path, scored["targets"], tmp_path / "o1")
    m_straight = eval_metrics(straight, scored["targets"], tmp_path / "o2")
    assert m_perm["metrics"]["mAP"] == pytest.approx(scored["ref"], abs=1e-3)
    assert m_perm["metrics"] == pytest.approx(m_straight["metrics"], abs=1e-6)
    assert m_perm["per_class_ap"] == pytest.approx(m_straight["per_class_ap"], abs=1e-6)


def test_eval_scores_aligns_names_against_a_cache_and_class_names_option(caches, tmp_path):
    """Targets from a cache (names from its class list); scores named in another order; --class-names for a
    positional .npy: all three give the numbers of the aligned scores."""
    from iagcn.cache.format import FeatureCache

    with FeatureCache(caches[1]) as c:
        t, ids, names = c.labels(), c.image_ids(), c.class_names
    s = np.random.default_rng(3).standard_normal(t.shape) + 1.5 * (t == 1)
    ref = reference_map(s, t)
    rev = names[::-1]
    named = write_csv(tmp_path / "named.csv", ids, rev, s[:, ::-1])
    assert eval_metrics(named, caches[1], tmp_path / "a")["metrics"]["mAP"] == pytest.approx(ref, abs=1e-3)
    np.save(tmp_path / "pos.npy", s[:, ::-1])
    np.save(tmp_path / "t.npy", t[:, ::-1])
    m = eval_metrics(tmp_path / "pos.npy", tmp_path / "t.npy", tmp_path / "b", "--class-names", ",".join(rev))
    assert m["metrics"]["mAP"] == pytest.approx(ref, abs=1e-3)
    ap0 = reference_map(s[:, [0]], t[:, [0]])                  # names follow their columns
    assert m["per_class_ap"][names[0]] == pytest.approx(ap0, abs=1e-3)


@pytest.mark.parametrize("kind", ["other class", "missing class", "repeated class", "class-names disagree",
                                  "positional width"])
def test_eval_scores_refuses_column_mismatches(kind, scored, tmp_path):
    names, values = list(scored["names"]), scored["s"]
    extra = []
    if kind == "other class":
        names[1] = "horse"
    elif kind == "missing class":
        names, values = names[:3], values[:, :3]
    elif kind == "repeated class":
        names[1] = names[0]
    elif kind == "class-names disagree":
        extra = ["--class-names", "a,b,c,d"]
    path = write_csv(tmp_path / "s.csv", scored["ids"], names, values)
    if kind == "positional width":
        np.save(tmp_path / "s.npy", values[:, :3])
        path = tmp_path / "s.npy"
    code, err = invoke(["eval", "--scores", path, "--targets", scored["targets"], "--scores-are", "logits",
                        "--no-plots", "--out", tmp_path / "out", *extra])
    assert_one_line_error(code, err, "--" if kind == "class-names disagree" else path.name)
    assert_nothing_written(tmp_path / "out")


def test_eval_scores_warns_when_rows_are_matched_by_position(scored, tmp_path):
    """Ids in the scores, none in the targets: the rows can only be matched by position, and the user is told."""
    np.save(tmp_path / "t.npy", scored["t"])
    path = write_csv(tmp_path / "s.csv", scored["ids"], scored["names"], scored["s"])
    code, err = invoke(["eval", "--scores", path, "--targets", tmp_path / "t.npy", "--scores-are", "logits",
                        "--no-plots", "--class-names", ",".join(scored["names"])])  # t.npy's column order
    assert code == 0 and "t.npy carries no image ids" in err and "by position" in err, err


# ---------------------------------------------------------------------------------------------- duplicate ids
@pytest.mark.parametrize("where", ["scores csv", "scores npz", "targets npz", "targets csv"])
def test_duplicate_image_ids_are_refused_in_score_files(where, scored, tmp_path):
    """One id 30 times gave mAP 54.0 instead of 40.2: a repeated id is refused in any file that names ids."""
    ids = list(scored["ids"])
    ids[1:31] = [ids[0]] * 30
    scores, targets = tmp_path / "s.csv", scored["targets"]
    if where == "scores csv":
        write_csv(scores, ids, scored["names"], scored["s"])
    elif where == "scores npz":
        scores = tmp_path / "s.npz"
        np.savez(scores, scores=scored["s"], image_ids=np.array(ids), class_names=np.array(scored["names"]))
    else:
        write_csv(scores, scored["ids"], scored["names"], scored["s"])
        if where == "targets npz":
            targets = tmp_path / "t.npz"
            np.savez(targets, labels=scored["t"], image_ids=np.array(ids))
        else:
            targets = write_csv(tmp_path / "t.csv", ids, scored["names"], scored["t"])
    bad = scores if where.startswith("scores") else targets
    code, err = invoke(["eval", "--scores", scores, "--targets", targets, "--scores-are", "logits", "--no-plots"])
    assert_one_line_error(code, err, bad.name, "duplicate image id", repr(ids[0]))


def test_duplicate_ids_in_split_files_and_coco_images_are_refused(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)], "b": [("cat", 0)]})
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\na\n")
    code, err = invoke(["extract", "--dataset", "voc", "--root", root, "--split", "trainval",
                        "--out", tmp_path / "o" / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "trainval.txt", "duplicate image id", "'a'")
    coco = make_coco(tmp_path / "coco")
    ann = coco / "annotations" / "instances_val2014.json"
    doc = json.loads(ann.read_text())
    doc["images"].append(dict(doc["images"][0], file_name="COCO_val2014_000000000099.jpg"))
    ann.write_text(json.dumps(doc))
    code, err = invoke(["extract", "--dataset", "coco", "--root", coco, "--split", "val2014",
                        "--out", tmp_path / "o" / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "instances_val2014.json", "duplicate image id", "7")
    assert_nothing_written(tmp_path / "o")


def test_cache_writer_never_commits_duplicate_ids(tmp_path):
    from iagcn.cache.writer import CacheWriter
    from iagcn.errors import UserError

    out = tmp_path / "c.h5"
    w = CacheWriter(out, num_images=2, num_rois=1, feature_dim=2, num_classes=1, embedding_dim=1,
                    attrs={"class_names": ["a"], "dataset": "x", "split": "y"})
    w.write_rows(0, {"global": np.zeros((2, 2), np.float16), "regions": np.zeros((2, 1, 2), np.float16),
                     "boxes": np.zeros((2, 1, 4), np.float32), "box_scores": np.zeros((2, 1), np.float32),
                     "box_valid": np.ones((2, 1), bool), "labels": np.ones((2, 1), np.int8),
                     "image_ids": ["same", "same"], "image_sizes": np.ones((2, 2), np.int32)})
    w.set_label_embeddings(np.ones((1, 1), np.float32), source="test")
    with pytest.raises(UserError, match="duplicate image id 'same'"):
        w.commit()
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- cache contract
def _damage(kind: str, good: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / f"{kind.replace(' ', '-')}.h5"
    shutil.copy(good, bad)
    with h5py.File(bad, "r+") as f:
        def replace(name, data):
            del f[name]
            f.create_dataset(name, data=data)

        labels = f["labels"][...]
        if kind == "label 2":
            labels[3, 1] = 2
            f["labels"][...] = labels
            return bad, ["labels", "found 2", "row 3"]
        if kind == "label 5":
            labels[0, 0] = 5
            f["labels"][...] = labels
            return bad, ["labels", "found 5"]
        if kind == "int16 labels (257)":
            wide = labels.astype(np.int16)
            wide[2, 2] = 257
            replace("labels", wide)
            return bad, ["labels", "int16", "int8"]
        if kind == "float labels (0.5)":
            replace("labels", labels.astype(np.float32) * 0.5)
            return bad, ["labels", "float32", "int8"]
        if kind == "duplicate id":
            ids = f["image_ids"][...]
            ids[9] = ids[4]
            f["image_ids"][...] = ids
            return bad, ["duplicate image id", "rows 4 and 9"]
        if kind == "float64 features":
            replace("global", f["global"][...].astype(np.float64))
            return bad, ["global", "float64", "float16"]
        if kind == "regions N differs from boxes":
            replace("boxes", np.zeros((f["boxes"].shape[0], 3, 4), np.float32))
            return bad, ["boxes", "N=3"]
        if kind == "regions D differs from global":
            replace("regions", np.zeros((f["regions"].shape[0], 4, 6), np.float16))
            return bad, ["regions", "D=6"]
        if kind == "boxes not 4 wide":
            replace("boxes", np.zeros((f["boxes"].shape[0], 4, 5), np.float32))
            return bad, ["boxes", "must be 4"]
        if kind == "1-D labels":
            replace("labels", labels[:, 0].copy())
            return bad, ["labels", "dimensions"]
        if kind == "rows differ":
            replace("box_valid", f["box_valid"][:-2])
            return bad, ["box_valid", "rows"]
        if kind == "embeddings NaN":
            emb = f["label_embeddings"][...]
            emb[1, 0] = np.nan
            f["label_embeddings"][...] = emb
            return bad, ["label_embeddings", "NaN", "class01"]
        if kind == "embeddings rows differ from classes":
            replace("label_embeddings", np.zeros((2, 5), np.float32))
            return bad, ["label_embeddings", "(2, 5)"]
        if kind == "class names repeated":
            f.attrs["class_names"] = json.dumps(["class00", "class00", "class02"])
            return bad, ["class_names", "class00"]
        if kind == "class names count":
            f.attrs["class_names"] = json.dumps(["class00", "class01"])
            return bad, ["class_names", "2 entries"]
        if kind == "embeddings source not JSON":
            f["label_embeddings"].attrs["source"] = "{oops"
            return bad, ["label_embeddings", "source", "not JSON"]
        if kind == "num_rois attribute":
            f.attrs["num_rois"] = json.dumps(7)
            return bad, ["num_rois", "N=4"]
    raise AssertionError(kind)


CONTRACT = ["label 2", "label 5", "int16 labels (257)", "float labels (0.5)", "duplicate id", "float64 features",
            "regions N differs from boxes", "regions D differs from global", "boxes not 4 wide", "1-D labels",
            "rows differ", "embeddings NaN", "embeddings rows differ from classes", "class names repeated",
            "class names count", "num_rois attribute", "embeddings source not JSON"]


@pytest.mark.parametrize("role", ["train", "eval"])
@pytest.mark.parametrize("kind", CONTRACT)
def test_caches_are_validated_on_open_before_training(kind, role, caches, tmp_path):
    """Each problem is refused in one line naming the file, before training starts: for the evaluation cache
    too (it used to be found after the last epoch)."""
    bad, needles = _damage(kind, caches[0] if role == "train" else caches[1], tmp_path)
    tr, te = (bad, caches[1]) if role == "train" else (caches[0], bad)
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", tr, "--eval-cache", te, "--preset", "mlgcn", "--epochs", "1",
                        "--quiet", "--out", run, *SMALL_SET])
    assert_one_line_error(code, err, bad.name, *needles)
    assert_nothing_written(run)


@pytest.mark.parametrize("kind", ["label 2", "duplicate id", "float labels (0.5)"])
def test_cache_targets_and_info_refuse_invalid_caches(kind, caches, scored, tmp_path):
    bad, needles = _damage(kind, caches[1], tmp_path)
    code, err = invoke(["info", bad])
    assert_one_line_error(code, err, bad.name, *needles)
    np.save(tmp_path / "s.npy", np.zeros((24, 3)))
    code, err = invoke(["eval", "--scores", tmp_path / "s.npy", "--targets", bad, "--scores-are", "logits"])
    assert_one_line_error(code, err, bad.name, *needles)


# ---------------------------------------------------------------------------------------------- run identity
@pytest.fixture(scope="module")
def mlgcn_run(caches, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mlgcn"
    code, err = invoke(["train", "--train-cache", caches[0], "--eval-cache", caches[1], "--preset", "mlgcn",
                        "--epochs", "2", "--quiet", "--out", run, *SMALL_SET])
    assert code == 0, err
    return run


@pytest.mark.parametrize("which", ["--train-cache", "--eval-cache"])
def test_resume_refuses_another_cache(which, mlgcn_run, caches, tmp_path):
    """Same classes and shapes, other images: --resume used to continue on it (and config.json named only it)."""
    run = tmp_path / "run"
    shutil.copytree(mlgcn_run, run)
    (run / "metrics.json").unlink()
    other = write_fake_cache(tmp_path / "other.h5", n=48, seed=5, prototypes_seed=0, **KW)
    before = (run / "config.json").read_text()
    code, err = invoke(["train", "--resume", run, which, other, "--quiet"])
    assert_one_line_error(code, err, "--resume", which, "other.h5")
    assert (run / "config.json").read_text() == before and not (run / "metrics.json").exists()
    moved = tmp_path / "moved.h5"                    # the same cache under another path is fine
    shutil.copy(caches[0] if which == "--train-cache" else caches[1], moved)
    code, err = invoke(["train", "--resume", run, which, moved, "--quiet"])
    assert code == 0, err


JSON_DAMAGE = ["not JSON", "a list", "config not an object"]
VALUE_DAMAGE = ["negative seed", "unknown field", "wrong type"]


# eval --run and predict take the head's config from the checkpoint; config.json gives them paths and the
# extraction record, so only a config.json that cannot be read concerns them
@pytest.mark.parametrize("command,damage", [("resume", d) for d in JSON_DAMAGE + VALUE_DAMAGE]
                         + [(c, d) for c in ("eval", "predict") for d in JSON_DAMAGE])
def test_bad_config_json_is_one_line_naming_the_file(command, damage, mlgcn_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(mlgcn_run, run)
    path = run / "config.json"
    rec = json.loads(path.read_text())
    text = {"not JSON": "{\"config\": {", "a list": "[1, 2]", "config not an object": json.dumps({"config": 3})}
    if damage in text:
        path.write_text(text[damage])
    else:
        key, value = {"negative seed": ("seed", -1), "unknown field": ("bogus", 1),
                      "wrong type": ("epochs", "many")}[damage]
        rec["config"][key] = value
        path.write_text(json.dumps(rec))
    if command == "resume":
        (run / "metrics.json").unlink()
        args = ["train", "--resume", run, "--quiet"]
    elif command == "eval":
        args = ["eval", "--run", run, "--no-plots", "--quiet"]
    else:
        img = tmp_path / "x.jpg"
        from PIL import Image

        Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
        args = ["predict", "--run", run, img]
    code, err = invoke(args)
    assert_one_line_error(code, err, "config.json")


def test_compare_refuses_a_run_listed_twice_on_one_side(mlgcn_run, caches):
    """--a R --a R would count one run as two seeds (and get a test across seeds)."""
    code, err = invoke(["compare", "--a", mlgcn_run, "--a", str(mlgcn_run) + "/", "--b", mlgcn_run, "--cache",
                        caches[1]])
    assert_one_line_error(code, err, "side A", "duplicate run")


def test_sweep_refuses_repeated_seeds_and_presets(caches, tmp_path):
    for args, needle in ((["--seeds", "0,0"], "--seeds"), (["--presets", "mlgcn,resnet,mlgcn"], "--presets")):
        out = tmp_path / "sweep"
        code, err = invoke(["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--epochs", "1",
                            "--quiet", "--out", out, *args])
        assert_one_line_error(code, err, needle, "more than once")
        assert_nothing_written(out)


# ---------------------------------------------------------------------------------------------- sweep tables
def _plant_run(src: Path, dst: Path, *, seed: int, complete: bool, scores_seed: int) -> None:
    """A run folder that must never enter the table: src's files with another seed and very different scores."""
    shutil.copytree(src, dst)
    rec = json.loads((dst / "config.json").read_text())
    rec["config"]["seed"] = seed
    (dst / "config.json").write_text(json.dumps(rec))
    for name in ("best.pt", "last.pt"):   # its checkpoints say the same (a config.json that disagrees is refused)
        if (dst / name).exists():
            import torch

            state = torch.load(dst / name, map_location="cpu", weights_only=True)
            state["config"]["seed"] = seed
            torch.save(state, dst / name)
    with np.load(dst / "scores.npz") as z:
        ids, shape = z["image_ids"], z["scores"].shape
    np.savez(dst / "scores.npz", scores=np.random.default_rng(scores_seed).standard_normal(shape).astype(np.float32),
             image_ids=ids)
    if not complete:
        (dst / "metrics.json").unlink()


def test_sweep_table_holds_only_this_invocations_complete_runs(caches, tmp_path):
    """An interrupted mlgcn-s1 (no metrics.json) and a complete resnet-s7 of another invocation sit in --out;
    a sweep of seed 0 must build its table, Δ and p-values from mlgcn-s0 and resnet-s0 alone."""
    out = tmp_path / "sweep"
    base = ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn,resnet",
            "--seeds", "0", "--epochs", "2", "--quiet", "--out", out, "--bootstrap", "200", *SMALL_SET]
    code, err = invoke(base)
    assert code == 0, err
    _plant_run(out / "mlgcn-s0", out / "mlgcn-s1", seed=1, complete=False, scores_seed=1)
    _plant_run(out / "resnet-s0", out / "resnet-s7", seed=7, complete=True, scores_seed=2)
    (out / "table.md").unlink()
    code, err = invoke(base)                              # both runs complete: skipped, the table rebuilt
    assert code == 0, err
    m = {p: json.loads((out / f"{p}-s0" / "metrics.json").read_text())["metrics"]["mAP"] for p in ("mlgcn", "resnet")}
    ablation = json.loads((out / "ablation.json").read_text())
    assert ablation["run_dirs"] == {"linear-probe": [str(out / "linear-probe-s0")],    # the sweep's reference row
                                    "mlgcn": [str(out / "mlgcn-s0")], "resnet": [str(out / "resnet-s0")]}
    delta = ablation["deltas"]["resnet"]["metrics"]["mAP"]["diff"]
    assert delta == pytest.approx(m["resnet"] - m["mlgcn"], abs=1e-3)
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| resnet"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1" and cells[2].startswith(f"{m['resnet']:.1f}")
    assert cells[-1].startswith(f"{delta:+.1f}") and "p (seeds)" not in table   # no p-value for 1 seed
    # compare --sweep (no invocation to go by): every COMPLETE run, never the interrupted one
    code, err = invoke(["compare", "--sweep", out, "--baseline", "mlgcn", "--cache", caches[1], "--resamples", "100",
                        "--out", tmp_path / "cmp"])
    assert code == 0, err
    assert "mlgcn-s1" in err and "left out" in err
    rec = json.loads((tmp_path / "cmp" / "ablation.json").read_text())
    assert rec["comparisons"]["resnet"]["a"] == [str(out / "mlgcn-s0")]
    assert rec["comparisons"]["resnet"]["b"] == [str(out / "resnet-s0"), str(out / "resnet-s7")]
    assert rec["comparisons"]["resnet"]["seed_tests"] is None   # 1 baseline seed: no test across seeds
    code, err = invoke(["compare", out / "mlgcn-s1", out / "resnet-s0", "--cache", caches[1]])
    assert_one_line_error(code, err, "mlgcn-s1", "not complete")


def test_sweep_refuses_to_reuse_a_complete_run_of_another_cache(caches, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--eval-cache", caches[1], "--presets", "resnet", "--seeds", "0", "--epochs", "1", "--quiet",
            "--out", out, *SMALL_SET]
    code, err = invoke([*args, "--train-cache", caches[0]])
    assert code == 0, err
    other = write_fake_cache(tmp_path / "other.h5", n=48, seed=9, prototypes_seed=0, **KW)
    code, err = invoke([*args, "--train-cache", other])
    assert_one_line_error(code, err, "resnet-s0", "--train-cache", "other.h5")


# ---------------------------------------------------------------------------------------------- extraction inputs
def _extract(root: Path, out: Path) -> tuple[int, str]:
    return invoke(["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", out, *CHEAP])


def test_complete_cache_is_not_reused_when_split_or_labels_changed(tmp_path):
    from iagcn.cache.format import FeatureCache

    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)], "b": [("cat", 0)], "c": [("dog", 0)]})
    out = tmp_path / "c.h5"
    code, err = _extract(root, out)
    assert code == 0, err
    code, err = _extract(root, out)
    assert code == 0 and "nothing to do" in err
    (root / "Annotations" / "b.xml").write_text(_voc_xml([("bird", 0), ("cat", 1)]))   # labels changed
    code, err = _extract(root, out)
    assert code == 0 and "nothing to do" not in err and "labels" in err, err
    with FeatureCache(out) as c:
        row = c.labels()[c.image_ids().index("b")]
        assert row[c.class_names.index("bird")] == 1 and row[c.class_names.index("cat")] == -1
    shutil.copy(root / "JPEGImages" / "a.jpg", root / "JPEGImages" / "d.jpg")             # the split file grew
    shutil.copy(root / "Annotations" / "a.xml", root / "Annotations" / "d.xml")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\nd\n")
    code, err = _extract(root, out)
    assert code == 0 and "nothing to do" not in err and "image ids" in err, err
    with FeatureCache(out) as c:
        assert c.image_ids() == ["a", "b", "c", "d"]
        assert c.attrs["inputs"]["rows"] == [0, 4]
        before = c.read("global").copy()
    from PIL import Image

    Image.new("RGB", (90, 70), (10, 200, 30)).save(root / "JPEGImages" / "c.jpg")          # a picture replaced
    code, err = _extract(root, out)
    assert code == 0 and "image files" in err, err
    with FeatureCache(out) as c:
        after = c.read("global")
        assert c.read("image_sizes")[2].tolist() == [70, 90] and not np.array_equal(after[2], before[2])


# ---------------------------------------------------------------------------------------------- readers
@pytest.mark.parametrize("kind", ["id", "name"])
def test_coco_duplicate_categories_are_refused(kind, tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = root / "annotations" / "instances_val2014.json"
    doc = json.loads(ann.read_text())
    doc["categories"].append({"id": 18, "name": "cat"} if kind == "id" else {"id": 44, "name": "dog"})
    ann.write_text(json.dumps(doc))
    code, err = invoke(["extract", "--dataset", "coco", "--root", root, "--split", "val2014",
                        "--out", tmp_path / "o" / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "instances_val2014.json", f"duplicate category {kind}", "18" if kind == "id"
                          else "'dog'")
    assert_nothing_written(tmp_path / "o")


def test_utf8_bom_is_stripped_from_split_files_csvs_and_class_lists(scored, tmp_path):
    from iagcn.cache.format import FeatureCache

    bom = "\ufeff"
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)], "b": [("cat", 0)]})
    split = root / "ImageSets" / "Main" / "trainval.txt"
    split.write_text(bom + "a\nb\n", encoding="utf-8")
    code, err = _extract(root, tmp_path / "voc.h5")
    assert code == 0, err
    with FeatureCache(tmp_path / "voc.h5") as c:
        assert c.image_ids() == ["a", "b"]
    # csv dataset with a BOM before its header, and a --classes file with one
    (tmp_path / "imgs").mkdir()
    for k in ("x", "y"):
        shutil.copy(root / "JPEGImages" / "a.jpg", tmp_path / "imgs" / f"{k}.jpg")
    (tmp_path / "d.csv").write_text(bom + "image,labels\nx.jpg,cat\ny.jpg,dog cat\n", encoding="utf-8")
    (tmp_path / "classes.txt").write_text(bom + "cat\ndog\n", encoding="utf-8")
    code, err = invoke(["extract", "--dataset", "csv", "--root", tmp_path / "imgs", "--split", "d",
                        "--csv", tmp_path / "d.csv", "--classes", tmp_path / "classes.txt",
                        "--out", tmp_path / "csv.h5", *CHEAP])
    assert code == 0, err
    with FeatureCache(tmp_path / "csv.h5") as c:
        assert c.class_names == ["cat", "dog"] and c.image_ids() == ["x.jpg", "y.jpg"]
        np.testing.assert_array_equal(c.labels(), [[1, 0], [1, 1]])
    # a scores CSV whose header starts with a BOM: the id column and class names are still recognised
    path = write_csv(tmp_path / "s.csv", scored["ids"], scored["names"], scored["s"])
    path.write_text(bom + path.read_text(), encoding="utf-8")
    m = eval_metrics(path, scored["targets"], tmp_path / "ev")
    assert sorted(m["per_class_ap"]) == sorted(scored["names"])
    assert m["metrics"]["mAP"] == pytest.approx(scored["ref"], abs=1e-3)


# ---------------------------------------------------------------------------------------------- config ranges
@pytest.mark.parametrize("args,needles", [
    (["--set", "lr_gamma=-1"], ["lr_gamma=-1"]),
    (["--set", "gcn_widths=0"], ["gcn_widths=0"]),
    (["--set", "region_widths=8,-2"], ["region_widths", "-2"]),
    (["--set", "adjacency_eps=-1"], ["adjacency_eps=-1"]),
    (["--set", "tau=nan"], ["tau=nan", "finite"]),
    (["--set", "beta=nan"], ["beta=nan", "finite"]),
    (["--set", "lr=nan"], ["lr=nan"]),
    (["--set", "p=1.5"], ["p=1.5"]),
    (["--set", "momentum=1"], ["momentum=1"]),
    (["--set", "eval_batch_size=0"], ["eval_batch_size=0"]),
    (["--set", "stream_block_rows=0"], ["stream_block_rows=0"]),
    (["--set", "grad_clip=-1"], ["grad_clip=-1"]),
    (["--set", "weight_decay=inf"], ["weight_decay=inf"]),
    (["--set", "early_stop_patience=-1"], ["early_stop_patience=-1"]),
    (["--threads", "-3"], ["--threads", "-3"]),
    (["--seed", "-1"], ["--seed", "-1"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--memory-budget-gib", "nan"], ["--memory-budget-gib"]),
])
def test_train_refuses_every_out_of_range_field_before_anything_runs(args, needles, caches, tmp_path):
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", caches[0], "--eval-cache", caches[1], "--epochs", "1", "--quiet",
                        "--out", run, *SMALL_SET, *args])
    assert_one_line_error(code, err, *needles)
    assert "lower --lr" not in err
    assert_nothing_written(run)


def test_sweep_refuses_a_negative_seed(caches, tmp_path):
    out = tmp_path / "sweep"
    code, err = invoke(["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--epochs", "1", "--quiet",
                        "--out", out, "--seeds", "0,-2"])
    assert_one_line_error(code, err, "seed", "-2")
    assert_nothing_written(out)


@pytest.mark.parametrize("option,value", [("--num-rois", "100000"), ("--threads", "-3"), ("--workers", "1000"),
                                          ("--proposer-image-size", "10"), ("--image-size", "100000"),
                                          ("--set", "roi_output_size=0"), ("--set", "roi_sampling_ratio=-1")])
def test_extract_refuses_out_of_range_values(option, value, tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)]})
    args = ["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", tmp_path / "o" / "c.h5",
            *CHEAP]
    if option == "--set":
        args += [option, value]
        option, value = value.split("=")
    elif option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    code, err = invoke(args)
    assert_one_line_error(code, err, option, value)
    assert_nothing_written(tmp_path / "o")


@pytest.mark.parametrize("args,needle", [(["--seed", "-1"], "--seed"), (["--workers", "-3"], "--workers"),
                                         (["--train", "0"], "--train")])
def test_synth_refuses_out_of_range_values(args, needle, tmp_path):
    code, err = invoke(["synth", "--out", tmp_path / "s", "--train", "4", "--test", "2", "--quiet", *args])
    assert_one_line_error(code, err, needle)
    assert_nothing_written(tmp_path / "s")


@pytest.mark.parametrize("args,needle", [(["--threshold", "1.5"], "--threshold"), (["--top-k", "-1"], "--top-k"),
                                         (["--threshold", "nan"], "--threshold")])
def test_eval_refuses_out_of_range_values(args, needle, scored, tmp_path):
    path = write_csv(tmp_path / "s.csv", scored["ids"], scored["names"], scored["s"])
    code, err = invoke(["eval", "--scores", path, "--targets", scored["targets"], "--scores-are", "logits",
                        "--out", tmp_path / "o", *args])
    assert_one_line_error(code, err, needle)
    assert_nothing_written(tmp_path / "o")


@pytest.mark.parametrize("args,needle", [(["--ci", "1.5"], "--ci"), (["--resamples", "0"], "--resamples"),
                                         (["--seed", "-4"], "--seed")])
def test_compare_refuses_out_of_range_values(args, needle, mlgcn_run, caches):
    code, err = invoke(["compare", mlgcn_run, mlgcn_run, "--cache", caches[1], *args])
    assert_one_line_error(code, err, needle)


def test_every_config_field_has_a_range():
    from iagcn.evaluate.evaluation import EVAL_RANGES, EvalConfig
    from iagcn.extract.config import EXTRACT_RANGES, ExtractConfig
    from iagcn.train.config import TRAIN_RANGES, TrainConfig
    from iagcn.validation import check_table_covers

    from iagcn.train.config import HeadConfig

    for cls, table in ((TrainConfig, TRAIN_RANGES), (ExtractConfig, EXTRACT_RANGES), (EvalConfig, EVAL_RANGES),
                       (HeadConfig, TRAIN_RANGES)):     # the model's config is a validated TrainConfig's subset
        assert check_table_covers(cls, table) == [], cls.__name__
    for cls, table in ((TrainConfig, TRAIN_RANGES), (ExtractConfig, EXTRACT_RANGES), (EvalConfig, EVAL_RANGES)):
        assert set(table) <= {f.name for f in __import__("dataclasses").fields(cls)}, cls.__name__


# ---------------------------------------------------------------------------------------------- messages
def test_divergence_message_names_inputs_before_blaming_the_learning_rate(caches):
    """NaN label embeddings, NaN features or an already-NaN adjacency are named; only NaN parameters after updates
    give "lower --lr"."""
    import torch

    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.loop import divergence_cause
    from iagcn.train.run import build_model

    data = CacheData(caches[0])
    cfg = config_for_preset("iagcn", gcn_widths=(8,), region_widths=(8, 8, 8))
    meta = {"num_classes": data.C, "feature_dim": data.D, "num_rois": data.N, "embedding_dim": 5,
            "class_names": data.class_names}
    batch = next(data.batches(np.arange(4), batch_size=4))

    def model():
        return build_model(cfg, meta, label_embeddings=np.ones((data.C, 5), np.float32),
                           A_S=np.eye(data.C, dtype=np.float32))

    parts = {"loss": float("nan")}
    m = model()
    m.label_embeddings[0, 0] = float("nan")
    msg = divergence_cause(m, batch, parts, config=cfg, epoch=0, step=0, path=data.path)
    assert "label embeddings" in msg and "lower --lr" not in msg
    batch.x[1, 2] = float("inf")
    msg = divergence_cause(model(), batch, parts, config=cfg, epoch=0, step=0, path=data.path)
    assert "train.h5" in msg and "global features" in msg and "lower --lr" not in msg
    batch = next(data.batches(np.arange(4), batch_size=4))
    m = model()
    with torch.no_grad():
        next(m.parameters()).fill_(float("nan"))
    msg = divergence_cause(m, batch, parts, config=cfg, epoch=3, step=2, path=data.path)
    assert "lower --lr" in msg and "epoch 4" in msg
    msg = divergence_cause(model(), batch, parts, config=cfg, epoch=0, step=0, path=data.path)
    assert "first step" in msg and "lower --lr" not in msg
    batch.valid[2] = False                                            # an image without any valid region
    msg = divergence_cause(model(), batch, parts, config=cfg, epoch=1, step=0, path=data.path,
                           image_ids=data.image_ids)
    assert "no valid region" in msg and repr(data.image_ids[int(batch.index[2])]) in msg and "lower --lr" not in msg


def test_nan_label_embeddings_are_named_not_blamed_on_the_learning_rate(caches, tmp_path):
    """The issue's cases: NaN label embeddings (in the cache, or a --label-embeddings file) and beta=nan."""
    bad, _ = _damage("embeddings NaN", caches[0], tmp_path)
    emb = tmp_path / "emb.npy"
    np.save(emb, np.full((3, 5), np.nan, np.float32))
    for args, needle in (([bad, caches[1]], "label_embeddings"),
                         ([caches[0], caches[1], "--label-embeddings", emb], "emb.npy"),
                         ([caches[0], caches[1], "--set", "beta=nan"], "beta=nan")):
        run = tmp_path / "run"
        code, err = invoke(["train", "--train-cache", args[0], "--eval-cache", args[1], *args[2:], "--epochs", "1",
                            "--quiet", "--out", run, *SMALL_SET])
        assert_one_line_error(code, err, needle)
        assert "lower --lr" not in err and "diverged" not in err
        assert_nothing_written(run)


@pytest.mark.parametrize("change", [{"dim": 12}, {"num_rois": 6}, {"num_classes": 4}])
@pytest.mark.parametrize("command", ["eval", "explain"])
def test_eval_and_explain_refuse_a_cache_the_run_cannot_read(command, change, mlgcn_run, tmp_path):
    """A cache of another feature dim / ROI count / class list: one line naming the cache, never a raw matmul error."""
    other = write_fake_cache(tmp_path / "other.h5", n=24, seed=1, split="test", **{**KW, **change})
    out = tmp_path / "out"
    if command == "eval":
        args = ["eval", "--run", mlgcn_run, "--cache", other, "--out", out, "--no-plots", "--quiet"]
    else:
        args = ["explain", "--run", mlgcn_run, "--cache", other, "--image-id", "test_000000", "--out", out]
    code, err = invoke(args)
    assert_one_line_error(code, err, "other.h5")
    assert not out.exists()
