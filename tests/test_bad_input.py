"""Every bad input of issue 6 through the real CLI: a non-zero exit, ONE line naming the file or option, and no
output file appearing. Most cases run in-process (click's CliRunner, the same `iagcn.cli.main`); a few run in a
subprocess to prove that no traceback reaches the user."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cache.fake import write_fake_cache
from iagcn.cli import main
from tests.conftest import run_cli
from tests.test_datasets import _voc_xml, make_coco, make_voc

CHEAP = ["--weights", "none", "--image-size", "64", "--num-rois", "4", "--workers", "0", "--device", "cpu",
         "--batch-size", "2", "--block-rows", "4", "--quiet"]
SMALL_SET = ["--set", "gcn_widths=8,8", "--set", "region_widths=8,8,8", "--threads", "1"]


def invoke(args: list) -> tuple[int, str]:
    """Run `iagcn ARGS` in-process; return (exit code, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def assert_one_line_error(code: int, err: str, *needles: str, exit_code: int = 2) -> None:
    lines = err.strip().splitlines()
    assert code == exit_code, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def assert_nothing_written(folder: Path) -> None:
    """The output folder was not even created (no cache, no part folder, no temporary, no lock)."""
    assert not folder.exists(), sorted(p.name for p in folder.iterdir())


# -- stage one: datasets, images, annotations, options -------------------------------------------------------
def _voc(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)], "b": [("cat", 0)], "c": [("dog", 0), ("cat", 1)]})


