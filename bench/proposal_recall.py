"""Recall of the ground-truth boxes by a proposer's N proposals, on a VOC-layout folder (e.g. the shared real photos).

    python -m bench.proposal_recall --voc-root ../shared/data/voc2007-real/VOCdevkit/VOC2007 --split val \
        --images 50 --proposer torchvision:coco --proposer detectron2:zoo

Recall at IoU t = the fraction of ground-truth boxes (objects with a ``<bndbox>``; VOC's 1-based pixel
coordinates) that some valid proposal of their image overlaps with IoU >= t. ``--proposer NAME:WEIGHTS`` as
``iagcn extract`` takes them (``none``: random weights, whose recall says only that the code runs).
"""
from __future__ import annotations

import argparse
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np


def voc_boxes(xml_path: Path) -> tuple[np.ndarray, int]:
    """Ground-truth boxes (K, 4) x1 y1 x2 y2 in 0-based pixels of one VOC annotation, and how many objects had no
    ``<bndbox>`` (skipped)."""
    boxes, no_box = [], 0
    for obj in ET.parse(xml_path).getroot().iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            no_box += 1
            continue
        x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([x1 - 1, y1 - 1, x2, y2])  # VOC: 1-based inclusive pixel indices
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), no_box


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (K, 4) with every box of ``b`` (M, 4): (K, M)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)  # (K, M)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # (K,)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (M,)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def best_overlaps(gt: np.ndarray, proposals) -> np.ndarray:
    """For each ground-truth box (K, 4), its best IoU with a valid proposal of the same image: (K,)."""
    valid = proposals.boxes[proposals.valid]  # (M, 4)
    if len(gt) == 0:
        return np.zeros(0, np.float32)
    if len(valid) == 0:
        return np.zeros(len(gt), np.float32)
    return box_iou(gt, valid).max(axis=1)


def recall_table(root: Path, split: str, *, proposers: list[str], images: int, num_rois: int,
                 image_size: int | None, ious: tuple[float, ...], log=print) -> list[dict]:
    from iagcn.extract.datasets import read_voc
    from iagcn.extract.images import load_image_rgb
    from iagcn.extract.proposers import build_proposer

    ds = read_voc(root, split, strict=False)
    ids, paths = ds.image_ids[:images], ds.image_paths[:images]
    photos = [np.asarray(load_image_rgb(p), dtype=np.uint8) for p in paths]
    gts, skipped = zip(*(voc_boxes(Path(root) / "Annotations" / f"{i}.xml") for i in ids))
    rows = []
    for spec in proposers:
        name, _, weights = spec.partition(":")
        p = build_proposer(name, num_rois=num_rois, weights=weights or None, image_size=image_size, device="cpu")
        t0 = time.perf_counter()
        out = p.propose(photos)
        seconds = (time.perf_counter() - t0) / len(photos)
        best = np.concatenate([best_overlaps(g, r) for g, r in zip(gts, out)])  # (total GT boxes,)
        row = {"proposer": name, "weights": weights or "default", "images": len(photos), "gt_boxes": int(len(best)),
               "objects_without_box": int(sum(skipped)), "valid_per_image": float(np.mean([r.valid.sum() for r in out])),
               "s_per_image": seconds, **{f"recall@{t}": float((best >= t).mean()) for t in ious}}
        rows.append(row)
        log(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.proposal_recall", description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", required=True, type=Path, help="a VOC2007-layout folder")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images", type=int, default=50, help="the first K images of the split [50]")
    ap.add_argument("--proposer", action="append", default=None,
                    help="NAME[:WEIGHTS], repeatable [torchvision:coco, detectron2:zoo]")
    ap.add_argument("--num-rois", type=int, default=40)
    ap.add_argument("--image-size", type=int, default=None, help="--proposer-image-size [each proposer's default]")
    ap.add_argument("--iou", default="0.5,0.7", help="IoU thresholds, comma-separated [0.5,0.7]")
    args = ap.parse_args(argv)
    from iagcn.errors import UserError

    ious = tuple(float(x) for x in args.iou.split(","))
    try:
        rows = recall_table(args.voc_root, args.split, proposers=args.proposer or ["torchvision:coco", "detectron2:zoo"],
                            images=args.images, num_rois=args.num_rois, image_size=args.image_size, ious=ious)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
