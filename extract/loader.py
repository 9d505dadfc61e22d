"""Stage one's image loader: a map-style dataset over the rows of a split (decode, squash-resize, CPU proposer),
and the block-aligned batches that keep a block's arrays independent of where a run started or stopped."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np


class ImageRows:
    """Map-style dataset over rows of a split: decode (``image_loader``), squash-resize, propose (if on CPU)."""

    def __init__(self, paths: Sequence[Path], *, image_size: int, image_loader: Callable[[Path], Any],
                 proposer=None) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.image_loader = image_loader
        self.proposer = proposer  # a proposer that runs_in_loader, else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> dict[str, Any]:
        from PIL import Image

        image = self.image_loader(self.paths[row])  # PIL RGB, EXIF-transposed
        original = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
        resized = np.asarray(image.resize((self.image_size, self.image_size), Image.BILINEAR), dtype=np.uint8)
        item = {"row": row, "size": original.shape[:2], "input": resized.transpose(2, 0, 1).copy()}  # (3, S, S)
        if self.proposer is not None:
            t0 = time.perf_counter()
            props = self.proposer.propose([original])[0]
            item.update(boxes=props.boxes, scores=props.scores, valid=props.valid, proposer_s=time.perf_counter() - t0)
        else:
            item["original"] = original
        return item


def collate_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def worker_init(worker_id: int) -> None:
    """Every DataLoader worker: dies with the parent, leaves Ctrl-C to it (iagcn.processes), one thread."""
    import torch

    from iagcn.processes import worker_setup

    worker_setup(worker_id)
    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)


def batches_of_blocks(blocks: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Row-index batches, each inside one block, chunked from the block's start."""
    return [list(range(s, min(stop, s + batch_size))) for start, stop in blocks for s in range(start, stop, batch_size)]
