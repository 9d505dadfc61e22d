"""Benchmarks 2 and 5: head training against its floor (bench/floor.py), and the sweep against its floors."""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.floor import FloorStep, floor_flops, products_for_config, time_floor_step
from bench.harness import Row, check, timed

PRESETS = ("resnet", "mlgcn", "idlcm", "idlcm-vi", "iagcn", "comsco", "mlgcn-comsco")
TARGET_TRAIN = "<= 2.0"


def _setup(preset: str, data, *, seed: int = 0, **overrides):
    """Model + optimizer exactly as ``train.run`` builds them for the default recipe, at its first epoch's learning
    rates: the standardiser's statistics, ``train.optim.make_optimizer`` (the frozen recipe's SGD + AdamW split, lr
    scales, L2 per group) and the schedule's lr (statistical LCM and statistics from all rows here)."""
    from iagcn.train.config import config_for_preset
    from iagcn.train.lcm import statistical_lcm
    from iagcn.train.inference import build_model
    from iagcn.train.run import load_label_embeddings, make_optimizer, schedule_lr
    from iagcn.train.standardize import feature_statistics

    cfg = config_for_preset(preset, seed=seed, device="cpu", **overrides)
    emb, _ = load_label_embeddings(cfg, data.cache)                                   # (C, E)
    A_S = statistical_lcm(data.labels, tau=cfg.tau, p=cfg.p)                          # (C, C)
    meta = {"num_classes": data.C, "feature_dim": data.D, "num_rois": data.N, "embedding_dim": int(emb.shape[1]),
            "class_names": data.class_names}
    torch.manual_seed(seed)
    model = build_model(cfg, meta, label_embeddings=emb, A_S=A_S)
    if model.standardizer is not None:
        model.standardizer.set_statistics(feature_statistics(data, np.arange(data.n), batch_size=cfg.eval_batch_size,
                                                             regions=model.uses_regions))
    opt = make_optimizer(model, cfg)
    lr = schedule_lr(0, cfg)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)                                 # as train_run's first epoch
    return cfg, model, opt, int(emb.shape[1])


def floor_step_for(cfg, data, embedding_dim: int, *, batch: int | None = None, backward: bool = True) -> FloorStep:
    products = products_for_config(cfg, batch=batch or cfg.batch_size, num_rois=data.N, feature_dim=data.D,
                                   num_classes=data.C, embedding_dim=embedding_dim, training=backward)
    return FloorStep(products, backward=backward)


def bench_head_training(cache_path: Path, *, label: str, presets=PRESETS, repeats: int = 3,
                        long_epoch_s: float = 8.0, floor_seconds: float = 1.5, log=print) -> list[Row]:
    """One training epoch (``train.loop.train_one_epoch``, data in RAM) of each preset / its epoch floor.

    The floor of an epoch = (seconds of one FloorStep at the config's batch size) x (rows / batch size).
    Rounds interleave floor, epoch, floor, epoch, ..., floor; the ratio is median(epoch) / median(floor).
    Presets whose floor epoch exceeds ``long_epoch_s`` get one epoch (bracketed by two floor samples).
    """
    from iagcn.train.data import CacheData
    from iagcn.train.loop import train_one_epoch

    data = CacheData(cache_path, memory_budget_gib=64.0)
    idx = np.arange(data.n)
    rows = []
    for preset in presets:
        cfg, model, opt, E = _setup(preset, data)
        step = floor_step_for(cfg, data, E)
        steps_per_epoch = data.n / cfg.batch_size
        # warm-up: a few real steps and floor steps (allocator, thread pool)
        train_one_epoch(model, opt, data, idx[:2 * cfg.batch_size], config=cfg, epoch=0, device=torch.device("cpu"),
                        progress=False)
        per_step = time_floor_step(step, iters=2)
        iters = max(2, min(200, int(floor_seconds / max(per_step, 1e-6))))
        floor_epoch_est = per_step * steps_per_epoch
        n_rounds = 1 if floor_epoch_est > long_epoch_s else repeats
        epoch_s, floor_s, sps = [], [], []

        def floor_sample():
            floor_s.append(time_floor_step(step, iters=iters, warmup=0) * steps_per_epoch)

        for r in range(n_rounds):
            floor_sample()
            stats = train_one_epoch(model, opt, data, idx, config=cfg, epoch=r, device=torch.device("cpu"),
                                    progress=False)
            epoch_s.append(stats["seconds"])
            sps.append(stats["samples_per_s"])
        floor_sample()
        e, f = statistics.median(epoch_s), statistics.median(floor_s)
        ratio = e / f
        gflop = floor_flops(step.products) * steps_per_epoch / 1e9
        log(f"  {preset:<13} {label}: epoch {e:.2f} s, floor {f:.3f} s ({gflop:.0f} GFLOP, {gflop / f:.1f} GFLOP/s), "
            f"ratio {ratio:.2f}")
        rows.append(Row(
            benchmark="2. head training / floor", case=f"`{preset}`, {label}",
            numerator=f"epoch {e:.2f} s ({statistics.median(sps):.0f} img/s)", denominator=f"floor {f:.3f} s "
            f"({gflop:.0f} GFLOP)", ratio=ratio, target=TARGET_TRAIN, met=check(ratio, TARGET_TRAIN),
            details={"preset": preset, "cache": str(cache_path), "n": data.n, "N": data.N, "D": data.D, "C": data.C,
                     "batch_size": cfg.batch_size, "epoch_s": epoch_s, "floor_epoch_s": floor_s,
                     "floor_iters_per_sample": iters, "floor_gflop_per_epoch": gflop,
                     "floor_products": [p.name for p in step.products]}))
        del model, opt, step
    data.close()
    return rows