def _break_voc(kind: str, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    """A VOC dataset broken one way -> (root, extra CLI args, words the message must contain)."""
    root = _voc(tmp_path)
    jpg, xml = root / "JPEGImages", root / "Annotations"
    split_file = root / "ImageSets" / "Main" / "trainval.txt"
    if kind == "missing root":
        return tmp_path / "nope" / "VOC2007", [], ["nope"]
    if kind == "wrong layout (parent folder)":
        return root.parent, [], ["VOC2007"]
    if kind == "wrong layout (no Annotations)":
        shutil.rmtree(xml)
        return root, [], ["Annotations"]
    if kind == "empty split":
        split_file.write_text("")
        return root, [], ["trainval"]
    if kind == "split typo":
        return root, ["--split", "trainvall"], ["trainvall", "trainval"]
    if kind == "missing image":
        (jpg / "b.jpg").unlink()
        return root, [], ["b.jpg"]
    if kind == "truncated image":
        (jpg / "b.jpg").write_bytes((jpg / "b.jpg").read_bytes()[:120])
        return root, [], ["b.jpg"]
    if kind == "zero-byte image":
        (jpg / "b.jpg").write_bytes(b"")
        return root, [], ["b.jpg"]
    if kind == "non-image file":
        (jpg / "b.jpg").write_text("this is not a picture\n")
        return root, [], ["b.jpg"]
    if kind == "XML that does not parse":
        (xml / "c.xml").write_text("<annotation><object><name>dog</name>")
        return root, [], ["c.xml"]
    if kind == "XML lacking fields":
        (xml / "c.xml").write_text("<annotation><object><difficult>0</difficult></object></annotation>")
        return root, [], ["c.xml"]
    if kind == "unknown class name":
        (xml / "c.xml").write_text(_voc_xml([("unicorn", 0)]))
        return root, [], ["unicorn"]
    if kind == "image id escaping the root":
        split_file.write_text("a\n../../../etc/passwd\n")
        return root, [], ["outside the dataset folder"]
    raise AssertionError(kind)


VOC_CASES = ["missing root", "wrong layout (parent folder)", "wrong layout (no Annotations)", "empty split",
             "split typo", "missing image", "truncated image", "zero-byte image", "non-image file",
             "XML that does not parse", "XML lacking fields", "unknown class name", "image id escaping the root"]


@pytest.mark.parametrize("kind", VOC_CASES)
def test_extract_refuses_bad_voc_input(kind, tmp_path):
    root, extra, needles = _break_voc(kind, tmp_path)
    out_dir = tmp_path / "out"
    args = ["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", out_dir / "c.h5", *CHEAP]
    if "--split" in extra:
        args[args.index("--split") + 1] = extra[1]
    code, err = invoke(args)
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(out_dir)


def test_extract_refuses_coco_unknown_category_ids(tmp_path):
    root = make_coco(tmp_path / "coco", extra_annotations=[{"id": 9, "image_id": 7, "category_id": 99}])
    out_dir = tmp_path / "out"
    code, err = invoke(["extract", "--dataset", "coco", "--root", root, "--split", "val2014",
                        "--out", out_dir / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "instances_val2014.json", "99")
    assert_nothing_written(out_dir)


def test_extract_refuses_coco_json_that_does_not_parse(tmp_path):
    root = make_coco(tmp_path / "coco")
    ann = root / "annotations" / "instances_val2014.json"
    ann.write_text(ann.read_text()[:40])
    out_dir = tmp_path / "out"
    code, err = invoke(["extract", "--dataset", "coco", "--root", root, "--split", "val2014",
                        "--out", out_dir / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "instances_val2014.json", "JSON")
    assert_nothing_written(out_dir)


def test_extract_refuses_csv_rows_with_unknown_labels(tmp_path):
    root = tmp_path / "imgs"
    make_voc(tmp_path / "v" / "VOC2007", {"a": [], "b": []})
    root.mkdir()
    for name in ("a", "b"):
        shutil.copy(tmp_path / "v" / "VOC2007" / "JPEGImages" / f"{name}.jpg", root / f"{name}.jpg")
    (root / "labels.csv").write_text("image,labels\na.jpg,red\nb.jpg,purple\n")
    out_dir = tmp_path / "out"
    code, err = invoke(["extract", "--dataset", "csv", "--root", root, "--split", "labels", "--csv",
                        root / "labels.csv", "--classes", "red,blue", "--out", out_dir / "c.h5", *CHEAP])
    assert_one_line_error(code, err, "purple")
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("kind", ["missing words", "wrong dimension", "missing file", "bad spec"])
def test_extract_refuses_bad_label_embeddings(kind, tmp_path):
    root = _voc(tmp_path)
    glove = tmp_path / "glove.txt"
    words = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining", "table",
             "dog", "horse", "motorbike", "person", "potted", "plant", "sheep", "sofa", "train", "tv", "monitor"]
    rng = np.random.default_rng(0)
    lines = [w + " " + " ".join(f"{v:.3f}" for v in rng.normal(size=5)) for w in words]
    if kind == "missing words":
        lines = [line for line in lines if not line.startswith(("sheep ", "sofa "))]
        spec, needles = f"glove:{glove}", ["glove.txt", "sheep", "sofa"]
    elif kind == "wrong dimension":
        lines[7] = lines[7].rsplit(" ", 2)[0]            # a line with 3 values where the file has 5
        spec, needles = f"glove:{glove}", ["glove.txt", "line 8"]
    elif kind == "missing file":
        spec, needles = f"glove:{tmp_path / 'absent.txt'}", ["absent.txt"]
    else:
        spec, needles = "word2vec:x", ["--label-embeddings"]
    glove.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    code, err = invoke(["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out",
                        out_dir / "c.h5", *CHEAP, "--label-embeddings", spec])
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(out_dir)


@pytest.mark.parametrize("option,value,needle", [
    ("--num-rois", "0", "--num-rois"), ("--batch-size", "0", "--batch-size"), ("--block-rows", "-3", "--block-rows"),
    ("--workers", "-1", "--workers"), ("--shard", "3/2", "--shard"), ("--shard", "x", "--shard"),
    ("--image-size", "4", "--image-size"), ("--dataset", "vocc", "--dataset"), ("--device", "tpu", "--device"),
    ("--num-rois", "many", "--num-rois"),
])
def test_extract_refuses_out_of_range_options(option, value, needle, tmp_path):
    root = _voc(tmp_path)
    out_dir = tmp_path / "out"
    args = ["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", out_dir / "c.h5", *CHEAP]
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    code, err = invoke(args)
    assert_one_line_error(code, err, needle)
    assert_nothing_written(out_dir)


def test_extract_refuses_an_output_that_is_a_folder(tmp_path):
    root = _voc(tmp_path)
    (tmp_path / "out").mkdir()
    code, err = invoke(["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out",
                        tmp_path / "out", *CHEAP])
    assert_one_line_error(code, err, "--out", "is a folder")
    assert list((tmp_path / "out").iterdir()) == []


# -- caches: truncated, newer, missing fields, disagreeing, non-finite -----------------------------------
KW = dict(num_rois=4, dim=8, num_classes=3, embedding_dim=5)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    return (Path(write_fake_cache(d / "train.h5", n=48, seed=0, **KW)),
            Path(write_fake_cache(d / "test.h5", n=24, seed=1, split="test", **KW)))


def _broken_cache(kind: str, good: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    bad = tmp_path / f"{kind.replace(' ', '-')}.h5"
    shutil.copy(good, bad)
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        return bad, ["truncated"]
    if kind == "zero-byte":
        bad.write_bytes(b"")
        return bad, ["not a readable HDF5"]
    if kind == "not HDF5":
        bad.write_text("image,labels\n")
        return bad, ["not a readable HDF5"]
    with h5py.File(bad, "r+") as f:
        if kind == "newer format version":
            f.attrs["format_version"] = json.dumps(99)
            needles = ["format version 99", "upgrade"]
        elif kind == "missing field":
            del f["regions"]
            needles = ["regions"]
        elif kind == "missing attribute":
            del f.attrs["class_names"]
            needles = ["class_names"]
        elif kind == "attribute not JSON":
            f.attrs["dataset"] = "{not json"
            needles = ["dataset", "JSON"]
        elif kind == "NaN features":
            g = f["global"][...]
            g[5, 2] = np.nan
            f["global"][...] = g
            needles = ["non-finite", "row 5"]
        elif kind == "Inf region features":
            r = f["regions"][...]
            r[7, 1, 3] = np.inf
            f["regions"][...] = r
            needles = ["non-finite", "row 7"]
        else:
            raise AssertionError(kind)
    return bad, [str(bad.name), *needles]


CACHE_CASES = ["truncated", "zero-byte", "not HDF5", "newer format version", "missing field", "missing attribute",
               "attribute not JSON", "NaN features", "Inf region features"]


@pytest.mark.parametrize("kind,budget", [(k, "4") for k in CACHE_CASES]
                         + [(k, "0") for k in CACHE_CASES if "features" in k])  # "0": streamed blocks
def test_train_refuses_bad_caches(kind, budget, good, tmp_path):
    bad, needles = _broken_cache(kind, good[0], tmp_path)
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", bad, "--eval-cache", good[1], "--preset", "iagcn", "--epochs", "1",
                        "--quiet", "--memory-budget-gib", budget, "--out", run, *SMALL_SET])
    assert_one_line_error(code, err, *needles)
    # nothing trained: no checkpoint, no metrics (streamed NaN is found while reading the first block)
    assert not (run / "last.pt").exists() and not (run / "metrics.json").exists()
    if budget == "4":
        assert not run.exists()


@pytest.mark.parametrize("kind", ["truncated", "newer format version", "missing field"])
def test_info_refuses_bad_caches(kind, good, tmp_path):
    bad, needles = _broken_cache(kind, good[0], tmp_path)
    code, err = invoke(["info", bad])
    assert_one_line_error(code, err, *needles)


@pytest.mark.parametrize("what", ["class_names", "feature_dim", "num_rois"])
def test_train_refuses_caches_that_disagree(what, good, tmp_path):
    kw = dict(KW)
    if what == "class_names":
        kw["class_names"] = ["x", "y", "z"]
    elif what == "feature_dim":
        kw["dim"] = 16
    else:
        kw["num_rois"] = 6
    other = write_fake_cache(tmp_path / "other.h5", n=20, seed=3, **kw)
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", good[0], "--eval-cache", other, "--preset", "iagcn", "--epochs", "1",
                        "--quiet", "--out", run, *SMALL_SET])
    assert_one_line_error(code, err, what, "disagree", "other.h5")
    assert_nothing_written(run)


