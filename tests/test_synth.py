"""The synthetic dataset: real layouts read back by the real readers, determinism, label structure, CLI."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iagcn.classes import VOC_CLASSES
from iagcn.extract.datasets import preflight, read_coco, read_voc
from iagcn.extract.synth import write_synth
from iagcn.extract.synth_scenes import MAX_OBJECTS, SynthImage, sample_image

CI = {c: i for i, c in enumerate(VOC_CLASSES)}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def voc_and_coco(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth")
    voc_root, _ = write_synth(base / "voc", fmt="voc", n_train=24, n_test=12, seed=5)
    coco_root, _ = write_synth(base / "coco", fmt="coco", n_train=24, n_test=12, seed=5)
    return voc_root, coco_root


def test_voc_layout_read_back(voc_and_coco):
    voc_root, _ = voc_and_coco
    assert voc_root.parts[-2:] == ("VOCdevkit", "VOC2007")
    trainval, test = read_voc(voc_root, "trainval"), read_voc(voc_root, "test")
    train, val = read_voc(voc_root, "train"), read_voc(voc_root, "val")
    assert len(trainval) == 24 and len(test) == 12 and len(train) + len(val) == 24
    assert sorted(train.image_ids + val.image_ids) == trainval.image_ids
    assert not set(trainval.image_ids) & set(test.image_ids)
    assert preflight(trainval) == [] and preflight(test) == []
    for ds in (trainval, test):
        positives = (ds.labels != 0).sum(1)
        assert positives.min() >= 1 and positives.max() <= MAX_OBJECTS
    # every label agrees with the boxes in the XML, recounted here independently of the reader
    import xml.etree.ElementTree as ET
    for image_id, row, path in zip(test.image_ids, test.labels, test.image_paths):
        objs = ET.parse(voc_root / "Annotations" / f"{image_id}.xml").getroot().findall("object")
        w, h = Image.open(path).size
        for o in objs:
            b = [int(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= b[0] < b[2] <= w and 1 <= b[1] < b[3] <= h
        for c, name in enumerate(VOC_CLASSES):
            flags = [o.findtext("difficult") for o in objs if o.findtext("name") == name]
            want = 1 if "0" in flags else (-1 if flags else 0)
            assert row[c] == want
    # devkit per-class lists: 1 positive, 0 difficult-only, -1 negative
    cls_file = voc_root / "ImageSets" / "Main" / "person_trainval.txt"
    devkit = dict(line.split() for line in cls_file.read_text().splitlines())
    col = trainval.labels[:, CI["person"]]
    assert [int(devkit[i]) for i in trainval.image_ids] == np.where(col == 1, 1, np.where(col == -1, 0, -1)).tolist()


def test_coco_layout_matches_voc(voc_and_coco):
    voc_root, coco_root = voc_and_coco
    for voc_split, coco_split in (("trainval", "train2014"), ("test", "val2014")):
        v, c = read_voc(voc_root, voc_split), read_coco(coco_root, coco_split)
        assert c.class_names == list(VOC_CLASSES) and len(c) == len(v)
        assert preflight(c, check_decode=False) == []
        # COCO has no "difficult": every object is a positive; VOC's -1 entries are COCO 1s
        np.testing.assert_array_equal(c.labels, (v.labels != 0).astype(np.int8))
        # same seed, same images in both layouts
        assert c.image_paths[0].read_bytes() == v.image_paths[0].read_bytes()
    doc = json.loads((coco_root / "annotations" / "instances_train2014.json").read_text())
    for a in doc["annotations"][:20]:
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0 and a["area"] == w * h


def test_same_seed_byte_identical_and_seed_matters(tmp_path):
    a, _ = write_synth(tmp_path / "a", fmt="voc", n_train=6, n_test=3, seed=1)
    b, _ = write_synth(tmp_path / "b", fmt="voc", n_train=6, n_test=3, seed=1, workers=2)
    c, _ = write_synth(tmp_path / "c", fmt="voc", n_train=6, n_test=3, seed=2)
    da, db, dc = _tree_digest(tmp_path / "a"), _tree_digest(tmp_path / "b"), _tree_digest(tmp_path / "c")
    assert len(da) > 9 * 2 and da == db
    assert da.keys() == dc.keys() and da["VOCdevkit/VOC2007/JPEGImages/000001.jpg"] != dc[
        "VOCdevkit/VOC2007/JPEGImages/000001.jpg"]
    # the test split does not depend on the train split's size (per-image generators)
    write_synth(tmp_path / "d", fmt="coco", n_train=3, n_test=2, seed=1)
    write_synth(tmp_path / "e", fmt="coco", n_train=5, n_test=2, seed=1)
    first_test = lambda root: sorted((root / "val2014").iterdir())[0].read_bytes()  # noqa: E731
    assert first_test(tmp_path / "d") == first_test(tmp_path / "e")


def _layouts(n: int, seed: int = 0) -> list[SynthImage]:
    return [sample_image(np.random.default_rng([seed, 9, i])) for i in range(n)]


def _label_matrix(layouts: list[SynthImage]) -> np.ndarray:
    out = np.zeros((len(layouts), len(VOC_CLASSES)), bool)   # (n, C) any object of the class
    for k, im in enumerate(layouts):
        out[k, [o.cls for o in im.objects]] = True
    return out


def test_label_structure_scene_cooccurrence_and_instance_exceptions():
    layouts = _layouts(3000)
    Y = _label_matrix(layouts)                                 # (n, C)
    p = Y.mean(0)                                              # (C,) marginals
    counts = np.array([len(im.objects) for im in layouts])
    assert counts.min() >= 1 and counts.max() == MAX_OBJECTS

    def cond(a: str, b: str) -> float:                         # P(a | b)
        return Y[Y[:, CI[b]], CI[a]].mean()

    # scene-level co-occurrence: same-scene pairs lift each other, cross-scene pairs suppress
    assert cond("bus", "car") > 2 * p[CI["bus"]]
    assert cond("sofa", "tvmonitor") > 2 * p[CI["sofa"]]
    assert cond("sheep", "cow") > 2 * p[CI["sheep"]]
    assert cond("boat", "car") < 0.5 * p[CI["boat"]]
    # a statistical co-occurrence matrix is far from independent
    joint = (Y[:, :, None] & Y[:, None, :]).mean(0)            # (C, C)
    lift = joint / np.outer(p, p)
    assert (lift[~np.eye(20, dtype=bool)] > 2).sum() >= 20
    # instance-level exceptions: person with a bicycle in some images, not in others
    rider_share = cond("person", "bicycle")
    assert 0.5 < rider_share < 0.95
    # ... and whether the pair occurs is visible in the image: a ridden bicycle has a person box on top of it
    ridden = alone = 0
    for im in layouts:
        bikes = [o for o in im.objects if VOC_CLASSES[o.cls] == "bicycle"]
        persons = [o for o in im.objects if VOC_CLASSES[o.cls] == "person"]
        for b in bikes:
            on_top = any(abs((q.box[0] + q.box[2]) - (b.box[0] + b.box[2])) <= 2 and q.box[3] > b.box[1]
                         and q.box[1] < b.box[1] for q in persons)
            ridden += on_top
            alone += not on_top
    assert 0.3 < ridden / (ridden + alone) < 0.7
    # pets rarely share a room
    assert cond("dog", "cat") < 0.5 * p[CI["dog"]] and cond("chair", "diningtable") > 3 * p[CI["chair"]]
    # small objects are marked difficult: a minority of objects, all of them small
    objs = [(o, im) for im in layouts for o in im.objects]
    diff = np.array([o.difficult for o, _ in objs])
    assert 0.03 < diff.mean() < 0.3
    sizes = np.array([np.sqrt((o.box[2] - o.box[0]) * (o.box[3] - o.box[1])) / min(im.width, im.height)
                      for o, im in objs])
    assert sizes[diff].max() < sizes[~diff].mean()


def test_synth_cli(tmp_path, cli):
    out = tmp_path / "ds"
    proc = cli(["synth", "--out", out, "--format", "coco", "--train", "5", "--test", "3", "--seed", "4", "--quiet"],
               check=True)
    assert "wrote 8 images" in proc.stdout
    ds = read_coco(out, "val2014")
    assert len(ds) == 3 and ds.labels.any(1).all()
    digest = _tree_digest(out)
    again = cli(["synth", "--out", out, "--format", "coco", "--train", "5", "--test", "3", "--seed", "4", "--quiet"],
                check=True)
    assert "nothing to do" in again.stdout and _tree_digest(out) == digest
    clash = cli(["synth", "--out", out, "--format", "voc", "--train", "2", "--test", "1", "--quiet"])
    assert clash.returncode == 2 and "--overwrite" in clash.stderr and len(clash.stderr.strip().splitlines()) == 1
    cli(["synth", "--out", out, "--format", "voc", "--train", "2", "--test", "1", "--quiet", "--overwrite"], check=True)
    assert len(read_voc(out / "VOCdevkit" / "VOC2007", "trainval")) == 2 and not (out / "annotations").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ds.lock"] == ["ds"]   # no temporaries left behind


def test_every_image_keeps_a_non_difficult_object(monkeypatch, tmp_path, cli):
    """As in the VOC devkit (0 of 5,011 trainval images lack a positive): no image has only difficult objects."""
    import iagcn.extract.synth_scenes as synth

    def layouts(n=1500):
        return [sample_image(np.random.default_rng([0, 0, i])) for i in range(n)]

    fixed = layouts()
    assert all(any(not o.difficult for o in im.objects) for im in fixed)
    # the case exists without the rule (so this test can fail), and the rule touches only those images
    monkeypatch.setattr(synth, "_promote_largest", lambda objects, **_: objects)
    raw = layouts()
    monkeypatch.undo()
    needing = [k for k, im in enumerate(raw) if all(o.difficult for o in im.objects)]
    assert len(needing) >= 3
    assert all(raw[k] == fixed[k] for k in range(len(raw)) if k not in needing)
    for k in needing:
        promoted = [o for o in fixed[k].objects if not o.difficult]
        assert len(promoted) == 1 and len(fixed[k].objects) == len(raw[k].objects)
        o, im = promoted[0], fixed[k]
        assert 0 <= o.box[0] < o.box[2] <= im.width and 0 <= o.box[1] < o.box[3] <= im.height
        size = np.sqrt((o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
        assert size >= synth.DIFFICULT_BELOW * min(im.width, im.height)
    # through the CLI and the VOC reader: every image has a positive (label 1) class
    cli(["synth", "--out", tmp_path / "ds", "--train", "40", "--test", "20", "--seed", "0", "--quiet"], check=True)
    for split in ("trainval", "test"):
        ds = read_voc(tmp_path / "ds" / "VOCdevkit" / "VOC2007", split)
        assert (ds.labels == 1).any(1).all()
