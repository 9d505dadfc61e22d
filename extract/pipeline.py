"""Stage one: turn a dataset split into one feature cache (global feature x, ROI features X, proposals).

Per image (paper-decisions.md, "Features"):

    fmap = backbone.forward_features(squash_resize(image))      (B, D, h, w)  last feature map
    x    = max over (h, w) of fmap                              (B, D)        global max pooling
    X    = max over the k x k grid of RoIAlign(fmap, boxes)     (B, N, D)     boxes mapped into fmap coordinates

Resumable and shardable, bit for bit:
  * Rows are grouped into fixed *blocks* of ``block_rows`` on a grid that starts at row 0 of the (filtered)
    split, and every batch lies inside one block, chunked the same way every time. So a block's arrays depend
    only on its images and the config, never on where a run started or stopped.
  * Each finished block is committed as ``<out>.partial/rows-<start>-<stop>.npz`` (temporary name, fsync,
    rename); HDF5 is not crash-safe, so the cache itself is assembled only at the end, through
    ``cache.format.CacheWriter`` (temporary, then rename), after which the part folder is removed.
  * A rerun after a kill at any moment keeps the parts whose config hash matches and computes the rest.
  * ``--shard i/n`` takes a contiguous range of whole blocks; ``merge_shards`` checks and concatenates.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from iagcn.configio import config_hash, config_to_dict
from iagcn.errors import UserError
from iagcn.fsutil import atomic_path, check_can_create, check_free_space, check_writable_dir, exclusive_lock, interrupt_hint, \
    is_disk_full, remove_stale_temporaries, write_json_atomic


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines a cache's contents (plus execution knobs that do not; see ``identity``)."""

    dataset: str = "voc"                      # dataset reader: voc | coco | csv
    root: str = ""                            # dataset root folder (VOCdevkit/VOC2007, the COCO folder, the image folder)
    split: str = "trainval"                   # split name (VOC ImageSets/Main/<split>.txt, COCO instances_<split>.json)
    csv: str | None = None                    # csv reader: the image,labels file
    classes: str | None = None                # csv reader: comma-separated class list or a file of names (None: from the CSV)
    keep_empty: bool = False                  # coco reader: keep images without annotations (published protocol drops them)
    backbone: str = "efficientnet-lite0"      # efficientnet-lite0 (offline default) | resnet101 (the paper)
    weights: str = "imagenet"                 # imagenet (bundled / torchvision API) | none (random, tests) | state-dict path
    proposer: str = "selective-search"        # selective-search (offline default) | torchvision | detectron2
    proposer_weights: str | None = None       # None: proposer default (coco / zoo) | none | path
    proposer_image_size: int | None = None    # proposer resolution: selective search longer side (256), RPN shorter side (800)
    detectron2_config: str = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"  # detectron2 model-zoo config name
    num_rois: int = 40                        # N proposals per image (padded with invalid whole-image boxes)
    image_size: int | None = None             # square backbone input side; None: the backbone's default (448 / 320)
    roi_output_size: int = 7                  # RoIAlign grid k x k, max-pooled into one region feature
    roi_sampling_ratio: int = 2               # RoIAlign bilinear samples per grid cell side
    label_embeddings: str = "onehot"          # glove:PATH | onehot | npy:PATH (label-node inputs H0)
    batch_size: int = 16                      # images per backbone batch (batches never straddle a block)
    block_rows: int = 64                      # rows per committed part file (resume granularity, shard alignment)
    workers: int = 2                          # DataLoader worker processes (decode, resize, selective search)
    device: str = "auto"                      # auto | cpu | cuda
    threads: int = 0                          # torch intra-op threads in the main process (0: torch's default)
    shard: str | None = None                  # "i/n": extract only shard i of n (contiguous whole blocks)
    skip_bad: bool = False                    # proceed past pre-flight problems, skipping (and recording) bad images

    def identity(self) -> "ExtractConfig":
        """The config with execution-only fields neutralised: what the cache's ``extract_config`` records.

        ``workers``, ``threads`` and ``shard`` never change the arrays; ``device`` is resolved to cpu/cuda.
        """
        return dataclasses.replace(self, workers=0, threads=0, shard=None, device=resolve_device(self.device))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return device


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return i, n


