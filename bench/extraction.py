"""Benchmarks 1 and 6: the extraction path against its bare forwards, and JPEG decode + resize throughput."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch

from bench.caches import bench_dir
from bench.harness import Row, check, interleaved

TARGET_EXTRACT = "<= 1.10"

#: (label, ExtractConfig overrides)
EXTRACT_CASES = {
    "efficientnet-lite0 + selective-search (offline default)": dict(
        backbone="efficientnet-lite0", weights="imagenet", proposer="selective-search"),
    "resnet101 448 px + torchvision RPN 448 px (random weights)": dict(
        backbone="resnet101", weights="none", image_size=448, proposer="torchvision", proposer_weights="none",
        proposer_image_size=448),
}


def synth_split(n: int):
    """A VOC-layout synthetic split of ``n`` images (``iagcn synth``), written once under the bench folder."""
    from iagcn.extract.datasets import read_voc
    from iagcn.extract.synth import write_synth

    root, _ = write_synth(bench_dir() / f"synth-{n}", fmt="voc", n_train=n, n_test=1, seed=0, workers=1)
    return read_voc(root, "trainval")


def _decoded(ds, image_size: int):
    """The pipeline's per-image preprocessing done once: originals (H, W, 3) and squash-resized inputs (3, S, S)."""
    from PIL import Image

    from iagcn.extract.images import load_image_rgb

    originals, inputs = [], []
    for p in ds.image_paths:
        im = load_image_rgb(p)
        originals.append(np.asarray(im, dtype=np.uint8))
        inputs.append(np.asarray(im.resize((image_size, image_size), Image.BILINEAR), np.uint8).transpose(2, 0, 1).copy())
    return originals, inputs


def bare_forward_seconds(backbone, proposer, originals, inputs, *, batch_size: int) -> float:
    """Bare backbone forward (normalise + forward_features) + bare proposer forward over all images, in batches."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            proposer.propose(originals[s:s + batch_size])
            images = torch.from_numpy(np.stack(inputs[s:s + batch_size]))                # (B, 3, S, S) uint8
            backbone.forward_features(backbone.normalize(images))                        # (B, D, h, w)
    return time.perf_counter() - t0


def pipeline_seconds(ds, cfg, out: Path, stats_seen: list) -> float:
    """One ``extract.pipeline.extract_split`` of ``ds`` into ``out`` from scratch (model construction excluded:
    ``ExtractStats.wall_s``); its stats are appended to ``stats_seen``."""
    from iagcn.extract.pipeline import extract_split

    shutil.rmtree(out.parent / (out.name + ".partial"), ignore_errors=True)
    out.unlink(missing_ok=True)
    emb = (np.eye(len(ds.class_names), dtype=np.float32), "onehot")
    st = extract_split(ds, cfg, out, label_embeddings=emb, progress=False, log=lambda *_: None)
    stats_seen.append({k: round(float(v), 4) for k, v in vars(st).items()})
    return st.wall_s


def bench_extraction(*, n_images: dict[str, int], batch_size: int = 8, workers: int = 2, repeats: int = 2,
                     log=print) -> list[Row]:
    """Per-image time of ``extract.pipeline.extract_split`` (decode, resize, proposer, backbone, RoIAlign, pooling,
    part files, HDF5 assembly; model construction excluded) / per-image time of the bare forwards."""
    from iagcn.extract.backbones import build_backbone
    from iagcn.extract.config import ExtractConfig
    from iagcn.extract.proposers import build_proposer

    rows = []
    for label, over in EXTRACT_CASES.items():
        n = n_images[over["backbone"]]
        ds = synth_split(n)
        cfg = ExtractConfig(dataset="voc", root=str(ds.root), split="trainval", batch_size=batch_size, workers=workers,
                            device="cpu", threads=torch.get_num_threads(), **over)
        backbone = build_backbone(cfg.backbone, weights=cfg.weights)
        size = cfg.image_size or backbone.default_image_size
        proposer = build_proposer(cfg.proposer, num_rois=cfg.num_rois, weights=cfg.proposer_weights,
                                  image_size=cfg.proposer_image_size, device="cpu")
        originals, inputs = _decoded(ds, size)
        bare_forward_seconds(backbone, proposer, originals[:batch_size], inputs[:batch_size], batch_size=batch_size)  # warm-up
        out = bench_dir() / "extract-out.h5"
        stats_seen = []

        res = interleaved({"bare": lambda: bare_forward_seconds(backbone, proposer, originals, inputs,
                                                                batch_size=batch_size),
                           "pipeline": lambda: pipeline_seconds(ds, cfg, out, stats_seen)}, repeats=repeats)
        out.unlink(missing_ok=True)
        per = {k: v["median"] / n for k, v in res.items()}
        ratio = per["pipeline"] / per["bare"]
        log(f"  extract {label}: pipeline {per['pipeline'] * 1e3:.0f} ms/img, bare {per['bare'] * 1e3:.0f} ms/img "
            f"-> {ratio:.2f}")
        rows.append(Row(benchmark="1. extraction overhead", case=f"{label}, {n} synth images, batch {batch_size}, "
                        f"{workers} workers", numerator=f"pipeline {per['pipeline'] * 1e3:.0f} ms/img",
                        denominator=f"bare forwards {per['bare'] * 1e3:.0f} ms/img", ratio=ratio,
                        target=TARGET_EXTRACT, met=check(ratio, TARGET_EXTRACT),
                        details={"seconds": res, "pipeline_stats": stats_seen, "config": over, "n": n}))
        del backbone, proposer
    return rows


#: benchmark 7: the same images, backbone and RPN resolution through both RPNs (random weights: no download)
RPN_CASE = dict(backbone="resnet101", weights="none", image_size=448, proposer_weights="none", proposer_image_size=448)


def bench_rpn(*, n: int, batch_size: int = 8, workers: int = 2, repeats: int = 2, log=print) -> list[Row]:
    """Per-image time of ``extract_split`` with ``--proposer detectron2`` / with ``--proposer torchvision`` (both
    R50-FPN Faster R-CNN RPNs, one image at a time), interleaved in one run; skipped without Detectron2."""
    import importlib.util

    from iagcn.extract.config import ExtractConfig

    label = (f"resnet101 448 px + RPN 448 px (random weights), {n} synth images, batch {batch_size}, {workers} workers")
    if importlib.util.find_spec("detectron2") is None:
        log("  rpn: skipped (detectron2 not installed)")
        return [Row(benchmark="7. detectron2 vs torchvision RPN", case=f"{label} (detectron2 not installed)",
                    numerator="-", denominator="-", ratio=None, target="")]
    ds = synth_split(n)
    cfgs = {name: ExtractConfig(dataset="voc", root=str(ds.root), split="trainval", batch_size=batch_size,
                                workers=workers, device="cpu", threads=torch.get_num_threads(), proposer=name, **RPN_CASE)
            for name in ("detectron2", "torchvision")}
    stats_seen: dict[str, list] = {name: [] for name in cfgs}
    outs = {name: bench_dir() / f"rpn-{name}.h5" for name in cfgs}
    pipeline_seconds(ds, cfgs["detectron2"], outs["detectron2"], [])   # warm-up (imports, first-call allocations)
    res = interleaved({name: (lambda name=name: pipeline_seconds(ds, cfgs[name], outs[name], stats_seen[name]))
                       for name in cfgs}, repeats=repeats)
    for out in outs.values():
        out.unlink(missing_ok=True)
    per = {k: v["median"] / n for k, v in res.items()}
    ratio = per["detectron2"] / per["torchvision"]
    log(f"  rpn: detectron2 {per['detectron2'] * 1e3:.0f} ms/img, torchvision {per['torchvision'] * 1e3:.0f} ms/img "
        f"-> {ratio:.2f}")
    return [Row(benchmark="7. detectron2 vs torchvision RPN", case=label,
                numerator=f"--proposer detectron2 {per['detectron2'] * 1e3:.0f} ms/img",
                denominator=f"--proposer torchvision {per['torchvision'] * 1e3:.0f} ms/img", ratio=ratio, target="",
                details={"seconds": res, "pipeline_stats": stats_seen, "config": RPN_CASE, "n": n})]


def decode_images(n: int, *, size: tuple[int, int] = (500, 375)) -> list[Path]:
    """``n`` JPEGs at VOC's typical 500 x 375 (synth images upscaled, quality 90), written once."""
    from PIL import Image

    folder = bench_dir() / f"decode-{n}-{size[0]}x{size[1]}"
    paths = [folder / f"{i:05d}.jpg" for i in range(n)]
    if all(p.exists() for p in paths):
        return paths
    ds = synth_split(min(n, 64))
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        with Image.open(ds.image_paths[i % len(ds.image_paths)]) as im:
            im.convert("RGB").resize(size, Image.BICUBIC).save(p, quality=90)
    return paths


