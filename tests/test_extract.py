"""Extraction end to end on a dozen tiny images: contents, resume after SIGKILL, shard + merge, batch invariance."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iagcn.cache.format import REQUIRED_ATTRS, ROW_FIELDS, FeatureCache
from iagcn.extract.config import ExtractConfig, shard_rows
from iagcn.extract.features import region_features
from iagcn.extract.merge import merge_shards
from iagcn.extract.pipeline import extract_split
from iagcn.errors import UserError
from tests.conftest import REPO_ROOT
from tests.extract_helpers import kill_then_resume, onehot, pil_loader, write_tiny_images

ARRAYS = [f for f in ROW_FIELDS] + ["label_embeddings"]

# cheap offline config: random Lite0 at 64 px, selective search, 6 ROIs, one thread
TINY = ExtractConfig(dataset="csv", root="tiny", split="test", weights="none", image_size=64, num_rois=6,
                     batch_size=3, block_rows=4, workers=0, device="cpu", threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_images(tmp_path_factory.mktemp("tiny") / "images", n=12)


def _extract(ds, cfg, out, **kw):
    return extract_split(ds, cfg, out, label_embeddings=onehot(), image_loader=pil_loader, progress=False,
                         log=lambda m: None, **kw)


def _arrays(path) -> dict[str, np.ndarray]:
    with FeatureCache(path) as c:
        return {f: c.read(f) for f in ARRAYS}


def _assert_same_arrays(a, b):
    for f in ARRAYS:
        assert a[f].dtype == b[f].dtype, f
        np.testing.assert_array_equal(a[f], b[f], err_msg=f)


def test_region_features_max_pool_the_roi_align_grid():
    fmap = torch.randn(1, 5, 4, 4)  # (B, D, h, w)
    # aligned RoIAlign of map box [1, 1, 3, 3] on a 2 x 2 grid, one sample per cell: cell centres at pixels 1, 2
    X = region_features(fmap, torch.tensor([[[1.0, 1.0, 3.0, 3.0]]]), output_size=2, sampling_ratio=1)
    torch.testing.assert_close(X[0, 0], fmap[0, :, 1:3, 1:3].amax(dim=(1, 2)), rtol=0, atol=0)


def test_boxes_map_from_original_pixels_to_the_map_of_the_squashed_input():
    from iagcn.extract.features import boxes_to_map

    boxes = torch.tensor([[[30.0, 15.0, 90.0, 45.0], [0.0, 0.0, 120.0, 60.0]]])  # (1, 2, 4) on a 60 x 120 image
    got = boxes_to_map(boxes, image_sizes=torch.tensor([[60, 120]]), map_size=(4, 8))
    # x scales by 8 / 120, y by 4 / 60
    torch.testing.assert_close(got, torch.tensor([[[2.0, 1.0, 6.0, 3.0], [0.0, 0.0, 8.0, 4.0]]]))


def test_offline_default_cache_contents(tiny, tmp_path):
    """Bundled Lite0 weights + selective search; whole-image padding boxes reproduce the global max pool."""
    cfg = dataclasses.replace(TINY, weights="imagenet", num_rois=60, roi_output_size=2, roi_sampling_ratio=1)
    out = tmp_path / "c.h5"
    stats = _extract(tiny, cfg, out)
    assert stats.images == 12 and not (tmp_path / "c.h5.partial").exists()
    mtime = out.stat().st_mtime_ns
    assert _extract(tiny, cfg, out).images == 0 and out.stat().st_mtime_ns == mtime  # complete: nothing redone
    with FeatureCache(out) as c:
        assert all(a in c.attrs for a in REQUIRED_ATTRS)
        assert (c.num_images, c.num_rois, c.feature_dim, c.num_classes) == (12, 60, 1280, 3)
        assert c.attrs["backbone"] == "efficientnet-lite0" and len(c.attrs["backbone_weights_sha256"]) == 64
        assert c.attrs["extract_config"]["image_size"] == 64 and c.attrs["proposer"] == "selective-search"
        assert c.image_ids() == tiny.image_ids
        np.testing.assert_array_equal(c.read("labels"), tiny.labels)
        sizes, boxes, valid = c.read("image_sizes"), c.read("boxes"), c.read("box_valid")
        g, regions = c.read("global").astype(np.float32), c.read("regions").astype(np.float32)
    from PIL import Image

    for i, p in enumerate(tiny.image_paths):
        with Image.open(p) as im:
            assert tuple(sizes[i]) == (im.height, im.width)
    assert valid.any(axis=1).all() and (~valid).any()  # 60 ROIs on tiny images: some padding
    # padding = whole image; on the 2 x 2 map of a 64 px input, a 2 x 2 aligned grid samples every map cell,
    # so its max-pooled feature is exactly the global max pool (an independent path through the code)
    i, j = np.argwhere(~valid)[0]
    np.testing.assert_array_equal(boxes[i, j], [0, 0, sizes[i, 1], sizes[i, 0]])
    np.testing.assert_array_equal(regions[i, j], g[i])
    # and the global feature is the max of the last map of the squash-resized image, recomputed here
    from iagcn.extract.backbones import build_backbone

    b = build_backbone("efficientnet-lite0", weights="imagenet")
    img = pil_loader(tiny.image_paths[0]).resize((64, 64), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None]
    with torch.inference_mode():
        ref = b.forward_features(b.normalize(x)).amax(dim=(2, 3))[0].half().float().numpy()
    np.testing.assert_allclose(g[0], ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backbone,proposer,extra", [
    ("resnet101", "selective-search", {}),
    ("efficientnet-lite0", "torchvision", {"proposer_weights": "none", "proposer_image_size": 64}),
])
def test_other_offline_combinations(tiny, tmp_path, backbone, proposer, extra):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, backbone=backbone, proposer=proposer, **extra)
    out = tmp_path / "c.h5"
    _extract(tiny, cfg, out)
    with FeatureCache(out) as c:
        dim = 2048 if backbone == "resnet101" else 1280
        assert (c.num_images, c.num_rois, c.feature_dim) == (12, 6, dim)
        assert c.attrs["proposer"] == proposer
        r = c.read("regions")
        assert np.isfinite(r.astype(np.float32)).all()
        assert c.read("box_valid").shape == (12, 6)


def test_same_config_is_bitwise_deterministic_and_batch_size_only_rounds(tiny, tmp_path):
    """Bitwise: the same config twice. Across batch sizes the CPU kernels reorder sums (measured: ~0.4% of
    fp16 values differ by an ulp), so batch_size is part of the config hash and batches never straddle blocks."""
    a, b, c = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    _extract(tiny, dataclasses.replace(TINY, batch_size=4), a)
    _extract(tiny, dataclasses.replace(TINY, batch_size=4), b)
    _extract(tiny, dataclasses.replace(TINY, batch_size=1), c)
    _assert_same_arrays(_arrays(a), _arrays(b))
    x, y = _arrays(a), _arrays(c)
    for f in ("global", "regions"):
        np.testing.assert_allclose(x[f].astype(np.float32), y[f].astype(np.float32), rtol=1e-2, atol=1e-3)
    for f in ("boxes", "box_scores", "box_valid", "labels", "image_sizes"):
        np.testing.assert_array_equal(x[f], y[f])
    with FeatureCache(a) as ca, FeatureCache(c) as cc:
        assert ca.attrs["extract_config_hash"] != cc.attrs["extract_config_hash"]


def test_shards_merge_to_the_unsharded_cache(tiny, tmp_path):
    whole = tmp_path / "whole.h5"
    _extract(tiny, TINY, whole)
    shards = []
    for i in range(3):
        p = tmp_path / f"s{i}.h5"
        _extract(tiny, dataclasses.replace(TINY, shard=f"{i}/3"), p)
        shards.append(p)
    with FeatureCache(shards[1]) as c:
        assert c.attrs["shard"] == {"index": 1, "count": 3, "rows": [4, 8], "total_rows": 12}
    from click.testing import CliRunner

    from iagcn.cli import main

    res = CliRunner().invoke(main, ["merge", *map(str, [shards[2], shards[0], shards[1]]), "--out",
                                    str(tmp_path / "merged.h5")])
    assert res.exit_code == 0, res.output
    merged = tmp_path / "merged.h5"
    _assert_same_arrays(_arrays(whole), _arrays(merged))
    with FeatureCache(merged) as m, FeatureCache(whole) as w:
        assert m.attrs["extract_config_hash"] == w.attrs["extract_config_hash"]
        assert "shard" not in m.attrs
    with pytest.raises(UserError, match="missing"):
        merge_shards(shards[:2], tmp_path / "x.h5")
    with pytest.raises(UserError, match="overlap"):
        merge_shards(shards + [shards[1]], tmp_path / "x.h5")
    other = tmp_path / "other.h5"
    _extract(tiny, dataclasses.replace(TINY, shard="2/3", num_rois=5), other)
    with pytest.raises(UserError, match="extract_config_hash"):
        merge_shards(shards[:2] + [other], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_shard_rows_are_whole_blocks_covering_everything():
    for n in (1, 7, 12, 100):
        ranges = [shard_rows(n, block_rows=4, index=i, count=3) for i in range(3)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(r[0] % 4 == 0 for r in ranges)


def test_resume_after_sigkill_equals_uninterrupted_run(tiny, tmp_path):
    whole = tmp_path / "whole.h5"
    cfg = dataclasses.replace(TINY, batch_size=1, block_rows=2)
    _extract(tiny, cfg, whole)
    root, out = tmp_path / "imgs", tmp_path / "killed.h5"
    args = [sys.executable, str(REPO_ROOT / "tests" / "extract_helpers.py"), str(root), str(out),
            json.dumps(dataclasses.asdict(cfg))]
    kill_then_resume(args, out, blocks=6)
    _assert_same_arrays(_arrays(whole), _arrays(out))


def test_parts_of_another_config_are_discarded(tiny, tmp_path):
    out = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"
    partial.mkdir()
    (partial / "config.json").write_text('{"extract_config_hash": "something else"}')
    (partial / "rows-000000000-000000004.npz").write_bytes(b"stale")
    messages = []
    extract_split(tiny, TINY, out, label_embeddings=onehot(), image_loader=pil_loader, progress=False,
                  log=messages.append)
    assert any("different extraction config" in m for m in messages)
    ref = tmp_path / "ref.h5"
    _extract(tiny, TINY, ref)
    _assert_same_arrays(_arrays(ref), _arrays(out))


# -- the command line (needs extract.datasets: the readers and pre-flight) ----------------------------------
CHEAP = ["--weights", "none", "--image-size", "64", "--num-rois", "4", "--workers", "0", "--device", "cpu",
         "--batch-size", "2", "--block-rows", "4", "--quiet"]


def _csv_dataset(tmp_path: Path, tiny) -> Path:
    """A csv dataset of the 12 tiny images plus a missing file, a truncated JPEG and an unknown label."""
    import shutil

    root = tmp_path / "csvdata"
    root.mkdir()
    rows = ["image,labels"]
    for p, lab in zip(tiny.image_paths, tiny.labels):
        shutil.copy(p, root / p.name)
        rows.append(f"{p.name},{' '.join(c for c, v in zip(tiny.class_names, lab) if v == 1)}")
    (root / "broken.jpg").write_bytes((root / tiny.image_paths[0].name).read_bytes()[:300])
    rows += ["missing.jpg,red", "broken.jpg,blue", f"{tiny.image_paths[1].name.replace('001', '0x1')},purple"]
    shutil.copy(tiny.image_paths[1], root / tiny.image_paths[1].name.replace("001", "0x1"))
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_cli_preflight_refuses_listing_every_problem_then_skip_bad_records_them(tiny, tmp_path, cli):
    root = _csv_dataset(tmp_path, tiny)
    base = ["extract", "--dataset", "csv", "--root", root, "--split", "labels", "--csv", root / "labels.csv",
            "--classes", "red,blue,green", *CHEAP]
    out = tmp_path / "c.h5"
    refused = cli([*base, "--out", out])
    assert refused.returncode == 2, refused.stderr
    err = refused.stderr.strip()
    assert len(err.splitlines()) == 1 and "missing.jpg" in err and "broken.jpg" in err and "purple" in err
    assert not out.exists() and not (tmp_path / "c.h5.partial").exists()

    cli([*base, "--out", out, "--skip-bad"], check=True)
    with FeatureCache(out) as c:
        assert c.num_images == 12 and c.image_ids() == [p.name for p in tiny.image_paths]
        assert sorted(c.attrs["skipped_ids"]) == sorted(["missing.jpg", "broken.jpg", "img0x1.jpg"])
        np.testing.assert_array_equal(c.read("labels"), tiny.labels)


def test_cli_custom_csv_class_lists_label_sep_and_skipped_rerun(tiny, tmp_path, cli):
    """A CSV dataset's train/test splits: extract prints the class list it inferred; a test split missing a class
    gets another list, which training refuses naming --classes-from; --classes-from TRAIN_CACHE fixes it.
    Labels separated by ';' need --label-sep. A rerun of a complete extraction says so and computes nothing."""
    import shutil

    root = tmp_path / "custom"
    root.mkdir()
    for p in tiny.image_paths:
        shutil.copy(p, root / p.name)
    names = ["red", "blue", "green"]
    train_rows = [f"{p.name},{';'.join(c for c, v in zip(names, lab) if v == 1)}"
                  for p, lab in zip(tiny.image_paths[:8], tiny.labels[:8])]
    test_rows = [f"{p.name},red" for p in tiny.image_paths[8:]]            # the test split only shows 'red'
    (root / "train.csv").write_text("image,labels\n" + "\n".join(train_rows) + "\n")
    (root / "test.csv").write_text("image,labels\n" + "\n".join(test_rows) + "\n")
    base = ["extract", "--dataset", "csv", "--root", root, *CHEAP]
    train, test = tmp_path / "train.h5", tmp_path / "test.h5"

    # ';' between labels: without --label-sep a row 'red;blue' is one unknown label 'red;blue'
    got = cli([*base, "--split", "train", "--out", train, "--label-sep", ";"], check=True)
    assert "classes: 3 inferred from train (sorted labels): blue, green, red" in got.stderr
    assert f"--classes-from {train}" in got.stderr and f"wrote {train}: 8 image(s)" in got.stdout
    with FeatureCache(train) as c:
        assert c.class_names == ["blue", "green", "red"]
        want = np.array([[lab[1], lab[2], lab[0]] for lab in tiny.labels[:8]])       # reordered to the sorted list
        np.testing.assert_array_equal(c.read("labels"), want)
        assert c.attrs["extract_config"]["label_sep"] == ";"

    cli([*base, "--split", "test", "--out", test], check=True)
    with FeatureCache(test) as c:
        assert c.class_names == ["red"]
    refused = cli(["train", "--train-cache", train, "--eval-cache", test, "--out", tmp_path / "run", "--epochs", "1"])
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "class_names" in refused.stderr and f"--classes-from {train}" in refused.stderr
    assert not (tmp_path / "run").exists()

    test.unlink()
    got = cli([*base, "--split", "test", "--out", test, "--classes-from", train], check=True)
    assert "classes: 3 as given: blue, green, red" in got.stderr
    with FeatureCache(test) as c:
        assert c.class_names == ["blue", "green", "red"]
        np.testing.assert_array_equal(c.read("labels"), np.tile([0, 0, 1], (4, 1)))

    again = cli([*base, "--split", "test", "--out", test, "--classes-from", train], check=True)
    assert "wrote" not in again.stdout and "0 image(s)" not in again.stdout
    assert f"kept {test}: already complete" in again.stdout

    both = cli([*base, "--split", "test", "--out", test, "--classes-from", train, "--classes", "a,b"])
    assert both.returncode == 2 and "--classes-from" in both.stderr
    voc = cli(["extract", "--dataset", "voc", "--root", root, "--split", "x", "--label-sep", ";", *CHEAP])
    assert voc.returncode == 2 and "--label-sep" in voc.stderr


def test_cli_set_overrides_any_extract_config_field(tiny, tmp_path):
    """`iagcn extract --set key=value` (issue 10), typed like train's: the cache records the values."""
    from click.testing import CliRunner

    from iagcn.cli import main

    root = tmp_path / "csvdata"
    root.mkdir()
    rows = ["image,labels"]
    for p, lab in zip(tiny.image_paths[:4], tiny.labels[:4]):
        (root / p.name).write_bytes(p.read_bytes())
        rows.append(f"{p.name},{' '.join(c for c, v in zip(tiny.class_names, lab) if v == 1)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    base = ["extract", "--dataset", "csv", "--root", str(root), "--split", "labels", "--csv", str(root / "labels.csv"),
            *map(str, CHEAP)]
    out = tmp_path / "set.h5"
    r = CliRunner().invoke(main, [*base, "--out", str(out), "--set", "roi_output_size=3", "--set",
                                  "roi_sampling_ratio=1", "--set", "proposer_image_size=48", "--set", "num_rois=3"])
    assert r.exit_code == 0, r.output
    with FeatureCache(out) as c:
        cfg = c.attrs["extract_config"]
        assert (cfg["roi_output_size"], cfg["roi_sampling_ratio"], cfg["proposer_image_size"]) == (3, 1, 48)
        assert cfg["num_rois"] == 3 and c.num_rois == 3                 # --set applies after --num-rois 4
        assert cfg["image_size"] == 64 and cfg["classes"] is None and cfg["device"] == "cpu"
    for bad, words in ((["--set", "roi_output_size=three"], "expected a int"),
                       (["--set", "bogus=1"], "unknown field"), (["--set", "device=gpu"], "unknown device")):
        r = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "bad.h5"), *bad])
        assert r.exit_code == 2 and words in r.output and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "bad.h5").exists()
