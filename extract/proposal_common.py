"""What every proposer shares: :class:`Proposals` (exactly N boxes per image), the :class:`Proposer` protocol,
the top-N selection with padding, and the RPNs' resize defaults (the contract: :mod:`iagcn.extract.proposers`).

A module of its own so that the optional Detectron2 adapter (:mod:`iagcn.extract.detectron2_rpn`) and
:mod:`iagcn.extract.proposers` both import it and never each other the other way round: ``proposers`` imports the
adapter (lazily, for ``--proposer detectron2``), the adapter imports only this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch


#: IoU above which a lower-ranked proposal is suppressed when picking the top N
PROPOSAL_NMS_IOU = 0.7


@dataclass(frozen=True)
class Proposals:
    """Exactly N proposals of one image (see module docstring)."""

    boxes: np.ndarray   # (N, 4) float32, x1 y1 x2 y2, original pixels
    scores: np.ndarray  # (N,) float32
    valid: np.ndarray   # (N,) bool


class Proposer(Protocol):
    name: str
    weights_sha256: str
    #: True: ``propose`` runs on CPU in DataLoader workers on decoded images; False: in the main process on ``device``
    runs_in_loader: bool

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        """RGB uint8 images, each (H, W, 3) at original size -> exactly N proposals each."""
        ...


def top_n_with_padding(boxes: np.ndarray, scores: np.ndarray, *, num: int, height: int, width: int,
                       nms_iou: float = PROPOSAL_NMS_IOU) -> Proposals:
    """Clip, drop empty boxes, rank by score (ties: original order), greedy NMS, keep the top ``num``, pad.

    boxes (M, 4) x1 y1 x2 y2 in original pixels, scores (M,). Deterministic: a stable sort and torchvision's NMS.
    """
    from torchvision.ops import nms

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # (M, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)  # (M,)
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1) & np.isfinite(scores)
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")  # (M',)
    boxes, scores = boxes[order], scores[order]
    if len(boxes):
        kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), nms_iou).numpy()  # indices, score order
        # torchvision's nms orders equal scores arbitrarily: restore rank order among the survivors
        kept = np.sort(kept)[:num]
        boxes, scores = boxes[kept], scores[kept]
    n_valid = len(boxes)
    out_boxes = np.tile(np.array([0, 0, width, height], dtype=np.float32), (num, 1))  # (N, 4) whole image
    out_scores = np.zeros(num, dtype=np.float32)  # (N,)
    valid = np.zeros(num, dtype=bool)  # (N,)
    out_boxes[:n_valid], out_scores[:n_valid], valid[:n_valid] = boxes, scores, True
    return Proposals(boxes=out_boxes, scores=out_scores, valid=valid)


#: both RPNs were trained with shorter side 800, longer side at most 1333; --proposer-image-size keeps that ratio
RPN_DEFAULT_MIN_SIZE, RPN_DEFAULT_MAX_SIZE = 800, 1333


def rpn_max_size(min_size: int) -> int:
    """The longer-side cap that goes with shorter side ``min_size`` (1333 for 800, as both RPNs were trained)."""
    return max(min_size, round(min_size * RPN_DEFAULT_MAX_SIZE / RPN_DEFAULT_MIN_SIZE))


#: the Detectron2 model-zoo config of ``--proposer detectron2`` (the R50-FPN Faster R-CNN, 3x schedule)
DETECTRON2_DEFAULT_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
