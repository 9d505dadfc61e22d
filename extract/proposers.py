"""Region proposers: exactly N boxes per image, from the image alone (proposers never see labels).

Every proposer returns, per image, :class:`Proposals` with

    boxes  (N, 4) float32  x1 y1 x2 y2 in original-image pixels
    scores (N,)   float32  the proposer's ranking score (higher first)
    valid  (N,)   bool     False for padding: when fewer than N boxes survive NMS, the rest are whole-image
                           boxes with score 0 (paper-decisions.md, "Features")

``selective-search``  OpenCV contrib selective search (fast mode) at a reduced resolution; the offline default.
                      Runs on CPU inside the DataLoader workers (``runs_in_loader``).
``torchvision``       the RPN of torchvision's Faster R-CNN ResNet-50 FPN (COCO weights), run at its own resolution.
``detectron2``        a Faster R-CNN RPN from Detectron2's model zoo (optional dependency; see docs/detectron2.md).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from iagcn.errors import UserError
# the shared parts live in proposal_common (imported by the Detectron2 adapter too: no import loop); re-exported here
from iagcn.extract.proposal_common import (  # noqa: F401
    DETECTRON2_DEFAULT_CONFIG, PROPOSAL_NMS_IOU, RPN_DEFAULT_MAX_SIZE, RPN_DEFAULT_MIN_SIZE, Proposals, Proposer,
    rpn_max_size, top_n_with_padding)
from iagcn.fsutil import sha256_file


# -- selective search -------------------------------------------------------------------------------------
def _seed_c_rand(seed: int) -> None:
    """Seed the C library's ``rand()``, which OpenCV's selective search uses to rank its regions."""
    import ctypes

    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None)
    _LIBC.srand(ctypes.c_uint(seed))


_LIBC = None


class SelectiveSearchProposer:
    """OpenCV contrib selective search, fast mode, on the image resized so its longer side is ``max_side``.

    Ranking: OpenCV returns regions in its own hierarchical order (a pseudo-random ``level``-weighted rank
    drawn with the C library's ``rand()``, measured: unseeded, two runs on one image differ); we reseed
    ``srand`` (and OpenCV's RNG) before every image and score the i-th of M regions ``1 - i / M``, so the
    ranking is a pure function of the image and the seed. Regions smaller than ``min_side_frac`` of the image side are
    dropped (texture fragments), then NMS at PROPOSAL_NMS_IOU and the top N.

    Args:
        num_rois: N. max_side: processing resolution (longer side, pixels). min_side_frac: smallest box side
        kept, as a fraction of the image's shorter side. seed: OpenCV RNG seed.
    """

    name = "selective-search"
    weights_sha256 = "none"
    runs_in_loader = True

    def __init__(self, *, num_rois: int = 40, max_side: int = 256, min_side_frac: float = 0.05, seed: int = 0) -> None:
        self.num_rois = num_rois
        self.max_side = max_side
        self.min_side_frac = min_side_frac
        self.seed = seed

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        import cv2

        cv2.setNumThreads(1)  # deterministic and polite inside each worker
        out = []
        for image in images:
            h, w = image.shape[:2]
            scale = min(1.0, self.max_side / max(h, w))
            small = image if scale == 1.0 else cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
            bgr = np.ascontiguousarray(small[:, :, ::-1])  # (h', w', 3) OpenCV order
            _seed_c_rand(self.seed)
            cv2.setRNGSeed(self.seed)
            ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
            ss.setBaseImage(bgr)
            ss.switchToSelectiveSearchFast()
            rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)  # (M, 4) x y w h at small scale
            m = len(rects)
            scores = 1.0 - np.arange(m, dtype=np.float32) / max(m, 1)  # (M,) rank order
            min_side = self.min_side_frac * min(small.shape[:2])
            big = (rects[:, 2] >= min_side) & (rects[:, 3] >= min_side)
            rects, scores = rects[big], scores[big]
            sx, sy = w / small.shape[1], h / small.shape[0]
            boxes = np.stack([rects[:, 0] * sx, rects[:, 1] * sy, (rects[:, 0] + rects[:, 2]) * sx,
                              (rects[:, 1] + rects[:, 3]) * sy], axis=1)  # (M', 4) original pixels
            out.append(top_n_with_padding(boxes, scores, num=self.num_rois, height=h, width=w))
        return out


# -- torchvision RPN --------------------------------------------------------------------------------------

class TorchvisionRPNProposer:
    """The region proposal network of torchvision's ``fasterrcnn_resnet50_fpn`` (no detection head).

    Each image goes *alone* through the model's own transform (shorter side ``min_size``, default 800 as
    trained), the FPN backbone and the RPN; boxes come back in the resized frame and are scaled to original
    pixels. Scores are the RPN objectness logits. One image at a time because a batch pads every image to the
    batch's largest one, and the padding changes the features near the border and so the boxes (measured: up
    to 173 px between a batch of 6 and a batch of 1): an image's proposals, and the cache, would depend on
    ``--batch-size`` and on its neighbours.

    Args:
        num_rois: N. weights: ``coco`` (torchvision weight API), a state-dict path (full Faster R-CNN),
        or ``none`` (random, tests only). min_size, max_size: the transform's resize. device: where it runs.
    """

    name = "torchvision"
    runs_in_loader = False

    def __init__(self, *, num_rois: int = 40, weights: str = "coco", min_size: int = RPN_DEFAULT_MIN_SIZE,
                 max_size: int = RPN_DEFAULT_MAX_SIZE, device: str = "cpu") -> None:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn

        from iagcn.extract.backbones import seeded_init

        self.num_rois = num_rois
        with seeded_init():  # weights "none": the same random RPN in every run
            model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
        if weights == "coco":
            api = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
            try:
                sd = api.get_state_dict(progress=True, check_hash=True)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"--proposer-weights coco: could not download torchvision's Faster R-CNN weights "
                                f"({type(e).__name__}); go online once or pass --proposer-weights PATH") from e
            model.load_state_dict(sd)
            self.weights_sha256 = sha256_file(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(api.url))
        elif weights == "none":
            self.weights_sha256 = "none"
        else:
            path = Path(weights)
            if not path.is_file():
                raise UserError(f"--proposer-weights {path}: no such file; give a Faster R-CNN state dict, 'coco' or 'none'")
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except Exception as e:  # noqa: BLE001
                raise UserError(f"--proposer-weights {path}: not a fasterrcnn_resnet50_fpn state dict "
                                f"({type(e).__name__}); check the file") from e
            self.weights_sha256 = sha256_file(path)
        self.device = torch.device(device)
        self.transform = model.transform.eval().to(self.device)
        self.backbone = model.backbone.eval().to(self.device)
        self.rpn = model.rpn.eval().to(self.device)

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        return [self._propose_one(im) for im in images]  # one at a time: independent of the batch (class docstring)

    @torch.inference_mode()
    def _propose_one(self, image: np.ndarray) -> Proposals:
        from torchvision.models.detection.rpn import concat_box_prediction_layers

        h, w = image.shape[:2]
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).to(self.device).float().div_(255)  # (3, H, W)
        image_list, _ = self.transform([x])  # (1, 3, H', W') resized, padded to a multiple of 32
        features = list(self.backbone(image_list.tensors).values())  # FPN levels, each (1, 256, h_l, w_l)
        objectness, deltas = self.rpn.head(features)  # per level (1, A, h_l, w_l), (1, 4A, h_l, w_l)
        anchors = self.rpn.anchor_generator(image_list, features)  # 1 x (K, 4)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # (K, 1), (K, 4)
        boxes = self.rpn.box_coder.decode(deltas, anchors).view(1, -1, 4)  # (1, K, 4)
        boxes, scores = self.rpn.filter_proposals(boxes, objectness, image_list.image_sizes, per_level)
        rh, rw = image_list.image_sizes[0]
        scale = torch.tensor([w / rw, h / rh, w / rw, h / rh], device=boxes[0].device)  # resized -> original
        return top_n_with_padding((boxes[0].float() * scale).cpu().numpy(), scores[0].float().cpu().numpy(),
                                  num=self.num_rois, height=h, width=w)


PROPOSERS = ("selective-search", "torchvision", "detectron2")


def build_proposer(name: str, *, num_rois: int, weights: str | None = None, image_size: int | None = None,
                   detectron2_config: str = DETECTRON2_DEFAULT_CONFIG, device: str = "cpu") -> Proposer:
    """The proposer ``name``. ``weights``: None for its default (``coco``/``zoo``), a path, or ``none``;
    ``image_size``: its processing resolution (selective search: longer side; RPNs: shorter side, the longer
    side capped in the trained ratio 1333/800), None for default."""
    if num_rois < 1:
        raise UserError(f"--num-rois {num_rois}: must be at least 1")
    if image_size is not None and image_size < 32:
        raise UserError(f"--proposer-image-size {image_size}: must be at least 32")
    if name == "selective-search":
        if weights not in (None, "none"):
            raise UserError(f"--proposer-weights {weights}: selective search has no weights; drop the option")
        return SelectiveSearchProposer(num_rois=num_rois, max_side=image_size or 256)
    if name == "torchvision":
        size = image_size or RPN_DEFAULT_MIN_SIZE
        return TorchvisionRPNProposer(num_rois=num_rois, weights=weights or "coco", min_size=size,
                                      max_size=rpn_max_size(size), device=device)
    if name == "detectron2":
        from iagcn.extract.detectron2_rpn import Detectron2RPNProposer

        return Detectron2RPNProposer(num_rois=num_rois, config=detectron2_config, weights=weights or "zoo",
                                     min_size=image_size, device=device)
    raise UserError(f"--proposer {name}: unknown; choose one of {', '.join(PROPOSERS)}")
