"""The training loop as plain functions: the LR schedule, one epoch of SGD, scoring and evaluation."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from tqdm import tqdm

from iagcn.errors import UserError
from iagcn.train.config import TrainConfig
from iagcn.train.data import CacheData
from iagcn.train.model import IAGCNHead, total_loss


def learning_rate(epoch: int, *, base_lr: float, step: int, gamma: float, schedule: str = "step",
                  epochs: int | None = None) -> float:
    """The LR of ``epoch`` (counted from 0).

    "step" (paper 4.3): base_lr * gamma ** (epoch // step). "cosine": base_lr * (1 + cos(pi * epoch / epochs)) / 2,
    from base_lr at epoch 0 towards 0 at ``epochs``.
    """
    if schedule == "cosine":
        if not epochs:
            raise ValueError("learning_rate: the cosine schedule needs epochs")
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if schedule != "step":
        raise ValueError(f"learning_rate: unknown schedule {schedule!r}")
    return base_lr * gamma ** (epoch // step)


def train_one_epoch(model: IAGCNHead, optimizer: torch.optim.Optimizer, data: CacheData, indices: np.ndarray, *,
                    config: TrainConfig, epoch: int, device: torch.device, progress: bool = True) -> dict[str, float]:
    """One pass over ``indices`` of ``data`` in an order seeded by (seed, epoch). Returns mean loss parts and timing."""
    model.train()
    rng = np.random.default_rng([config.seed, epoch])
    sums: dict[str, float] = {}
    seen, t0 = 0, time.perf_counter()
    bar = tqdm(total=len(indices), unit="img", desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
               leave=False, dynamic_ncols=True)
    for step, batch in enumerate(data.batches(indices, batch_size=config.batch_size, shuffle=True, rng=rng,
                                              device=device, regions=model.uses_regions)):
        out = model(batch.x, batch.X, batch.valid)
        loss, parts = total_loss(out, batch.labels, batch.valid, beta=config.beta, difficult=config.difficult,
                                 a_I_loss_weight=config.a_I_loss_weight,
                                 classifier_decay=config.weight_decay if config.decay_on == "classifiers" else 0.0,
                                 branch_loss_weight=config.branch_loss_weight)
        if not math.isfinite(parts["loss"]):
            raise UserError(divergence_cause(model, batch, parts, config=config, epoch=epoch, step=step,
                                             path=getattr(data, "path", None),
                                             image_ids=getattr(data, "image_ids", None)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()
        b = len(batch)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * b
        seen += b
        bar.update(b)
        bar.set_postfix(loss=f"{sums['loss'] / seen:.4f}")
    bar.close()
    seconds = time.perf_counter() - t0
    stats = {k: v / max(seen, 1) for k, v in sums.items()}
    stats.update(seconds=seconds, samples_per_s=seen / max(seconds, 1e-9))
    return stats


def _non_finite(t: torch.Tensor | None) -> bool:
    return t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all())


@torch.no_grad()
def divergence_cause(model: IAGCNHead, batch, parts: dict[str, float], *, config: TrainConfig, epoch: int,
                     step: int, path=None, image_ids=None) -> str:
    """The message for a NaN/Inf loss, naming the real cause: inputs are examined before the optimisation is blamed.

    In order: a config constant, the label embeddings H0 or the statistical adjacency (inputs of the model), the
    batch's features or labels, then the parameters (NaN after updates: the optimisation diverged, lower --lr).
    """
    where = f"epoch {epoch + 1}, step {step + 1}"
    floats = [f"{k}={v}" for k, v in vars(config).items() if isinstance(v, float) and not math.isfinite(v)]
    if floats:
        return f"non-finite loss at {where}: config value(s) {', '.join(floats)}; set a finite value"
    for name, what in (("label_embeddings", "the label embeddings H0 (the cache's label_embeddings or "
                                            "--label-embeddings)"),
                       ("A_S", "the statistical adjacency A_S (from the training labels)"),
                       ("A_S_hat", "the normalised adjacency (adjacency_eps too small?)")):
        if _non_finite(getattr(model, name, None)):
            return f"non-finite loss at {where}: {what} hold NaN/Inf; fix that input (not the learning rate)"
    source = f"cache {path}" if path is not None else "the training cache"
    for name, t in (("global", batch.x), ("regions", batch.X)):
        if _non_finite(t):
            return f"non-finite loss at {where}: {source} has NaN/Inf {name} features; re-extract it"
    if getattr(model, "uses_regions", False) and batch.valid is not None and not bool(batch.valid.any(1).all()):
        row = int(batch.index[int(torch.nonzero(~batch.valid.any(1))[0, 0])])
        name = f"image {image_ids[row]!r}" if image_ids is not None else f"row {row}"
        return (f"non-finite loss at {where}: {name} of {source} has no valid region (box_valid all false), which "
                f"the region-based heads cannot read; re-extract with another proposer or use a preset without "
                f"regions")
    bad_params = [n for n, p in model.named_parameters() if _non_finite(p)]
    if bad_params:
        return (f"training diverged at {where}: parameters became NaN/Inf ({', '.join(bad_params[:3])}) after "
                f"updates with lr {config.lr:g} (loss parts {parts}); lower --lr or --set grad_clip=... and rerun "
                f"with another --out")
    if epoch == 0 and step == 0:
        return (f"non-finite loss at the very first step, before any update, with finite inputs and parameters "
                f"(loss parts {parts}): not a learning-rate problem; check beta and the inputs, or rerun with "
                f"`iagcn --debug` and report it")
    return (f"training diverged at {where}: non-finite loss (parts {parts}) with finite inputs and parameters; "
            f"lower --lr or --set grad_clip=... and rerun with another --out")


@torch.no_grad()
def predict(model: IAGCNHead, data: CacheData, indices: np.ndarray | None = None, *, batch_size: int = 256,
            device: torch.device | str = "cpu", progress: bool = False) -> np.ndarray:
    """Logits (n, C) float32 for ``indices`` (default: every row), in that order; z = z_mu (eval mode)."""
    was_training = model.training
    model.eval()
    rows = np.arange(data.n) if indices is None else np.asarray(indices, dtype=np.int64)
    position = np.full(data.n, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))                                    # cache row -> output row
    out = np.empty((len(rows), data.C), np.float32)                          # (n, C)
    with tqdm(total=len(rows), unit="img", desc="scoring", disable=not progress, leave=False) as bar:
        for batch in data.batches(rows, batch_size=batch_size, shuffle=False, device=device, regions=model.uses_regions):
            logits = model(batch.x, batch.X, batch.valid).logits             # (b, C)
            out[position[batch.index]] = logits.float().cpu().numpy()        # streaming may reorder rows
            bar.update(len(batch))
    model.train(was_training)
    return out


def evaluate(model: IAGCNHead, data: CacheData, indices: np.ndarray | None = None, *, batch_size: int = 256,
             device: torch.device | str = "cpu", progress: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Score ``indices`` of ``data`` and compute stage three's metrics. Returns (metrics, logits (n, C))."""
    from iagcn.metrics import multilabel_metrics

    scores = predict(model, data, indices, batch_size=batch_size, device=device, progress=progress)  # (n, C)
    targets = data.labels if indices is None else data.labels[indices]       # (n, C)
    # classes without positives here are reported once per run by the caller (train.run), not once per call
    return multilabel_metrics(scores, targets, scores_are="logits", warn=False), scores
