"""Stage one's crash-safe progress: one ``<out>.partial/rows-<start>-<stop>.npz`` per committed block.

Each finished block is committed under a temporary name, fsynced and renamed; ``config.json`` in the part folder
is the header of the extraction the parts belong to (parts of another config are discarded on open).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import atomic_path, write_json_atomic
from iagcn.validation import check_numpy_file

PART_FIELDS = ("global", "regions", "boxes", "box_scores", "box_valid", "image_sizes")


def part_path(partial: Path, start: int, stop: int) -> Path:
    return partial / f"rows-{start:09d}-{stop:09d}.npz"


def write_part(partial: Path, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
    """Commit one block: temporary name, fsync, rename. A failure removes the temporary (disk full: UserError)."""
    final = part_path(partial, start, stop)
    with atomic_path(final, what="block", disk_full_hint=f"the blocks already committed stay in {partial}: "
                     f"free space and rerun the same command to resume") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def read_part(path: Path) -> dict[str, np.ndarray] | None:
    try:
        check_numpy_file(path, where=str(path))     # a damaged part's sizes: recomputed, never allocated
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in PART_FIELDS}
    except Exception:  # noqa: BLE001 -- an unreadable part is simply recomputed
        return None


def open_partial(partial: Path, header: dict[str, Any], *, log: Callable[[str], None]) -> set[tuple[int, int]]:
    """Prepare the part folder for ``header``; return the committed (start, stop) blocks that match it."""
    head_file = partial / "config.json"
    if partial.exists():
        try:
            old = json.loads(head_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != header:
            log(f"note: {partial} holds parts of a different extraction config; discarding them")
            shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob(".*tmp-*"):
        stale.unlink(missing_ok=True)
    if not head_file.exists():
        write_json_atomic(head_file, header, what="extraction progress header")
    done = set()
    for p in partial.glob("rows-*-*.npz"):
        _, a, b = p.stem.split("-")
        done.add((int(a), int(b)))
    return done


def check_finite_part(part: dict[str, np.ndarray], partial: Path, start: int, image_ids) -> None:
    """NaN/Inf features (a broken backbone or weights file) are refused, never written into a cache."""
    for name in ("global", "regions"):
        arr = part[name]
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(1)  # (rows,)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise UserError(f"non-finite {name} features (NaN/Inf) for image {image_ids[row]} (row {row}); "
                            f"check --weights (nothing was written; the parts stay in {partial})")




def empty_block(blk: tuple[int, int], num_rois: int, dim: int) -> dict[str, np.ndarray]:
    n = blk[1] - blk[0]
    return {"global": np.zeros((n, dim), np.float16), "regions": np.zeros((n, num_rois, dim), np.float16),
            "boxes": np.zeros((n, num_rois, 4), np.float32), "box_scores": np.zeros((n, num_rois), np.float32),
            "box_valid": np.zeros((n, num_rois), bool), "image_sizes": np.zeros((n, 2), np.int32),
            "_filled": np.zeros(n, bool)}