@pytest.mark.parametrize("args,needles", [
    (["--preset", "iagcnn"], ["--preset iagcnn", "unknown preset"]),
    (["--set", "fusion_lambda=-0.5"], ["fusion_lambda"]),
    (["--set", "no_such_field=1"], ["no_such_field", "unknown field"]),
    (["--set", "epochs=many"], ["epochs"]),
    (["--set", "fusion_lambda"], ["key=value"]),
    (["--epochs", "0"], ["epochs"]),
    (["--val-fraction", "1.5"], ["val_fraction"]),
    (["--lr", "-1"], ["lr"]),
    (["--device", "tpu"], ["--device tpu"]),
    (["--label-embeddings", "absent.npy"], ["absent.npy"]),
])
def test_train_refuses_out_of_range_options(args, needles, good, tmp_path):
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", good[0], "--eval-cache", good[1], "--epochs", "1", "--quiet",
                        "--out", run, *SMALL_SET, *args])
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(run)


def test_train_refuses_a_pickled_label_embedding_file(good, tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, np.array([{"not": "an array"}], dtype=object), allow_pickle=True)
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", good[0], "--eval-cache", good[1], "--epochs", "1", "--quiet",
                        "--out", run, "--label-embeddings", path, *SMALL_SET])
    assert_one_line_error(code, err, "emb.npy")
    assert_nothing_written(run)


