"""`iagcn predict` end to end on tiny synthetic images: stage one on the fly must reproduce the cached features.

A run is trained on a cache extracted (EfficientNet-Lite0 at 64 px, 4 selective-search ROIs, the bundled weights
copied to a file) from a few synth images; predicting the test images must give the probabilities that the same
run gives on the test cache `iagcn extract` wrote; a changed or missing weight file is refused before anything runs.
"""
from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cli import main
from iagcn.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("iagcn.train.run", reason="stage two (train/) has not landed")
    pytest.importorskip("iagcn.extract.pipeline", reason="stage one extraction has not landed")
    import dataclasses

    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.run import train_run
    from tests.extract_helpers import extract_synth_pair

    d = tmp_path_factory.mktemp("predict")
    root, weights, caches = extract_synth_pair(d, num_rois=4)
    cfg = dataclasses.replace(config_for_preset("iagcn"), epochs=1, batch_size=8, device="cpu", gcn_widths=(16,),
                              region_widths=(16,), num_threads=1, val_fraction=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_run(cfg, train_data=CacheData(caches["trainval"]), eval_data=CacheData(caches["test"]),
                  out_dir=d / "run", progress=False, log=lambda *_: None)
    return {"dir": d, "root": root, "weights": weights, "run": d / "run", **caches}


def test_predict_reproduces_cached_features(tiny):
    from iagcn.cache.format import FeatureCache
    from iagcn.metrics import sigmoid
    from iagcn.evaluate.predict import predict_images
    from iagcn.train.inference import load_run, predict_cache

    with FeatureCache(tiny["test"]) as c:
        ids = c.image_ids()
    images = [tiny["root"] / "JPEGImages" / f"{i}.jpg" for i in ids]
    preds = predict_images(tiny["run"], images, threshold=0.5, progress=False, log=lambda *_: None)
    ref = predict_cache(load_run(tiny["run"]).model, tiny["test"])
    expected = sigmoid(np.asarray(ref["scores"], dtype=np.float64))  # (n, C)
    names = load_run(tiny["run"]).class_names
    assert [p.image for p in preds] == [str(i) for i in images]
    for p, row in zip(preds, expected):
        np.testing.assert_allclose([p.probabilities[n] for n in names], row, atol=1e-4)
        want = [names[c] for c in np.argsort(-row, kind="stable") if row[c] >= 0.5]
        assert [n for n, _ in p.labels] == want


def test_predict_cli_folder_json_and_csv(tiny):
    runner = CliRunner()
    folder = tiny["dir"] / "two"
    folder.mkdir(exist_ok=True)
    for name in sorted((tiny["root"] / "JPEGImages").iterdir())[:2]:
        shutil.copyfile(name, folder / name.name)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    r = runner.invoke(main, ["predict", "--run", str(tiny["run"]), str(folder), "--format", "json", "--top-k", "2",
                             "--threshold", "0.05", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out) == 2 and all(len(o["labels"]) <= 2 for o in out)
    assert all(o["labels"] == sorted(o["labels"], key=lambda x: -x["probability"]) for o in out)
    assert all(x["probability"] >= 0.05 for o in out for x in o["labels"])
    r = runner.invoke(main, ["predict", "--run", str(tiny["run"]), str(folder), "--format", "csv", "--quiet",
                             "--threshold", "0.01"], catch_exceptions=False)
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "image,label,probability"
    # a threshold nothing reaches: every image still gets its row (empty label and probability), none dropped
    r = runner.invoke(main, ["predict", "--run", str(tiny["run"]), str(folder), "--format", "csv", "--quiet",
                             "--threshold", "0.999999"], catch_exceptions=False)
    import csv as _csv
    import io as _io

    rows = list(_csv.reader(_io.StringIO(r.stdout)))
    images = sorted(str(p) for p in folder.iterdir() if p.suffix == ".jpg")
    assert r.exit_code == 0 and rows[0] == ["image", "label", "probability"]
    assert sorted(row[0] for row in rows[1:]) == images and all(row[1:] == ["", ""] for row in rows[1:])


def test_predict_refuses_changed_or_missing_weights(tiny):
    from iagcn.evaluate.predict import predict_images

    image = sorted((tiny["root"] / "JPEGImages").iterdir())[0]
    backup = tiny["dir"] / "lite0.backup"
    shutil.copyfile(tiny["weights"], backup)
    try:
        with open(tiny["weights"], "ab") as fh:
            fh.write(b"\0")  # same file name, other bytes
        with pytest.raises(UserError, match="sha256"):
            predict_images(tiny["run"], [image], progress=False)
        r = CliRunner().invoke(main, ["predict", "--run", str(tiny["run"]), str(image)])
        assert r.exit_code == 2 and "sha256" in r.output and str(tiny["weights"]) in r.output
        tiny["weights"].unlink()
        with pytest.raises(UserError, match="missing"):
            predict_images(tiny["run"], [image], progress=False)
    finally:
        shutil.copyfile(backup, tiny["weights"])
    assert predict_images(tiny["run"], [image], progress=False, log=lambda *_: None)  # restored: works again


def test_predict_refuses_bad_images(tiny, tmp_path):
    from iagcn.evaluate.predict import predict_images

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        predict_images(tiny["run"], [bad], progress=False)
    with pytest.raises(UserError, match="no such image"):
        predict_images(tiny["run"], [tmp_path / "absent.png"], progress=False)


def test_run_records_extraction_config_and_predict_needs_no_train_cache(tiny, tmp_path):
    """config.json carries the train cache's extract_config + weight hashes, so predict works without that cache."""
    from iagcn.cache.format import FeatureCache
    from iagcn.evaluate.predict import extraction_record, predict_images

    record = json.loads((tiny["run"] / "config.json").read_text())["train_cache"]
    with FeatureCache(tiny["trainval"]) as c:
        assert record["extract_config"] == c.attrs["extract_config"]
        assert record["backbone_weights_sha256"] == c.attrs["backbone_weights_sha256"]
    moved = tmp_path / "trainval.h5"
    shutil.move(tiny["trainval"], moved)
    try:
        rec = extraction_record(tiny["run"])
        assert rec.source.endswith("config.json") and rec.extract_config["image_size"] == 64
        image = sorted((tiny["root"] / "JPEGImages").iterdir())[0]
        assert predict_images(tiny["run"], [image], progress=False, log=lambda *_: None)
    finally:
        shutil.move(moved, tiny["trainval"])


def _predict_json(tiny, images, device):
    r = CliRunner().invoke(main, ["predict", "--run", str(tiny["run"]), *map(str, images), "--format", "json",
                                  "--threshold", "0.01", "--quiet", "--device", device], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {o["image"]: o["probabilities"] for o in json.loads(r.stdout)}


def test_predict_device_auto_runs_on_the_cpu_without_cuda(tiny):
    """`--device auto` used to reach torch.device("auto") and fail; here (no CUDA) it must mean the CPU."""
    import torch

    assert not torch.cuda.is_available()
    images = sorted((tiny["root"] / "JPEGImages").iterdir())[:2]
    assert _predict_json(tiny, images, "auto") == _predict_json(tiny, images, "cpu")
    r = CliRunner().invoke(main, ["predict", "--run", str(tiny["run"]), str(images[0]), "--device", "cuda"])
    assert r.exit_code == 2 and "--device cuda" in r.output and "not available" in r.output


def test_predict_on_cuda_sends_the_head_backbone_and_batches_to_the_gpu(tiny, fake_gpu):
    """With --device cuda (simulated: see conftest.fake_gpu) the head, the backbone and every batch go to cuda:0.
    Before issue 10 the head stayed on the CPU while its batches went to the GPU."""
    import torch

    images = sorted((tiny["root"] / "JPEGImages").iterdir())[:2]
    reference = _predict_json(tiny, images, "cpu")
    assert fake_gpu == []                                              # --device cpu: nothing sent to CUDA
    got = _predict_json(tiny, images, "cuda")
    cuda0 = torch.device("cuda", 0)
    modules = [(name, dev) for kind, name, dev in fake_gpu if kind == "module"]
    assert ("IAGCNHead", cuda0) in modules, modules                   # the trained head
    assert any(dev == cuda0 and name != "IAGCNHead" for name, dev in modules)   # stage one's backbone
    head_at = next(i for i, e in enumerate(fake_gpu) if e[:2] == ("module", "IAGCNHead"))
    tensors = [e for e in fake_gpu[head_at:] if e[0] == "tensor"]
    # the head's batches (x (b, D), X (b, N, D), valid, labels) after the head moved, all to cuda:0
    assert tensors and all(dev == cuda0 for _, _, dev in tensors)
    assert {len(shape) for _, shape, _ in tensors} >= {2, 3}
    assert all(e[2] == cuda0 for e in fake_gpu)
    assert got == reference                                            # the same numbers (computed on the CPU here)


def test_predict_skip_bad_leaves_out_unusable_images(tiny, tmp_path):
    """--skip-bad (as in extract): the good images are predicted as without the bad ones, the bad ones named once."""
    good = sorted((tiny["root"] / "JPEGImages").iterdir())[0]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    absent = tmp_path / "absent.png"
    runner = CliRunner()
    base = ["predict", "--run", str(tiny["run"]), "--format", "json", "--quiet", "--threshold", "0.01"]
    alone = runner.invoke(main, [*base, str(good)])
    assert alone.exit_code == 0, alone.output
    r = runner.invoke(main, [*base, "--skip-bad", str(bad), str(good), str(absent)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads(alone.stdout)
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning: --skip-bad")]
    assert len(warned) == 1 and "2 image(s)" in warned[0] and "broken.jpg" in warned[0] and "absent.png" in warned[0]
    r = runner.invoke(main, [*base, str(bad), str(good)])                      # without it: refused, as before
    assert r.exit_code == 2 and "broken.jpg" in r.output and "--skip-bad" in r.output
    r = runner.invoke(main, [*base, "--skip-bad", str(bad), str(absent)])      # nothing usable: refused
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "none of the 2" in r.output, r.output