def sweep_floor_seconds(cfg, train_data, eval_data, embedding_dim: int, *, n_train: int, n_select: int,
                        iters: int) -> float:
    """Floor of one run of the sweep: per epoch, the training floor of its rows plus the forward-only floor of
    the rows it scores (the selection hold-out every epoch), plus the final forward pass over the eval cache."""
    train_step = floor_step_for(cfg, train_data, embedding_dim)
    fwd_step = floor_step_for(cfg, train_data, embedding_dim, batch=cfg.eval_batch_size, backward=False)
    t_train = time_floor_step(train_step, iters=iters) / cfg.batch_size            # s per training row
    t_fwd = time_floor_step(fwd_step, iters=max(1, iters // 4)) / cfg.eval_batch_size  # s per scored row
    return cfg.epochs * (n_train * t_train + n_select * t_fwd) + eval_data.n * t_fwd


def bench_sweep(train_path: Path, eval_path: Path, *, epochs: int, seeds=(0, 1, 2), presets=PRESETS,
                label: str, log=print) -> list[Row]:
    """Wall time of ``train.sweep.run_sweep`` over presets x seeds (real code: selection hold-out, checkpoints,
    final scoring) / the sum of the floors of its runs, each floor timed right after its run."""
    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.train.run import split_train
    from iagcn.train.sweep import run_sweep

    train_data = CacheData(train_path, memory_budget_gib=64.0)
    eval_data = CacheData(eval_path, memory_budget_gib=64.0)
    out = Path(tempfile.mkdtemp(prefix="sweep-", dir=train_path.parent))
    wall, floors, per_run = 0.0, 0.0, []
    try:
        for preset in presets:
            for seed in seeds:
                cfg = config_for_preset(preset, epochs=epochs, seed=seed, device="cpu")
                t = timed(lambda: run_sweep([cfg], train_data=train_data, eval_data=eval_data, out_dir=out,
                                            progress=False, log=lambda *_: None))
                tr, hold = split_train(train_data.labels, cfg)
                _, _, _, E = _setup(preset, train_data)
                f = sweep_floor_seconds(cfg, train_data, eval_data, E, n_train=len(tr),
                                        n_select=0 if hold is None else len(hold), iters=5)
                wall += t
                floors += f
                per_run.append({"preset": preset, "seed": seed, "wall_s": round(t, 3), "floor_s": round(f, 4)})
            pr = [r for r in per_run if r["preset"] == preset]
            log(f"  sweep {preset:<13} {len(pr)} runs: {sum(r['wall_s'] for r in pr):.1f} s, "
                f"floor {sum(r['floor_s'] for r in pr):.2f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)
        train_data.close()
        eval_data.close()
    ratio = wall / floors
    runs = len(presets) * len(seeds)
    return [Row(benchmark="5. sweep / sum of floors", case=f"{len(presets)} presets x {len(seeds)} seeds x {epochs} "
                f"epochs, {label}", numerator=f"wall {wall:.1f} s ({runs} runs)", denominator=f"floors {floors:.2f} s",
                ratio=ratio, target="", met=None,
                details={"per_run": per_run, "epochs": epochs, "train_cache": str(train_path),
                         "eval_cache": str(eval_path)})]