@pytest.mark.parametrize("args,needles", [
    (["--presets", "iagcn,bogus"], ["bogus"]), (["--seeds", "0,x"], ["--seeds"]), (["--presets", ""], ["--presets"]),
])
def test_sweep_refuses_bad_lists(args, needles, good, tmp_path):
    out = tmp_path / "sweep"
    code, err = invoke(["sweep", "--train-cache", good[0], "--eval-cache", good[1], "--epochs", "1", "--quiet",
                        "--out", out, *args])
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(out)


# -- checkpoints from another preset / class list ------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(good, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mlgcn"
    code, err = invoke(["train", "--train-cache", good[0], "--eval-cache", good[1], "--preset", "mlgcn", "--epochs",
                        "1", "--quiet", "--out", run, *SMALL_SET])
    assert code == 0, err
    return run


def test_resume_refuses_another_preset(finished_run, good, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").unlink()
    code, err = invoke(["train", "--resume", run, "--preset", "iagcn", "--quiet"])
    assert_one_line_error(code, err, "--resume", "mlgcn", "iagcn")


def test_resume_refuses_another_class_list(finished_run, good, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    kw = dict(KW, class_names=["x", "y", "z"])
    tr = write_fake_cache(tmp_path / "tr.h5", n=48, seed=0, **kw)
    te = write_fake_cache(tmp_path / "te.h5", n=24, seed=1, **kw)
    before = (run / "last.pt").read_bytes()
    code, err = invoke(["train", "--resume", run, "--train-cache", tr, "--eval-cache", te, "--quiet"])
    assert_one_line_error(code, err, "class list", "--resume")
    assert (run / "last.pt").read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "pickled object"])
