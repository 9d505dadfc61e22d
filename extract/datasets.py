"""Dataset readers: PASCAL VOC 2007, MS-COCO 2014 and custom CSV datasets, plus the image pre-flight.

Every reader returns one :class:`DatasetSplit`: image ids, image paths and a label matrix
``labels (n, C) int8`` with 1 = present, 0 = absent, -1 = ignore (VOC: the class is present only
as "difficult" objects; these entries are masked out of the loss and of the metrics).

On-disk layouts
---------------
``voc``   ``root`` is the ``VOCdevkit/VOC2007`` folder::

              root/JPEGImages/<id>.jpg
              root/Annotations/<id>.xml
              root/ImageSets/Main/<split>.txt      (one id per line; split: train, val, trainval, test)

          The 20 classes in the devkit's order (:data:`VOC_CLASSES`).

``coco``  ``root`` is the COCO folder::

              root/annotations/instances_<split>.json   (split: train2014, val2014, ...)
              root/<split>/<file_name>                  (file_name from the JSON's ``images``)

          Classes in category-id order (the JSON's ``categories`` sorted by ``id``: person, bicycle,
          car, ... for real COCO). ML-GCN's released files (``coco_adj.pkl``, ``coco_glove_word2vec.pkl``)
          use *alphabetical* order instead (airplane, apple, backpack, ...): reorder before comparing
          per-class numbers with theirs. Images without annotations are dropped (the published
          protocol: 40,137 of val2014's 40,504 images) unless ``keep_empty=True``. Crowd annotations
          count as labels, as in ML-GCN's preprocessing.

``csv``   ``root`` is a folder of images and a CSV of ``image,labels`` rows (an optional header row
          ``image,labels``); ``image`` is a path relative to ``root``; ``labels`` is a list of class
          names separated by ``delimiter`` (default a space; may be empty). The class list comes from
          ``class_names`` or, when not given, is the sorted set of names in the file.

Image ids that would resolve outside their image folder (``../x``, absolute paths) are rejected at
read time. Bad annotations (XML that does not parse or lacks fields, unknown class names, unknown
category ids) raise one :class:`~iagcn.errors.UserError` listing every bad file, or, with
``strict=False``, drop those images and list them in ``DatasetSplit.problems`` / ``bad_ids``
(``iagcn extract --skip-bad``).
"""
from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from iagcn.classes import VOC_CLASSES
from iagcn.errors import UserError
from iagcn.extract.images import find_bad_images
from iagcn.extract.split import DatasetSplit, format_problems, join_inside, raise_or_keep, require_dir
from iagcn.validation import read_user_text, require_unique

DATASET_KINDS = ("voc", "coco", "csv")


# ---------------------------------------------------------------------------------------------------
# PASCAL VOC 2007


def voc_available_splits(root: Path) -> list[str]:
    """Split names with an ``ImageSets/Main/<split>.txt`` (not the per-class ``<class>_<split>.txt``)."""
    main = Path(root) / "ImageSets" / "Main"
    if not main.is_dir():
        return []
    return sorted(p.stem for p in main.glob("*.txt") if not any(p.stem.startswith(c + "_") for c in VOC_CLASSES))


def _parse_voc_xml(path: Path, class_index: dict[str, int]) -> tuple[np.ndarray | None, str | None]:
    """Labels (C,) int8 of one annotation file, or (None, problem)."""
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        return None, f"{path}: annotation file missing"
    except (ET.ParseError, OSError) as e:
        return None, f"{path}: XML does not parse ({e})"
    positive = np.zeros(len(class_index), dtype=bool)   # (C,) has a non-difficult object
    difficult = np.zeros(len(class_index), dtype=bool)  # (C,) has a difficult object
    for k, obj in enumerate(tree.getroot().iter("object")):
        name = obj.findtext("name")
        if name is None or not name.strip():
            return None, f"{path}: object {k} has no <name>"
        name = name.strip()
        if name not in class_index:
            return None, f"{path}: unknown class {name!r} (object {k}); expected one of the 20 VOC classes"
        flag = (obj.findtext("difficult") or "0").strip()  # absent <difficult> means 0, as in the devkit
        if flag not in ("0", "1"):
            return None, f"{path}: object {k} has <difficult>{flag}</difficult>; expected 0 or 1"
        (difficult if flag == "1" else positive)[class_index[name]] = True
    # 1 if a non-difficult object, -1 if only difficult ones, 0 otherwise
    labels = np.where(positive, 1, np.where(difficult, -1, 0)).astype(np.int8)  # (C,)
    return labels, None