def decode_seconds(paths: list[Path], *, image_size: int, workers: int, batch_size: int) -> tuple[float, float]:
    """One pass of extraction's own loader (``extract.loader.ImageRows``: decode, EXIF, squash-resize) with no
    proposer, through a DataLoader with ``workers`` worker processes.

    Returns (seconds for everything, worker start-up included; steady-state seconds per image, timed from the
    first batch's arrival to the last)."""
    from iagcn.extract.images import load_image_rgb
    from iagcn.extract.loader import ImageRows, collate_items, worker_init

    rows = ImageRows(paths, image_size=image_size, image_loader=load_image_rgb, proposer=None)
    loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=collate_items, num_workers=workers,
                                         worker_init_fn=worker_init if workers else None,
                                         prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    t_first, after_first = None, 0
    for items in loader:
        if t_first is None:
            t_first = time.perf_counter()
        else:
            after_first += len(items)
    t_end = time.perf_counter()
    return t_end - t0, (t_end - t_first) / max(after_first, 1)


def bench_decode(*, n: int = 128, workers: int = 2, image_size: int = 448, repeats: int = 3, log=print) -> list[Row]:
    paths = decode_images(n)
    total: dict[str, list[float]] = {}
    steady: dict[str, list[float]] = {}

    def measure(name: str, w: int):
        def fn() -> float:
            t, per = decode_seconds(paths, image_size=image_size, workers=w, batch_size=16)
            total.setdefault(name, []).append(t)
            steady.setdefault(name, []).append(per)
            return per
        return fn

    wk = f"{workers} workers"
    interleaved({wk: measure(wk, workers), "in process": measure("in process", 0)}, repeats=repeats)
    ips = {k: 1.0 / float(np.median(v)) for k, v in steady.items()}
    ips_total = {k: n / float(np.median(v)) for k, v in total.items()}
    log(f"  decode: {ips[wk]:.0f} img/s steady with {workers} workers ({ips_total[wk]:.0f} img/s counting worker "
        f"start-up), {ips['in process']:.0f} img/s in process")
    return [Row(benchmark="6. decode + resize", case=f"{n} JPEGs 500x375 -> {image_size}x{image_size}, extraction's "
                f"loader, steady state", numerator=f"{ips[wk]:.0f} img/s ({workers} workers)",
                denominator=f"{ips['in process']:.0f} img/s (in process)", ratio=None, target="",
                details={"seconds_total": total, "seconds_per_image_steady": steady, "images_per_s_steady": ips,
                         "images_per_s_with_startup": ips_total})]