def shard_rows(num_rows: int, *, block_rows: int, index: int, count: int) -> tuple[int, int]:
    """Row range [start, stop) of shard ``index`` of ``count``: a contiguous run of whole blocks."""
    num_blocks = -(-num_rows // block_rows)
    b0, b1 = index * num_blocks // count, (index + 1) * num_blocks // count
    return min(num_rows, b0 * block_rows), min(num_rows, b1 * block_rows)


# -- features -----------------------------------------------------------------------------------------------
def global_max_pool(fmap):
    """Global feature x: (B, D, h, w) -> (B, D)."""
    return fmap.amax(dim=(2, 3))  # (B, D)


def boxes_to_map(boxes, *, image_sizes, map_size: tuple[int, int]):
    """Original-pixel boxes (B, N, 4) -> feature-map coordinates (B, N, 4).

    The backbone sees every image squash-resized to its input, whose last map is (h, w): a point (x, y) of an
    H x W image lands at (x * w / W, y * h / H) on the map. Scales come from the actual map, so nothing is
    tied to one input size. image_sizes (B, 2) original (H, W).
    """
    import torch

    h, w = map_size
    hw = image_sizes.to(boxes.dtype)  # (B, 2)
    scale = torch.stack([w / hw[:, 1], h / hw[:, 0], w / hw[:, 1], h / hw[:, 0]], dim=1)  # (B, 4)
    return boxes * scale[:, None, :]  # (B, N, 4)


def region_features(fmap, map_boxes, *, output_size: int, sampling_ratio: int):
    """ROI features X: RoIAlign each box on the last map, then max over its k x k grid.

    fmap (B, D, h, w), map_boxes (B, N, 4) in map coordinates -> (B, N, D).
    """
    from torchvision.ops import roi_align

    B, D = fmap.shape[:2]
    N = map_boxes.shape[1]
    pooled = roi_align(fmap, list(map_boxes.unbind(0)), output_size=output_size, spatial_scale=1.0,
                       sampling_ratio=sampling_ratio, aligned=True)  # (B*N, D, k, k)
    return pooled.amax(dim=(2, 3)).view(B, N, D)  # (B, N, D)


# -- data loading -------------------------------------------------------------------------------------------
class _ImageRows:
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


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        import cv2

        cv2.setNumThreads(1)


def _batches_of_blocks(blocks: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Row-index batches, each inside one block, chunked from the block's start."""
    return [list(range(s, min(stop, s + batch_size))) for start, stop in blocks for s in range(start, stop, batch_size)]


# -- part files (crash-safe progress) -----------------------------------------------------------------------
PART_FIELDS = ("global", "regions", "boxes", "box_scores", "box_valid", "image_sizes")


def _part_path(partial: Path, start: int, stop: int) -> Path:
    return partial / f"rows-{start:09d}-{stop:09d}.npz"


def _write_part(partial: Path, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
    """Commit one block: temporary name, fsync, rename. A failure removes the temporary (disk full: UserError)."""
    final = _part_path(partial, start, stop)
    with atomic_path(final, what="block", disk_full_hint=f"the blocks already committed stay in {partial}: "
                     f"free space and rerun the same command to resume") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _read_part(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in PART_FIELDS}
    except Exception:  # noqa: BLE001 -- an unreadable part is simply recomputed
        return None


def _open_partial(partial: Path, header: dict[str, Any], *, log: Callable[[str], None]) -> set[tuple[int, int]]:
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


# -- the extraction -----------------------------------------------------------------------------------------
def validate_options(cfg: ExtractConfig) -> None:
    """Out-of-range numeric options -> one-line UserError naming the option (before any work is done)."""
    for name, value in (("--batch-size", cfg.batch_size), ("--block-rows", cfg.block_rows),
                        ("--num-rois", cfg.num_rois), ("--roi-output-size", cfg.roi_output_size),
                        ("--roi-sampling-ratio", cfg.roi_sampling_ratio)):
        if value < 1:
            raise UserError(f"{name} {value}: must be at least 1")
    for name, value in (("--image-size", cfg.image_size), ("--proposer-image-size", cfg.proposer_image_size)):
        if value is not None and value < 32:
            raise UserError(f"{name} {value}: must be at least 32 pixels")
    if cfg.workers < 0:
        raise UserError(f"--workers {cfg.workers}: must be 0 or more")
    if cfg.threads < 0:
        raise UserError(f"--threads {cfg.threads}: must be 0 (torch default) or more")
    parse_shard(cfg.shard)


def estimated_bytes(rows: int, *, num_rois: int, feature_dim: int, num_classes: int) -> int:
    """Bytes of ``rows`` cache rows (float16 features, float32 boxes/scores, labels, ids): see cache/format.py."""
    per_row = (num_rois + 1) * feature_dim * 2 + num_rois * (16 + 4 + 1) + num_classes + 8 + 64
    return rows * per_row


@dataclass
class ExtractStats:
    """Where the time went (seconds, over the rows computed in this run)."""

    images: int = 0
    wall_s: float = 0.0
    backbone_s: float = 0.0       # normalise + forward_features + pooling + RoIAlign, main process
    proposer_s: float = 0.0       # summed per-image proposer time (in workers for selective search)
    loader_wait_s: float = 0.0    # main process waiting for the DataLoader (decode, resize, CPU proposer)
    write_s: float = 0.0          # part files + final assembly


def extract_split(ds, cfg: ExtractConfig, out: str | os.PathLike, *, label_embeddings: tuple[np.ndarray, str],
                  skipped_ids: Sequence[str] = (), image_loader: Callable[[Path], Any] | None = None,
                  progress: bool = True, log: Callable[[str], None] | None = None) -> ExtractStats:
    """Extract ``ds`` (a DatasetSplit, already filtered of skipped images) into the cache ``out``.

    Resumes from ``<out>.partial/``; with ``cfg.shard`` writes one shard file. Returns timing stats.
    """
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if image_loader is None:
        from iagcn.extract.datasets import load_image_rgb as image_loader
    out = Path(out)
    device = resolve_device(cfg.device)
    previous_threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    try:
        return _extract_split(ds, cfg, out, device=device, label_embeddings=label_embeddings, skipped_ids=skipped_ids,
                              image_loader=image_loader, progress=progress, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _extract_split(ds, cfg: ExtractConfig, out: Path, *, device: str, label_embeddings: tuple[np.ndarray, str],
                   skipped_ids: Sequence[str], image_loader: Callable[[Path], Any], progress: bool,
                   log: Callable[[str], None]) -> ExtractStats:
    import torch
    from tqdm import tqdm

    from iagcn.cache.format import CacheWriter
    from iagcn.extract.backbones import build_backbone
    from iagcn.extract.proposers import build_proposer

    validate_options(cfg)
    n_total = len(ds.image_ids)
    if n_total == 0:
        raise UserError(f"dataset {ds.name} split {ds.split}: no images to extract; check --root/--split")

    backbone = build_backbone(cfg.backbone, weights=cfg.weights).to(device)
    image_size = cfg.image_size or backbone.default_image_size
    proposer = build_proposer(cfg.proposer, num_rois=cfg.num_rois, weights=cfg.proposer_weights,
                              image_size=cfg.proposer_image_size, detectron2_config=cfg.detectron2_config,
                              device=device)
    identity = dataclasses.replace(cfg.identity(), image_size=image_size)
    ident_hash = config_hash(identity)
    shard = parse_shard(cfg.shard)
    row_start, row_stop = (0, n_total) if shard is None else shard_rows(n_total, block_rows=cfg.block_rows,
                                                                         index=shard[0], count=shard[1])
    blocks = [(s, min(row_stop, s + cfg.block_rows)) for s in range(row_start, row_stop, cfg.block_rows)]
    emb, emb_source = label_embeddings
    stats = ExtractStats()
    t_start = time.perf_counter()

    partial = out.parent / (out.name + ".partial")

    def hint() -> str:  # counted on disk: exactly the committed blocks a rerun keeps
        kept = sum(b - a for a, b in blocks if _part_path(partial, a, b).exists())
        return f"interrupted: {kept}/{row_stop - row_start} images kept in {partial}; rerun the same command to resume"

    with exclusive_lock(out, what="cache"), interrupt_hint(hint):
        remove_stale_temporaries(out)  # a cache temporary of a killed assembly can be large: free it first
        if not partial.exists() and _complete_cache_matches(out, ident_hash, shard):
            log(f"{out} is already complete for this config (hash {ident_hash}); nothing to do (delete it to redo)")
            stats.wall_s = time.perf_counter() - t_start
            return stats
        header = {"extract_config_hash": ident_hash, "extract_config": config_to_dict(identity),
                  "rows": [row_start, row_stop], "total_rows": n_total,
                  "backbone_weights_sha256": backbone.weights_sha256,
                  "proposer_weights_sha256": proposer.weights_sha256,
                  "image_ids_sha256": hashlib.sha256("\n".join(map(str, ds.image_ids)).encode()).hexdigest(),
                  "skipped_ids": list(skipped_ids)}
        done = _open_partial(partial, header, log=log)
        todo = [b for b in blocks if b not in done]
        if todo:  # refuse up front when the parts plus the assembled cache cannot fit
            check_free_space(out.parent, 2 * estimated_bytes(sum(b - a for a, b in todo), num_rois=cfg.num_rois,
                                                             feature_dim=backbone.feature_dim,
                                                             num_classes=len(ds.class_names)),
                             what=f"extraction into {out}")
        if done:
            log(f"resuming {out}: {len(blocks) - len(todo)} of {len(blocks)} blocks already committed")

        if todo:
            rows_ds = _ImageRows(ds.image_paths, image_size=image_size, image_loader=image_loader,
                                 proposer=proposer if proposer.runs_in_loader else None)
            loader = torch.utils.data.DataLoader(
                rows_ds, batch_sampler=_batches_of_blocks(todo, cfg.batch_size), collate_fn=_collate,
                num_workers=cfg.workers, worker_init_fn=_worker_init if cfg.workers else None,
                persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
            pending: dict[tuple[int, int], dict[str, np.ndarray]] = {}
            block_of = {r: b for b in todo for r in range(*b)}
            bar = tqdm(total=sum(b - a for a, b in todo), unit="img", desc=f"extract {out.name}",
                       disable=not progress, file=sys.stderr, dynamic_ncols=True)
            t_wait = time.perf_counter()
            for items in loader:
                stats.loader_wait_s += time.perf_counter() - t_wait
                t0 = time.perf_counter()
                if not proposer.runs_in_loader:
                    props = proposer.propose([it["original"] for it in items])
                    for it, p in zip(items, props):
                        it.update(boxes=p.boxes, scores=p.scores, valid=p.valid)
                    stats.proposer_s += time.perf_counter() - t0
                else:
                    stats.proposer_s += sum(it["proposer_s"] for it in items)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    images = torch.from_numpy(np.stack([it["input"] for it in items])).to(device)  # (B, 3, S, S) uint8
                    sizes = torch.tensor([it["size"] for it in items], dtype=torch.int32)  # (B, 2) H, W
                    boxes = torch.from_numpy(np.stack([it["boxes"] for it in items]))  # (B, N, 4) original pixels
                    fmap = backbone.forward_features(backbone.normalize(images)).float()  # (B, D, h, w)
                    x = global_max_pool(fmap)  # (B, D)
                    map_boxes = boxes_to_map(boxes.to(device), image_sizes=sizes.to(device),
                                             map_size=tuple(fmap.shape[2:]))  # (B, N, 4)
                    X = region_features(fmap, map_boxes, output_size=cfg.roi_output_size,
                                        sampling_ratio=cfg.roi_sampling_ratio)  # (B, N, D)
                    x16 = x.half().cpu().numpy()
                    X16 = X.half().cpu().numpy()
                stats.backbone_s += time.perf_counter() - t1
                t2 = time.perf_counter()
                for k, it in enumerate(items):
                    blk = block_of[it["row"]]
                    buf = pending.setdefault(blk, _empty_block(blk, cfg.num_rois, backbone.feature_dim))
                    j = it["row"] - blk[0]
                    buf["global"][j], buf["regions"][j] = x16[k], X16[k]
                    buf["boxes"][j], buf["box_scores"][j], buf["box_valid"][j] = it["boxes"], it["scores"], it["valid"]
                    buf["image_sizes"][j] = it["size"]
                    buf["_filled"][j] = True
                    if buf["_filled"].all():
                        _write_part(partial, *blk, {f: buf[f] for f in PART_FIELDS})
                        del pending[blk]
                stats.write_s += time.perf_counter() - t2
                stats.images += len(items)
                bar.update(len(items))
                t_wait = time.perf_counter()
            bar.close()

        t3 = time.perf_counter()
        attrs = {
            "dataset": ds.name, "split": ds.split, "class_names": list(ds.class_names),
            "extract_config": config_to_dict(identity), "extract_config_hash": ident_hash,
            "backbone": backbone.name, "backbone_weights": cfg.weights,
            "backbone_weights_sha256": backbone.weights_sha256, "proposer": proposer.name,
            "proposer_weights": cfg.proposer_weights, "proposer_weights_sha256": proposer.weights_sha256,
            "image_size": image_size, "skipped_ids": list(skipped_ids),
            "execution": {"workers": cfg.workers, "threads": cfg.threads, "device": device},
        }
        if shard is not None:
            attrs["shard"] = {"index": shard[0], "count": shard[1], "rows": [row_start, row_stop], "total_rows": n_total}
        try:
            with CacheWriter(out, num_images=row_stop - row_start, num_rois=cfg.num_rois,
                             feature_dim=backbone.feature_dim, num_classes=len(ds.class_names),
                             embedding_dim=int(emb.shape[1]), attrs=attrs) as writer:
                for start, stop in blocks:
                    part = _read_part(_part_path(partial, start, stop))
                    if part is None:
                        _part_path(partial, start, stop).unlink(missing_ok=True)
                        raise UserError(f"{_part_path(partial, start, stop)} is unreadable (removed); "
                                        f"rerun the same command to recompute that block")
                    _check_finite_part(part, partial, start, ds.image_ids)
                    rows = dict(part)
                    rows["labels"] = np.asarray(ds.labels[start:stop], dtype=np.int8)
                    rows["image_ids"] = [str(i) for i in ds.image_ids[start:stop]]
                    writer.write_rows(start - row_start, rows)
                writer.set_label_embeddings(emb, source=emb_source)
        except Exception as e:
            if is_disk_full(e):
                raise UserError(f"disk full while assembling {out} (its temporary was removed; every block stays in "
                                f"{partial}); free space and rerun the same command") from e
            raise
        shutil.rmtree(partial, ignore_errors=True)
        stats.write_s += time.perf_counter() - t3
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _check_finite_part(part: dict[str, np.ndarray], partial: Path, start: int, image_ids) -> None:
    """NaN/Inf features (a broken backbone or weights file) are refused, never written into a cache."""
    for name in ("global", "regions"):
        arr = part[name]
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(1)  # (rows,)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            raise UserError(f"non-finite {name} features (NaN/Inf) for image {image_ids[row]} (row {row}); "
                            f"check --weights (nothing was written; the parts stay in {partial})")


def _complete_cache_matches(out: Path, ident_hash: str, shard: tuple[int, int] | None) -> bool:
    """True when ``out`` is a readable cache of the same config (and the same shard)."""
    if not out.exists():
        return False
    from iagcn.cache.format import FeatureCache

    try:
        with FeatureCache(out) as c:
            sh = c.attrs.get("shard")
            return c.attrs.get("extract_config_hash") == ident_hash and \
                (None if sh is None else (sh["index"], sh["count"])) == shard
    except UserError:
        return False


def _empty_block(blk: tuple[int, int], num_rois: int, dim: int) -> dict[str, np.ndarray]:
    n = blk[1] - blk[0]
    return {"global": np.zeros((n, dim), np.float16), "regions": np.zeros((n, num_rois, dim), np.float16),
            "boxes": np.zeros((n, num_rois, 4), np.float32), "box_scores": np.zeros((n, num_rois), np.float32),
            "box_valid": np.zeros((n, num_rois), bool), "image_sizes": np.zeros((n, 2), np.int32),
            "_filled": np.zeros(n, bool)}


# -- pre-flight and the command-level entry point -----------------------------------------------------------
def parse_classes(text: str | None) -> list[str] | None:
    """``--classes``: a file of names (one a line) or a comma-separated list; None: from the dataset."""
    if text is None:
        return None
    path = Path(text)
    names = path.read_text().split("\n") if path.is_file() else text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"--classes {text}: no class names found; give a comma-separated list or a file of names")
    return names


def load_checked_split(cfg: ExtractConfig, *, progress: bool = True):
    """Read the split and pre-flight it: every bad annotation and image at once.

    Refuses (one UserError listing all problems) unless ``cfg.skip_bad``; with it, drops the bad images and
    returns their ids. Returns (DatasetSplit, skipped ids).
    """
    from iagcn.extract.datasets import find_bad_images, load_dataset, raise_on_problems

    options: dict[str, Any] = {"strict": False}  # collect annotation problems instead of stopping at the first file
    split = cfg.split
    if cfg.dataset == "csv":
        split = cfg.csv or cfg.split
        if cfg.classes is not None:
            options["class_names"] = parse_classes(cfg.classes)
    elif cfg.csv is not None or cfg.classes is not None:
        raise UserError(f"--csv/--classes apply to --dataset csv only, not {cfg.dataset}; drop them")
    if cfg.dataset == "coco":
        options["keep_empty"] = cfg.keep_empty
    elif cfg.keep_empty:
        raise UserError(f"--keep-empty applies to --dataset coco only, not {cfg.dataset}; drop it")
    ds = load_dataset(cfg.dataset, Path(cfg.root), split, **options)
    bad = find_bad_images(ds, progress=progress)
    problems = [*ds.problems, *bad.values()]  # == extract.datasets.preflight(ds)
    if problems and not cfg.skip_bad:
        raise_on_problems(problems, what=f"{cfg.dataset} {cfg.root} split {split}")
    if problems:
        ds = ds.without(bad)
        print(f"warning: --skip-bad: leaving out {len(ds.bad_ids)} image(s): {', '.join(ds.bad_ids[:20])}"
              + (" ..." if len(ds.bad_ids) > 20 else ""), file=sys.stderr)
    return ds, list(ds.bad_ids)


def run_extract(cfg: ExtractConfig, out: str | os.PathLike, *, progress: bool = True) -> ExtractStats:
    """Load the split, pre-flight it (refusing with every problem listed unless ``skip_bad``), extract."""
    from iagcn.extract.embeddings import load_label_embeddings

    validate_options(cfg)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the cache file name, e.g. {out / (cfg.split + '.h5')}")
    check_can_create(out.parent, what=f"the cache {out.name}")
    ds, skipped = load_checked_split(cfg, progress=progress)
    emb = load_label_embeddings(cfg.label_embeddings, list(ds.class_names))
    return extract_split(ds, cfg, out, label_embeddings=emb, skipped_ids=skipped, progress=progress)


# -- merging shards -----------------------------------------------------------------------------------------
def merge_shards(paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Combine shard files of one extraction into one cache equal to an unsharded run; verify completeness."""
    from iagcn.cache.format import ROW_FIELDS, CacheWriter, FeatureCache

    if not paths:
        raise UserError("iagcn merge: give the shard files to merge")
    caches = [FeatureCache(p) for p in paths]
    try:
        infos = []
        for c in caches:
            sh = c.attrs.get("shard")
            if sh is None:
                raise UserError(f"{c.path}: not a shard (no 'shard' attribute); merge only --shard outputs")
            infos.append((sh["rows"][0], sh["rows"][1], c, sh))
        infos.sort(key=lambda t: t[0])
        first = infos[0][2]
        total, count = infos[0][3]["total_rows"], infos[0][3]["count"]
        for a, b, c, sh in infos:
            if c.attrs["extract_config_hash"] != first.attrs["extract_config_hash"]:
                raise UserError(f"{c.path}: extract_config_hash {c.attrs['extract_config_hash']} differs from "
                                f"{first.path} ({first.attrs['extract_config_hash']}); merge shards of one extraction")
            if (sh["total_rows"], sh["count"]) != (total, count):
                raise UserError(f"{c.path}: shard of {sh['count']} / {sh['total_rows']} rows, others "
                                f"{count} / {total}; merge shards of one extraction")
            if c.num_images != b - a:
                raise UserError(f"{c.path}: holds {c.num_images} rows but claims {a}:{b}; re-extract that shard")
        expected = 0
        for a, b, c, sh in infos:
            if a < expected:
                raise UserError(f"{c.path}: rows {a}:{b} overlap rows already covered up to {expected}; "
                                f"give each shard exactly once")
            if a > expected:
                raise UserError(f"rows {expected}:{a} are missing (no shard given holds them); add that shard")
            expected = b
        if expected != total:
            raise UserError(f"shards cover rows 0:{expected} of {total}; the shard holding {expected}: is missing")
        attrs = {k: v for k, v in first.attrs.items()
                 if k not in ("shard", "format_version", "git_commit", "created", "num_rois", "feature_dim")}
        emb, source = first.label_embeddings()
        out = Path(out)
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give the merged cache's file name")
        check_writable_dir(out.parent, what=f"the merged cache {out.name}")
        hint = f"interrupted: nothing was written to {out} (the merge is atomic; the shards are untouched); " \
               f"rerun the same command"
        with exclusive_lock(out, what="merged cache"), interrupt_hint(lambda: hint):
            with CacheWriter(out, num_images=total, num_rois=first.num_rois, feature_dim=first.feature_dim,
                             num_classes=first.num_classes, embedding_dim=emb.shape[1], attrs=attrs) as w:
                for a, b, c, _ in infos:
                    w.write_rows(a, {f: c.read(f) for f in ROW_FIELDS})
                w.set_label_embeddings(emb, source=source)
        return out
    finally:
        for c in caches:
            c.close()