def read_voc(root: str | os.PathLike, split: str, *, strict: bool = True, name: str = "voc") -> DatasetSplit:
    """Read a split of a VOC2007-layout dataset (``root`` = the ``VOCdevkit/VOC2007`` folder)."""
    root = Path(root)
    require_dir(root, what="VOC root", hint="pass the VOCdevkit/VOC2007 folder as --root")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        require_dir(root / sub, what="VOC folder", hint=f"--root must be the VOC2007 folder (holding {sub}/)")
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():
        raise UserError(f"VOC split {split!r} not found ({split_file}); available splits: "
                        f"{', '.join(voc_available_splits(root)) or 'none'}")
    # UTF-8 with a leading byte-order mark stripped (it would otherwise become part of the first id)
    ids = [line.split()[0] for line in read_user_text(split_file, what="VOC split file").splitlines() if line.strip()]
    require_unique(ids, what="image id", where=str(split_file), fix="each id must appear once")
    class_index = {c: i for i, c in enumerate(VOC_CLASSES)}
    image_dir, ann_dir = root / "JPEGImages", root / "Annotations"
    rows, kept_ids, paths, problems = [], [], [], {}
    for image_id in ids:
        what = f"{split_file} id {image_id!r}"
        image_path = join_inside(image_dir, image_id + ".jpg", what=what)
        xml_path = join_inside(ann_dir, image_id + ".xml", what=what)
        labels, problem = _parse_voc_xml(xml_path, class_index)
        if problem is not None:
            problems[image_id] = problem
            continue
        rows.append(labels)
        kept_ids.append(image_id)
        paths.append(image_path)
    raise_or_keep(problems, strict=strict, source=f"VOC {root} split {split}")
    labels = np.stack(rows).astype(np.int8) if rows else np.zeros((0, len(VOC_CLASSES)), np.int8)  # (n, C)
    return DatasetSplit(name=name, root=root, split=split, class_names=list(VOC_CLASSES), image_ids=kept_ids,
                        image_paths=paths, labels=labels, problems=list(problems.values()), bad_ids=list(problems))


# ---------------------------------------------------------------------------------------------------
# MS-COCO 2014