def test_resume_refuses_damaged_or_unsafe_checkpoints(damage, finished_run, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / "last.pt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    elif damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, last)
    else:  # weights_only=True refuses to unpickle arbitrary objects (e.g. a class instance)
        torch.save({"model": Path("/etc/passwd")}, last)
    (run / "metrics.json").unlink()                         # an unfinished run: resuming it needs last.pt
    code, err = invoke(["train", "--resume", run, "--quiet"])
    assert_one_line_error(code, err, "last.pt")
    assert not (run / "metrics.json").exists() and (run / "best.pt").read_bytes() == (finished_run / "best.pt").read_bytes()


def test_load_run_refuses_weights_of_another_preset(finished_run, good, tmp_path):
    """A best.pt whose weights belong to another preset than its config: one UserError, not a state_dict dump."""
    import torch

    from iagcn.errors import UserError
    from iagcn.train.inference import load_run

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["preset"] = "iagcn"
    ckpt["config"]["region_branch"] = True
    ckpt["config"]["global_branch"] = "image-lcm"
    torch.save(ckpt, run / "best.pt")
    with pytest.raises(UserError) as e:
        load_run(run)
    assert "best.pt" in str(e.value) and "\n" not in str(e.value)


# -- merge ------------------------------------------------------------------------------------------
def test_merge_refuses_a_cache_that_is_not_a_shard(good, tmp_path):
    code, err = invoke(["merge", good[0], good[1], "--out", tmp_path / "out" / "m.h5"])
    assert_one_line_error(code, err, "train.h5", "not a shard")
    assert_nothing_written(tmp_path / "out")


def test_merge_refuses_a_missing_shard_file(tmp_path):
    code, err = invoke(["merge", tmp_path / "s0.h5", "--out", tmp_path / "out" / "m.h5"])
    assert_one_line_error(code, err, "s0.h5")
    assert_nothing_written(tmp_path / "out")


# -- a real subprocess: no traceback, exit status --------------------------------------------------------
def test_subprocess_errors_are_one_line_without_traceback(good, tmp_path):
    bad, _ = _broken_cache("truncated", good[0], tmp_path)
    cases = [
        (["extract", "--dataset", "voc", "--root", tmp_path / "nope", "--split", "trainval", "--out",
          tmp_path / "o" / "c.h5", *CHEAP], "nope"),
        (["train", "--train-cache", bad, "--eval-cache", good[1], "--epochs", "1", "--out", tmp_path / "r"], "truncated"),
        (["extract", "--dataset", "voc", "--root", tmp_path, "--split", "trainval", "--num-rois", "0"], "--num-rois"),
    ]
    for args, needle in cases:
        proc = run_cli(args, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()
    # with --debug the traceback is shown
    proc = run_cli(["--debug", "info", bad], timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


# -- a weights file that makes the backbone produce NaN: refused, never written into a cache ---------------
def test_extract_refuses_non_finite_features_from_a_bad_weights_file(tmp_path):
    import torch

    from iagcn.extract.backbones import build_backbone

    sd = build_backbone("efficientnet-lite0", weights="none").trunk.net.state_dict()  # the timm EfficientNet
    bad = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v) for k, v in sd.items()}
    weights = tmp_path / "nan.pt"
    torch.save(bad, weights)
    root = _voc(tmp_path)
    out_dir = tmp_path / "out"
    args = ["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", out_dir / "c.h5", *CHEAP]
    args[args.index("--weights") + 1] = str(weights)
    code, err = invoke(args)
    assert_one_line_error(code, err, "non-finite", "--weights")
    assert not (out_dir / "c.h5").exists() and not [p for p in out_dir.iterdir() if ".tmp-" in p.name]


def test_extract_refuses_weights_that_need_unpickling(tmp_path):
    import torch

    weights = tmp_path / "evil.pt"
    torch.save({"stem.conv.weight": Path("/etc/passwd")}, weights)      # an arbitrary object: weights_only refuses
    root = _voc(tmp_path)
    out_dir = tmp_path / "out"
    args = ["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out", out_dir / "c.h5", *CHEAP]
    args[args.index("--weights") + 1] = str(weights)
    code, err = invoke(args)
    assert_one_line_error(code, err, "evil.pt")
    assert not (out_dir / "c.h5").exists()


# -- stage three: eval / explain / predict / compare --------------------------------------------------------
def test_eval_refuses_a_cache_of_another_class_list(finished_run, tmp_path):
    other = write_fake_cache(tmp_path / "other.h5", n=20, seed=3, **dict(KW, class_names=["x", "y", "z"]))
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--run", finished_run, "--cache", other, "--out", out, "--no-plots", "--quiet"])
    assert_one_line_error(code, err, "other.h5", "classes")
    assert not out.exists() or not any(p.is_file() and ".tmp-" not in p.name for p in out.rglob("*"))


@pytest.mark.parametrize("kind", ["missing run", "damaged checkpoint", "truncated cache", "pickled scores",
                                  "scores of the wrong width"])
def test_eval_refuses_bad_inputs(kind, finished_run, good, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--run", finished_run, "--cache", good[1], "--out", out, "--no-plots", "--quiet"]
    if kind == "missing run":
        args[2], needles = tmp_path / "no-run", ["no-run"]
    elif kind == "damaged checkpoint":
        run = tmp_path / "run"
        shutil.copytree(finished_run, run)
        (run / "best.pt").write_bytes((run / "best.pt").read_bytes()[:300])
        args[2], needles = run, ["best.pt"]
    elif kind == "truncated cache":
        bad, needles = _broken_cache("truncated", good[1], tmp_path)
        args[4] = bad
    else:
        scores = tmp_path / "scores.npy"
        if kind == "pickled scores":
            np.save(scores, np.array([{"a": 1}], dtype=object), allow_pickle=True)
            needles = ["scores.npy"]
        else:
            np.save(scores, np.zeros((24, 7), np.float32))
            needles = ["7"]
        args = ["eval", "--scores", scores, "--targets", good[1], "--scores-are", "logits", "--out", out,
                "--no-plots"]
    code, err = invoke(args)
    assert_one_line_error(code, err, *needles)
    assert_nothing_written(out)


def test_explain_refuses_an_unknown_image_id(finished_run, good, tmp_path):
    out = tmp_path / "explain"
    code, err = invoke(["explain", "--run", finished_run, "--cache", good[1], "--image-id", "no-such-image",
                        "--out", out])
    assert_one_line_error(code, err, "no-such-image")
    assert_nothing_written(out)


def test_predict_refuses_missing_and_non_image_files(finished_run, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path in (tmp_path / "absent.jpg", text):
        code, err = invoke(["predict", "--run", finished_run, path, "--quiet"])
        assert_one_line_error(code, err, path.name)


def test_compare_refuses_a_missing_run(finished_run, good, tmp_path):
    out = tmp_path / "cmp"
    code, err = invoke(["compare", finished_run, tmp_path / "gone", "--cache", good[1], "--out", out])
    assert_one_line_error(code, err, "gone")
    assert_nothing_written(out)
