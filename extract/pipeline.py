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
    ``cache.writer.CacheWriter`` (temporary, then rename), after which the part folder is removed.
  * A rerun after a kill at any moment keeps the parts whose config hash matches and computes the rest.
  * ``--shard i/n`` takes a contiguous range of whole blocks; ``merge_shards`` checks and concatenates.
"""
from __future__ import annotations

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
from iagcn.device import resolve_device
from iagcn.extract.config import ExtractConfig, parse_shard, shard_rows, validate_options
from iagcn.extract.features import boxes_to_map, global_max_pool, region_features
from iagcn.extract.loader import batches_of_blocks, collate_items, ImageRows, worker_init
from iagcn.extract.parts import PART_FIELDS, check_finite_part, empty_block, open_partial, part_path, read_part, \
    write_part
from iagcn.extract.preflight import load_checked_split
from iagcn.fsutil import check_can_create, check_free_space, exclusive_lock, interrupt_hint, no_space_reason, \
    remove_stale_temporaries
from iagcn.processes import defer_interrupts, raise_if_interrupted


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
    already_complete: bool = False  # the cache was already complete for this config: nothing was computed


def extract_split(ds, cfg: ExtractConfig, out: str | os.PathLike, *, label_embeddings: tuple[np.ndarray, str],
                  skipped_ids: Sequence[str] = (), image_loader: Callable[[Path], Any] | None = None,
                  progress: bool = True, log: Callable[[str], None] | None = None) -> ExtractStats:
    """Extract ``ds`` (a DatasetSplit, already filtered of skipped images) into the cache ``out``.

    Resumes from ``<out>.partial/``; with ``cfg.shard`` writes one shard file. Returns timing stats.
    """
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if image_loader is None:
        from iagcn.extract.images import load_image_rgb as image_loader
    out = Path(out)
    device = str(resolve_device(cfg.device))          # "cpu" / "cuda:k": model, proposer and batches all go there
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

    from iagcn.cache.writer import CacheWriter
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
        kept = sum(b - a for a, b in blocks if part_path(partial, a, b).exists())
        return f"interrupted: {kept}/{row_stop - row_start} images kept in {partial}; rerun the same command to resume"

    with exclusive_lock(out, what="cache"), interrupt_hint(hint):
        remove_stale_temporaries(out)  # a cache temporary of a killed assembly can be large: free it first
        inputs = input_hashes(ds, emb, skipped_ids, rows=(row_start, row_stop),
                              weights={"backbone_weights_sha256": backbone.weights_sha256,
                                       "proposer_weights_sha256": proposer.weights_sha256})
        reason = _complete_cache_differs(out, ident_hash, shard, inputs) if not partial.exists() else "in progress"
        if reason is None:
            log(f"{out} is already complete for this config (hash {ident_hash}) and these inputs (image ids, labels, "
                f"class names, label embeddings); nothing to do (delete it to redo)")
            stats.wall_s = time.perf_counter() - t_start
            stats.already_complete = True
            return stats
        if reason is not None and reason.endswith("changed since it was written"):  # same config, other inputs
            log(f"note: {out} exists but {reason}; extracting it again")
        header = {"extract_config_hash": ident_hash, "extract_config": config_to_dict(identity),
                  "rows": [row_start, row_stop], "total_rows": n_total,
                  "backbone_weights_sha256": backbone.weights_sha256,
                  "proposer_weights_sha256": proposer.weights_sha256,
                  "image_ids_sha256": hashlib.sha256("\n".join(map(str, ds.image_ids)).encode()).hexdigest(),
                  "skipped_ids": list(skipped_ids)}
        done = open_partial(partial, header, log=log)
        todo = [b for b in blocks if b not in done]
        if todo:  # refuse up front when the parts plus the assembled cache cannot fit
            check_free_space(out.parent, 2 * estimated_bytes(sum(b - a for a, b in todo), num_rois=cfg.num_rois,
                                                             feature_dim=backbone.feature_dim,
                                                             num_classes=len(ds.class_names)),
                             what=f"extraction into {out}")
        if done:
            log(f"resuming {out}: {len(blocks) - len(todo)} of {len(blocks)} blocks already committed")

        if todo:
            rows_ds = ImageRows(ds.image_paths, image_size=image_size, image_loader=image_loader,
                                 proposer=proposer if proposer.runs_in_loader else None)
            loader = torch.utils.data.DataLoader(
                rows_ds, batch_sampler=batches_of_blocks(todo, cfg.batch_size), collate_fn=collate_items,
                num_workers=cfg.workers, worker_init_fn=worker_init if cfg.workers else None,
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
                    buf = pending.setdefault(blk, empty_block(blk, cfg.num_rois, backbone.feature_dim))
                    j = it["row"] - blk[0]
                    buf["global"][j], buf["regions"][j] = x16[k], X16[k]
                    buf["boxes"][j], buf["box_scores"][j], buf["box_valid"][j] = it["boxes"], it["scores"], it["valid"]
                    buf["image_sizes"][j] = it["size"]
                    buf["_filled"][j] = True
                    if buf["_filled"].all():
                        write_part(partial, *blk, {f: buf[f] for f in PART_FIELDS})
                        del pending[blk]
                stats.write_s += time.perf_counter() - t2
                stats.images += len(items)
                bar.update(len(items))
                raise_if_interrupted()
                t_wait = time.perf_counter()
            bar.close()

        t3 = time.perf_counter()
        attrs = {
            "dataset": ds.name, "split": ds.split, "class_names": list(ds.class_names),
            "extract_config": config_to_dict(identity), "extract_config_hash": ident_hash,
            "backbone": backbone.name, "backbone_weights": cfg.weights,
            "backbone_weights_sha256": backbone.weights_sha256, "proposer": proposer.name,
            "proposer_weights": cfg.proposer_weights, "proposer_weights_sha256": proposer.weights_sha256,
            "image_size": image_size, "skipped_ids": list(skipped_ids), "inputs": inputs,
            "execution": {"workers": cfg.workers, "threads": cfg.threads, "device": device},
        }
        if shard is not None:
            attrs["shard"] = {"index": shard[0], "count": shard[1], "rows": [row_start, row_stop], "total_rows": n_total}
        try:  # h5py drops exceptions raised inside its callbacks: a Ctrl-C is acted on between blocks
            with defer_interrupts(), CacheWriter(out, num_images=row_stop - row_start, num_rois=cfg.num_rois,
                                                 feature_dim=backbone.feature_dim, num_classes=len(ds.class_names),
                                                 embedding_dim=int(emb.shape[1]), attrs=attrs) as writer:
                for start, stop in blocks:
                    part = read_part(part_path(partial, start, stop))
                    if part is None:
                        part_path(partial, start, stop).unlink(missing_ok=True)
                        raise UserError(f"{part_path(partial, start, stop)} is unreadable (removed); "
                                        f"rerun the same command to recompute that block")
                    check_finite_part(part, partial, start, ds.image_ids)
                    rows = dict(part)
                    rows["labels"] = np.asarray(ds.labels[start:stop], dtype=np.int8)
                    rows["image_ids"] = [str(i) for i in ds.image_ids[start:stop]]
                    writer.write_rows(start - row_start, rows)
                    raise_if_interrupted()
                writer.set_label_embeddings(emb, source=emb_source)
        except Exception as e:
            reason = no_space_reason(e)
            if reason:
                raise UserError(f"{reason} while assembling {out} (its temporary was removed; every block stays in "
                                f"{partial}); free space and rerun the same command") from e
            raise
        shutil.rmtree(partial, ignore_errors=True)
        stats.write_s += time.perf_counter() - t3
    stats.wall_s = time.perf_counter() - t_start
    return stats


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sizes(paths: Sequence[Path]) -> str:
    sizes = []
    for p in paths:
        try:
            sizes.append(str(os.stat(p).st_size))
        except OSError:
            sizes.append("-")
    return "\n".join(sizes)


def input_hashes(ds, emb: np.ndarray, skipped_ids: Sequence[str], *, rows: tuple[int, int],
                 weights: dict[str, Any] | None = None) -> dict[str, Any]:
    """sha256 of every input a cache's rows are made of, besides the extraction config: the image ids (the split
    file), the labels (the annotations), the class names, the label embeddings, the skipped images, the image
    files' sizes (a replaced picture; sizes, not contents, so that hashing never rereads a whole dataset) and the
    backbone / proposer weight files' sha256 (``weights``; a weight file replaced under the same path).
    Stored as the cache attribute ``inputs``; a complete cache is reused only when all of them are equal."""
    a, b = rows
    return {"rows": [a, b], **(weights or {}),
            "image_file_sizes_sha256": _sha256(_file_sizes(ds.image_paths[a:b]).encode()),
            "image_ids_sha256": _sha256("\n".join(map(str, ds.image_ids[a:b])).encode()),
            "labels_sha256": _sha256(np.ascontiguousarray(ds.labels[a:b], dtype=np.int8).tobytes()),
            "class_names_sha256": _sha256(json.dumps(list(ds.class_names)).encode()),
            "label_embeddings_sha256": _sha256(np.ascontiguousarray(emb, dtype=np.float32).tobytes()),
            "skipped_ids_sha256": _sha256("\n".join(map(str, skipped_ids)).encode())}


def _complete_cache_differs(out: Path, ident_hash: str, shard: tuple[int, int] | None,
                            inputs: dict[str, Any]) -> str | None:
    """None when ``out`` is a readable cache of the same config, shard and inputs; else why it cannot be reused.

    The inputs are recomputed from the cache's own contents (ids, labels, class names, embeddings), so a cache
    written before the ``inputs`` attribute existed is compared just as well."""
    if not out.exists():
        return "it does not exist"
    from iagcn.cache.format import FeatureCache

    try:
        with FeatureCache(out) as c:
            sh = c.attrs.get("shard")
            if c.attrs.get("extract_config_hash") != ident_hash:
                return "it was written with another extraction config"
            if (None if sh is None else (sh["index"], sh["count"])) != shard:
                return "it is another shard"
            emb, _ = c.label_embeddings()
            mine = {"image_ids_sha256": _sha256("\n".join(c.image_ids()).encode()),
                    "labels_sha256": _sha256(np.ascontiguousarray(c.labels()).tobytes()),
                    "class_names_sha256": _sha256(json.dumps(c.class_names).encode()),
                    "label_embeddings_sha256": _sha256(np.ascontiguousarray(emb).tobytes()),
                    "skipped_ids_sha256": _sha256("\n".join(map(str, c.attrs.get("skipped_ids", []))).encode())}
    except UserError as e:
        return f"it is not a valid cache ({e})"
    names = {"image_ids_sha256": "the image ids (split file)", "labels_sha256": "the labels (annotations)",
             "class_names_sha256": "the class names", "label_embeddings_sha256": "the label embeddings",
             "skipped_ids_sha256": "the skipped images"}
    recorded = c.attrs.get("inputs") or {}
    names.update(image_file_sizes_sha256="the image files", backbone_weights_sha256="the backbone weights file",
                 proposer_weights_sha256="the proposer weights file")
    for key in ("image_file_sizes_sha256", "backbone_weights_sha256", "proposer_weights_sha256"):
        if key in recorded and key in inputs:      # not recomputable from the cache: compared when recorded
            mine[key] = recorded[key]
    changed = [names[k] for k in mine if mine[k] != inputs[k]]
    return f"{', '.join(changed)} changed since it was written" if changed else None


def run_extract(cfg: ExtractConfig, out: str | os.PathLike, *, progress: bool = True,
                log: Callable[[str], None] | None = None) -> ExtractStats:
    """Load the split, pre-flight it (refusing with every problem listed unless ``skip_bad``), extract."""
    from iagcn.extract.embeddings import load_label_embeddings
    from iagcn.extract.preflight import describe_classes

    log = log or (lambda msg: print(msg, file=sys.stderr))

    validate_options(cfg)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the cache file name, e.g. {out / (cfg.split + '.h5')}")
    check_can_create(out.parent, what=f"the cache {out.name}")
    ds, skipped = load_checked_split(cfg, progress=progress)
    emb = load_label_embeddings(cfg.label_embeddings, list(ds.class_names))
    stats = extract_split(ds, cfg, out, label_embeddings=emb, skipped_ids=skipped, progress=progress, log=log)
    if cfg.dataset == "csv":   # after success (an error stays one line); VOC / COCO: the fixed lists of their devkits
        log(describe_classes(cfg, list(ds.class_names), out))
    return stats