def read_coco(root: str | os.PathLike, split: str, *, keep_empty: bool = False, strict: bool = True,
              name: str = "coco") -> DatasetSplit:
    """Read ``annotations/instances_<split>.json`` with images in ``<root>/<split>/``.

    Classes in category-id order; images without annotations dropped unless ``keep_empty``.
    An annotation naming an unknown category id or image id is an error.
    """
    root = Path(root)
    require_dir(root, what="COCO root", hint="pass the folder holding annotations/ and the image folders as --root")
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        available = sorted(p.stem[len("instances_"):] for p in (root / "annotations").glob("instances_*.json"))
        raise UserError(f"COCO split {split!r} not found ({ann_file}); available splits: "
                        f"{', '.join(available) or 'none'}")
    try:
        with open(ann_file, "rb") as fh:
            data = json.load(fh)
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        images = data["images"]
        annotations = data["annotations"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{ann_file}: not valid JSON ({e}); re-download or regenerate it") from e
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ann_file}: missing or malformed field {e}; expected COCO 'images', "
                        "'annotations' and 'categories' lists") from e
    image_dir = root / split
    require_dir(image_dir, what="COCO image folder", hint=f"put the {split} images in {image_dir}")
    try:
        class_names = [str(c["name"]).strip() for c in categories]
        cat_ids = [int(c["id"]) for c in categories]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ann_file}: a category lacks 'id' or 'name' ({e})") from e
    # a repeated category id or name would make two label columns of one class, or file annotations under the wrong
    # column: refused, never guessed
    require_unique([str(i) for i in cat_ids], what="category id", where=f"{ann_file} 'categories'",
                   fix="each category must appear once")
    require_unique(class_names, what="category name", where=f"{ann_file} 'categories'",
                   fix="each category must appear once")
    if any(not n for n in class_names):
        raise UserError(f"{ann_file}: a category has an empty name; name every category")
    cat_index = {cid: i for i, cid in enumerate(cat_ids)}   # category id -> label column
    try:
        raw_image_ids = [int(im["id"]) for im in images]
        file_names = [str(im["file_name"]) for im in images]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ann_file}: an image entry lacks 'id' or 'file_name' ({e})") from e
    require_unique([str(i) for i in raw_image_ids], what="image id", where=f"{ann_file} 'images'",
                   fix="each image must appear once")
    image_index = {image_id: k for k, image_id in enumerate(raw_image_ids)}  # image id -> row
    labels = np.zeros((len(images), len(class_names)), dtype=np.int8)   # (n_all, C)
    has_annotation = np.zeros(len(images), dtype=bool)                    # (n_all,)
    unknown_cats: dict[int, int] = {}
    unknown_images: set = set()
    for a in annotations:
        try:
            image_id, cat_id = int(a["image_id"]), int(a["category_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{ann_file}: annotation {a.get('id', '?') if isinstance(a, dict) else a!r} "
                            f"lacks image_id/category_id ({e})") from e
        if cat_id not in cat_index:
            unknown_cats[cat_id] = unknown_cats.get(cat_id, 0) + 1
            continue
        if image_id not in image_index:
            unknown_images.add(image_id)
            continue
        row = image_index[image_id]
        labels[row, cat_index[cat_id]] = 1
        has_annotation[row] = True
    if unknown_cats:
        raise UserError(f"{ann_file}: annotations use category ids not in 'categories': "
                        + ", ".join(f"{c} ({n} annotations)" for c, n in sorted(unknown_cats.items()))
                        + f"; known ids: {sorted(cat_index)}")
    if unknown_images:
        raise UserError(f"{ann_file}: annotations refer to {len(unknown_images)} image ids not in 'images' "
                        f"(e.g. {sorted(unknown_images)[:5]}); the file is inconsistent")
    keep = np.flatnonzero(has_annotation | keep_empty)
    ids, paths = [], []
    for k in keep:
        fname = file_names[k]
        paths.append(join_inside(image_dir, fname, what=f"{ann_file} image {images[k]['id']}"))
        ids.append(os.path.splitext(fname)[0])
    require_unique(ids, what="image file name", where=f"{ann_file} 'images'", fix="each image must appear once")
    del strict  # COCO annotation errors are file-level: nothing to skip image by image
    return DatasetSplit(name=name, root=root, split=split, class_names=class_names, image_ids=ids,
                        image_paths=paths, labels=labels[keep])


# ---------------------------------------------------------------------------------------------------
# custom CSV datasets


def read_csv_dataset(root: str | os.PathLike, csv_path: str | os.PathLike, *, class_names: list[str] | None = None,
                     delimiter: str = " ", strict: bool = True, name: str = "csv") -> DatasetSplit:
    """Read a CSV of ``image,labels`` rows; images are paths relative to ``root``.

    With ``class_names`` given, a label outside it is an error naming the row; otherwise the class
    list is the sorted set of labels found in the file.
    """
    root, csv_path = Path(root), Path(csv_path)
    require_dir(root, what="image folder", hint="pass the folder the CSV's image paths are relative to as --root")
    if not csv_path.is_file():
        raise UserError(f"CSV file {csv_path} not found; pass an existing image,labels file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:  # a byte-order mark is stripped
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read as CSV ({e}); expected UTF-8 rows 'image,labels'") from e
    entries: list[tuple[int, str, list[str]]] = []  # (line number, image, labels)
    for line_no, row in enumerate(rows, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if line_no == 1 and [c.strip().lower() for c in row] == ["image", "labels"]:
            continue  # header
        if len(row) != 2:
            raise UserError(f"{csv_path} row {line_no}: expected 2 columns 'image,labels', got {len(row)}; "
                            "quote fields that contain commas")
        image, label_field = row[0].strip(), row[1]
        labels = [t.strip() for t in label_field.split(delimiter)] if delimiter.strip() else label_field.split()
        entries.append((line_no, image, [t for t in labels if t]))
    if class_names is None:
        class_names = sorted({t for _, _, labels in entries for t in labels})
        if not class_names:
            raise UserError(f"{csv_path}: no labels in the file; pass the class list with --classes")
    else:
        class_names = list(class_names)
        require_unique(class_names, what="class name", where=f"class list for {csv_path}",
                       fix="each class must appear once")
    class_index = {c: i for i, c in enumerate(class_names)}
    label_rows, ids, paths, seen = [], [], [], {}
    problems: dict[str, str] = {}
    for line_no, image, labels in entries:
        what = f"{csv_path} row {line_no}"
        path = join_inside(root, image, what=what)
        if image in seen:
            raise UserError(f"{what}: image {image!r} already listed in row {seen[image]}; list each image once")
        seen[image] = line_no
        unknown = [t for t in labels if t not in class_index]
        if unknown:
            problems[image] = f"{what}: unknown labels {unknown} (image {image!r}); known: {class_names}"
            continue
        vec = np.zeros(len(class_names), dtype=np.int8)  # (C,)
        vec[[class_index[t] for t in labels]] = 1
        label_rows.append(vec)
        ids.append(image)
        paths.append(path)
    raise_or_keep(problems, strict=strict, source=f"CSV {csv_path}")
    labels_arr = np.stack(label_rows) if label_rows else np.zeros((0, len(class_names)), np.int8)  # (n, C)
    return DatasetSplit(name=name, root=root, split=csv_path.stem, class_names=class_names, image_ids=ids,
                        image_paths=paths, labels=labels_arr, problems=list(problems.values()), bad_ids=list(problems))


# ---------------------------------------------------------------------------------------------------
# dispatcher


def load_dataset(kind: str, root: str | os.PathLike, split: str, **options) -> DatasetSplit:
    """Read split ``split`` of a ``voc`` | ``coco`` | ``csv`` dataset.

    For ``csv``, ``split`` is the CSV file: a path, or a name resolved as ``<root>/<split>.csv``.
    Options are passed to the reader (``strict``, ``keep_empty``, ``class_names``, ``delimiter``).
    """
    if kind == "voc":
        return read_voc(root, split, **options)
    if kind == "coco":
        return read_coco(root, split, **options)
    if kind == "csv":
        csv_path = Path(split)
        if not csv_path.is_file() and (Path(root) / f"{split}.csv").is_file():
            csv_path = Path(root) / f"{split}.csv"
        return read_csv_dataset(root, csv_path, **options)
    raise UserError(f"--dataset {kind!r} is not known; choose one of {', '.join(DATASET_KINDS)}")


def preflight(ds: DatasetSplit, *, check_decode: bool = True, workers: int | None = None,
              progress: bool = False) -> list[str]:
    """Every problem with ``ds`` at once: bad annotations seen while reading, then bad images.

    Returns an empty list when the split is ready to extract. ``check_decode=False`` only reads
    headers (fast, but misses truncated files).
    """
    bad = find_bad_images(ds, check_decode=check_decode, workers=workers, progress=progress)
    return [*ds.problems, *bad.values()]


def raise_on_problems(problems: list[str], *, what: str) -> None:
    """Raise one UserError listing ``problems`` (no-op when empty)."""
    if problems:
        raise UserError(format_problems(f"{what}: pre-flight found problems", problems,
                                         "fix them, or rerun with --skip-bad to leave these images out"))
