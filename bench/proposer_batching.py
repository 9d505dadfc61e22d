"""Time the torchvision RPN run one image at a time (what iagcn does) against one padded batch (what it did).

    OMP_NUM_THREADS=2 .venv/bin/python bench/proposer_batching.py [--size 800] [--images 6] [--repeats 3]

Random weights (no download); VOC-like image sizes. Also prints how far the boxes of the first image move between
its batched and its alone run (the reason for the change). ``--device cuda`` times it on a GPU.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def batched(p, images):
    """The previous code path: every image of the batch padded to the batch's largest resized image."""
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    from iagcn.extract.proposers import top_n_with_padding

    with torch.inference_mode():
        tensors = [torch.from_numpy(im).permute(2, 0, 1).to(p.device).float().div_(255) for im in images]
        image_list, _ = p.transform(tensors)
        features = list(p.backbone(image_list.tensors).values())
        objectness, deltas = p.rpn.head(features)
        anchors = p.rpn.anchor_generator(image_list, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        boxes = p.rpn.box_coder.decode(deltas, anchors).view(len(tensors), -1, 4)
        boxes, scores = p.rpn.filter_proposals(boxes, objectness, image_list.image_sizes, per_level)
        out = []
        for im, (rh, rw), b, s in zip(images, image_list.image_sizes, boxes, scores):
            h, w = im.shape[:2]
            scale = torch.tensor([w / rw, h / rh, w / rw, h / rh], device=b.device)
            out.append(top_n_with_padding((b * scale).cpu().numpy(), s.cpu().numpy(), num=p.num_rois, height=h, width=w))
        return out


def main() -> None:
    from iagcn.extract.proposers import build_proposer

    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--landscape-only", action="store_true",
                    help="only landscape images (little padding: the case most favourable to batching)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shapes = [(375, 500), (500, 375), (333, 500), (500, 332), (281, 500), (375, 500), (500, 400), (240, 320)]
    if args.landscape_only:
        shapes = [(h, w) for h, w in shapes if w > h]
    images = [(rng.random((*shapes[i % len(shapes)], 3)) * 255).astype(np.uint8) for i in range(args.images)]
    p = build_proposer("torchvision", num_rois=40, weights="none", image_size=args.size, device=args.device)
    alone = p.propose(images[:1])[0]
    moved = np.abs(batched(p, images)[0].boxes - alone.boxes).max()
    times = {"per image": [], "batched": []}
    for _ in range(args.repeats):
        for name, run in (("per image", p.propose), ("batched", lambda ims: batched(p, ims))):
            if args.device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            run(images)
            if args.device != "cpu":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) / len(images) for k, v in times.items()}
    print(f"torchvision RPN on {args.device}, shorter side {args.size}, {len(images)} images, "
          f"{torch.get_num_threads()} threads, "
          f"best of {args.repeats}: per image {best['per image']:.3f} s/img, batched {best['batched']:.3f} s/img "
          f"({best['per image'] / best['batched']:.2f}x); image 0 boxes batched vs alone: max |diff| {moved:.1f} px")


if __name__ == "__main__":
    main()
