"""Dataset readers and pre-flight on small fixtures written by the tests."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iagcn.classes import VOC_CLASSES
from iagcn.errors import UserError
from iagcn.extract.datasets import (load_dataset, preflight, raise_on_problems, read_coco, read_csv_dataset,
                                    read_voc)
from iagcn.extract.images import find_bad_images, load_image_rgb
from iagcn.extract.split import DatasetSplit


def _jpeg(path: Path, colour=(200, 30, 30), size=(40, 30), mode="RGB", fmt="JPEG", **save) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode != "L" else 128).save(path, format=fmt, **save)


def _voc_xml(objects: list[tuple[str, int | None]]) -> str:
    objs = ""
    for name, difficult in objects:
        diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        objs += f"<object><name>{name}</name>{diff}<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


def make_voc(root: Path, annotations: dict[str, list[tuple[str, int | None]]], split: str = "trainval") -> Path:
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in annotations.items():
        _jpeg(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objects))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in annotations))
    (root / "ImageSets" / "Main" / f"cat_{split}.txt").write_text("")  # per-class list: not a split
    return root


# --------------------------------------------------------------------------------------------- VOC

def test_voc_labels_difficult_only_and_missing_difficult_tag(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {
        "000001": [("dog", 0), ("person", 1), ("person", 0)],    # person: one non-difficult -> 1
        "000002": [("cat", 1), ("cat", 1), ("dog", None)],         # cat difficult-only -> -1; no tag -> 0 -> 1
        "000003": [],                                              # no objects: all 0
    })
    ds = read_voc(root, "trainval")
    assert ds.class_names == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert ds.image_ids == ["000001", "000002", "000003"]
    assert ds.image_paths[0] == root / "JPEGImages" / "000001.jpg"
    assert ds.labels.dtype == np.int8 and ds.labels.shape == (3, 20)
    expected = np.zeros((3, 20), np.int8)
    expected[0, VOC_CLASSES.index("dog")] = 1
    expected[0, VOC_CLASSES.index("person")] = 1
    expected[1, VOC_CLASSES.index("cat")] = -1
    expected[1, VOC_CLASSES.index("dog")] = 1
    np.testing.assert_array_equal(ds.labels, expected)
    assert preflight(ds) == []


def test_voc_split_typo_lists_available_splits(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)]}, split="trainval")
    make_voc(root, {"b": [("dog", 0)]}, split="test")
    with pytest.raises(UserError) as e:
        read_voc(root, "trainvall")
    msg = str(e.value)
    assert "trainvall" in msg and "test, trainval" in msg and "cat_trainval" not in msg


def test_voc_bad_annotations_reported_together(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)], "b": [("dog", 0)], "c": [("dog", 0)],
                                           "d": [("dog", 0)], "e": [("dog", 0)]})
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>dog</name>")   # does not parse
    (root / "Annotations" / "c.xml").write_text(_voc_xml([("unicorn", 0)]))               # unknown class
    (root / "Annotations" / "d.xml").write_text("<annotation><object><difficult>0</difficult></object></annotation>")
    (root / "Annotations" / "e.xml").unlink()                                             # missing
    with pytest.raises(UserError) as e:
        read_voc(root, "trainval")
    msg = str(e.value)
    assert "(4)" in msg
    for needle in ("b.xml", "does not parse", "c.xml", "unicorn", "d.xml", "no <name>", "e.xml", "missing"):
        assert needle in msg
    # lenient reading (extract --skip-bad) keeps the good image and records the others
    ds = read_voc(root, "trainval", strict=False)
    assert ds.image_ids == ["a"] and sorted(ds.bad_ids) == ["b", "c", "d", "e"]
    assert len(preflight(ds)) == 4


def test_voc_path_escape_rejected(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {"a": [("dog", 0)]})
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\n../../../etc/passwd\n")
    with pytest.raises(UserError, match="outside the dataset folder"):
        read_voc(root, "trainval")


def test_voc_root_must_be_voc2007_folder(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2007", {"a": [("dog", 0)]})
    with pytest.raises(UserError, match="VOC2007 folder"):
        read_voc(tmp_path / "VOCdevkit", "trainval")


# --------------------------------------------------------------------------------------------- COCO

def make_coco(root: Path, split: str = "val2014", *, extra_annotations=()) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 10, "name": "traffic light"}]
    images = [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
              {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"},    # no annotations
              {"id": 5, "file_name": "COCO_val2014_000000000005.jpg"}]
    anns = [{"id": 1, "image_id": 7, "category_id": 18}, {"id": 2, "image_id": 7, "category_id": 18},
            {"id": 3, "image_id": 5, "category_id": 10}, {"id": 4, "image_id": 5, "category_id": 1},
            *extra_annotations]
    (root / "annotations" / f"instances_{split}.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories}))
    for im in images:
        _jpeg(root / split / im["file_name"])
    return root


def test_coco_category_id_order_and_empty_images(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = read_coco(root, "val2014")
    assert ds.class_names == ["person", "traffic light", "dog"]            # ids 1, 10, 18
    assert ds.image_ids == ["COCO_val2014_000000000007", "COCO_val2014_000000000005"]  # id 3 dropped
    np.testing.assert_array_equal(ds.labels, np.array([[0, 0, 1], [1, 1, 0]], np.int8))
    assert ds.image_paths[1] == root / "val2014" / "COCO_val2014_000000000005.jpg"
    kept = read_coco(root, "val2014", keep_empty=True)
    assert kept.image_ids[1] == "COCO_val2014_000000000003"
    np.testing.assert_array_equal(kept.labels[1], np.zeros(3, np.int8))
    assert len(kept) == 3 and preflight(kept) == []


def test_coco_unknown_category_and_split_typo(tmp_path):
    root = make_coco(tmp_path / "coco", extra_annotations=[{"id": 9, "image_id": 7, "category_id": 99}])
    with pytest.raises(UserError, match=r"category ids not in 'categories': 99 \(1 annotations\)"):
        read_coco(root, "val2014")
    with pytest.raises(UserError, match="available splits: val2014"):
        read_coco(root, "val2017")


def test_coco_bad_json_and_escape(tmp_path):
    root = make_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "../../secret.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="outside the dataset folder"):
        read_coco(root, "val2014")
    path.write_text(path.read_text()[:50])
    with pytest.raises(UserError, match="not valid JSON"):
        read_coco(root, "val2014")


# --------------------------------------------------------------------------------------------- CSV

def test_csv_derived_and_given_class_lists(tmp_path):
    root = tmp_path / "imgs"
    for name in ("a.jpg", "sub/b.jpg", "c.jpg"):
        _jpeg(root / name)
    csv = tmp_path / "train.csv"
    csv.write_text("image,labels\na.jpg,zebra dining_table\nsub/b.jpg,\nc.jpg,ant\n")
    ds = read_csv_dataset(root, csv)
    assert ds.class_names == ["ant", "dining_table", "zebra"] and ds.split == "train"
    np.testing.assert_array_equal(ds.labels, np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], np.int8))
    assert ds.image_paths[1] == root / "sub" / "b.jpg"
    ds2 = read_csv_dataset(root, csv, class_names=["zebra", "ant", "dining_table", "yak"])
    np.testing.assert_array_equal(ds2.labels[0], np.array([1, 0, 1, 0], np.int8))
    with pytest.raises(UserError, match=r"row 4: unknown labels \['ant'\]"):
        read_csv_dataset(root, csv, class_names=["zebra", "dining_table"])
    # semicolon-delimited labels; the dispatcher resolves <root>/<split>.csv
    (root / "s.csv").write_text("a.jpg,zebra;ant\n")
    ds3 = load_dataset("csv", root, "s", delimiter=";")
    assert ds3.class_names == ["ant", "zebra"] and ds3.labels.tolist() == [[1, 1]]


def test_csv_escape_and_bad_rows(tmp_path):
    root = tmp_path / "imgs"
    _jpeg(root / "a.jpg")
    csv = tmp_path / "x.csv"
    csv.write_text("a.jpg,cat\n/etc/passwd,cat\n")
    with pytest.raises(UserError, match="row 2.*outside the dataset folder"):
        read_csv_dataset(root, csv)
    csv.write_text("a.jpg,cat,extra\n")
    with pytest.raises(UserError, match="row 1: expected 2 columns"):
        read_csv_dataset(root, csv)
    with pytest.raises(UserError, match="--dataset 'imagenet' is not known"):
        load_dataset("imagenet", root, "x")


# --------------------------------------------------------------------------------------------- images

def _exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 image whose EXIF says "rotate 90 CW" (orientation 6): displayed 20x40."""
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))           # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def test_load_image_rgb_accepts_odd_but_valid_images(tmp_path):
    _jpeg(tmp_path / "gray.jpg", mode="L")
    _jpeg(tmp_path / "cmyk.jpg", colour=(0, 255, 255, 0), mode="CMYK")          # pure red in CMYK
    _jpeg(tmp_path / "png.jpg", colour=(10, 200, 10), fmt="PNG")                  # PNG bytes, .jpg name
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "alpha.png")
    Image.fromarray(np.full((6, 6), 60000, np.uint16)).save(tmp_path / "deep.png")  # 16-bit grayscale
    _exif_rotated_jpeg(tmp_path / "rot.jpg")
    for name in ("gray.jpg", "cmyk.jpg", "png.jpg", "alpha.png", "deep.png", "rot.jpg"):
        im = load_image_rgb(tmp_path / name)
        assert im.mode == "RGB", name
    assert load_image_rgb(tmp_path / "gray.jpg").getpixel((5, 5))[0] == load_image_rgb(tmp_path / "gray.jpg").getpixel((5, 5))[2]
    r, g, b = load_image_rgb(tmp_path / "cmyk.jpg").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    assert load_image_rgb(tmp_path / "png.jpg").getpixel((0, 0)) == (10, 200, 10)
    assert load_image_rgb(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)   # transparent -> white
    assert load_image_rgb(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    rot = load_image_rgb(tmp_path / "rot.jpg")
    assert rot.size == (20, 40)                      # transposed
    top, bottom = rot.getpixel((10, 5)), rot.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60              # rotated 90 CW: the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_preflight_reports_every_bad_image_at_once(tmp_path):
    root = make_voc(tmp_path / "VOC2007", {k: [("dog", 0)] for k in ("ok", "gray", "cmyk", "png", "rot", "trunc",
                                                                      "empty", "gone", "text")})
    img = root / "JPEGImages"
    _jpeg(img / "gray.jpg", mode="L")
    _jpeg(img / "cmyk.jpg", colour=(0, 0, 0, 0), mode="CMYK")
    _jpeg(img / "png.jpg", fmt="PNG")
    _exif_rotated_jpeg(img / "rot.jpg")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (img / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (img / "empty.jpg").write_bytes(b"")
    (img / "gone.jpg").unlink()
    (img / "text.jpg").write_text("this is not an image\n")
    ds = read_voc(root, "trainval")
    bad = find_bad_images(ds, workers=2)
    assert sorted(bad) == ["empty", "gone", "text", "trunc"]
    assert "zero-byte" in bad["empty"] and "missing" in bad["gone"]
    assert "not an image" in bad["text"] and "truncated" in bad["trunc"]
    problems = preflight(ds, workers=1)
    assert len(problems) == 4 and all(str(img) in p for p in problems)
    # header-only check is fast but cannot see truncation
    assert sorted(find_bad_images(ds, check_decode=False)) == ["empty", "gone", "text"]
    with pytest.raises(UserError) as e:
        raise_on_problems(problems, what="voc trainval")
    assert all(name in str(e.value) for name in ("empty.jpg", "gone.jpg", "text.jpg", "trunc.jpg", "--skip-bad"))
    kept = ds.without(bad)
    assert kept.image_ids == ["ok", "gray", "cmyk", "png", "rot"] and kept.labels.shape == (5, 20)
    assert sorted(kept.bad_ids) == sorted(bad) and preflight(kept) == []


def test_dataset_split_shape_check():
    with pytest.raises(ValueError):
        DatasetSplit(name="x", root=Path("."), split="s", class_names=["a"], image_ids=["i"],
                     image_paths=[Path("i")], labels=np.zeros((1, 2), np.int8))
