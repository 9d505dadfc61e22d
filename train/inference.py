"""A trained head for stage three: build it from a checkpoint, score a cache, explain one image.

Stage three (``iagcn eval/compare/explain/predict``) uses :func:`load_run` (or :func:`load_checkpoint_model` for a
lone checkpoint file), :func:`predict_cache` and :func:`explain_image`; nothing here trains.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iagcn.cache.format import FeatureCache
from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.train import runfolder
from iagcn.train.config import TrainConfig, recorded_config
from iagcn.train.data import CacheData, check_score_order
from iagcn.train.loop import predict
from iagcn.train.model import IAGCNHead


def build_model(config: TrainConfig, meta: dict[str, Any], *, label_embeddings: np.ndarray | None = None,
                A_S: np.ndarray | None = None) -> IAGCNHead:
    """The head for ``config`` and the cache shapes in ``meta`` (zeros for buffers a state_dict will fill)."""
    C, E = meta["num_classes"], meta["embedding_dim"]
    return IAGCNHead(config=config.head(), num_classes=C, feature_dim=meta["feature_dim"], num_rois=meta["num_rois"],
                     label_embeddings=np.zeros((C, E), np.float32) if label_embeddings is None else label_embeddings,
                     A_S=np.eye(C, dtype=np.float32) if A_S is None else A_S)


def load_state_checked(model: torch.nn.Module, state: dict[str, Any], *, path: Path, config: TrainConfig) -> None:
    """``model.load_state_dict`` with a one-line error when the weights belong to another preset or class list."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        first = " ".join(str(e).split())[:160]
        raise UserError(f"checkpoint {path}: its weights do not fit preset {config.preset!r} with these shapes "
                        f"(another preset or class list?): {first}") from e


@dataclass
class LoadedRun:
    model: IAGCNHead                 # in eval mode, on CPU
    config: TrainConfig
    class_names: list[str]
    A_S: np.ndarray                  # (C, C) statistical LCM of the training part
    epoch: int                       # 1-based epoch of the loaded checkpoint
    run_dir: Path
    meta: dict[str, Any]

    def check_cache(self, cache: FeatureCache, *, what: str = "evaluate on") -> None:
        """Refuse, in one line, a cache this head cannot read: no images, other classes, ROI count or feature dim."""
        if cache.num_images == 0:
            raise UserError(f"cache {cache.path} holds no images; {what} a cache with at least one image")
        if list(cache.class_names) != list(self.class_names):
            raise UserError(f"cache {cache.path}: its {cache.num_classes} classes differ from the {len(self.class_names)} "
                            f"classes run {self.run_dir} was trained on; {what} a cache of the same dataset")
        for name, have in (("num_rois", cache.num_rois), ("feature_dim", cache.feature_dim)):
            want = int(self.meta[name])
            if name == "num_rois" and self.config.num_rois is not None and int(have) >= want:
                continue                     # a top-N run reads the first N ROIs of a larger cache (predict_cache)
            if int(have) != want:
                raise UserError(f"cache {cache.path}: {name} {have}, but run {self.run_dir} was trained on {want}; "
                                f"{what} a cache extracted with the run's extraction config")


def load_run(run_dir: str | os.PathLike, which: str = "best") -> LoadedRun:
    """The trained head of a run directory (``which``: "best" or "last"), in eval mode on CPU."""
    path = runfolder.checkpoint_path(run_dir, which)
    if not path.exists():
        raise UserError(f"run {run_dir}: {path.name} not found; is this a finished `iagcn train --out` folder?")
    return load_checkpoint_model(path)


def load_checkpoint_model(path: str | os.PathLike) -> LoadedRun:
    """The trained head of one checkpoint file (best.pt, last.pt or a copy), in eval mode on CPU."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path}: file not found")
    ckpt = runfolder.load_checkpoint(path)
    config = recorded_config(ckpt["config"], source=str(path))
    try:
        model = build_model(config, ckpt["meta"])
        class_names = list(ckpt["meta"]["class_names"])
    except (KeyError, TypeError) as e:
        raise UserError(f"checkpoint {path}: its meta lacks {e}; it was not written by `iagcn train`") from e
    load_state_checked(model, ckpt["model"], path=path, config=config)
    model.eval()
    return LoadedRun(model=model, config=config, class_names=class_names, A_S=model.A_S.numpy().copy(),
                     epoch=int(ckpt["epoch"]) + 1, run_dir=path.parent, meta=ckpt["meta"])


def predict_cache(model: IAGCNHead, cache: CacheData | FeatureCache | str | os.PathLike, *, batch_size: int = 256,
                  device: str | torch.device = "cpu", memory_budget_gib: float = 4.0,
                  progress: bool = False, num_rois: int | None = None) -> dict[str, Any]:
    """Logits of every image of ``cache``: {"scores": (n, C) float32, "image_ids": list, "labels": (n, C) int8}.

    ``device`` (auto | cpu | cuda[:k]) is resolved by :func:`iagcn.device.resolve_device`; the model is moved
    there (in place) and so are the batches. A cache opened here (a path) is closed here. ``num_rois``: the run's
    top-N slice (its config's num_rois), applied to a cache opened here."""
    dev = resolve_device(device)
    model.to(dev)
    with contextlib.ExitStack() as stack:
        data = cache if isinstance(cache, CacheData) else \
            stack.enter_context(CacheData(cache, memory_budget_gib=memory_budget_gib, num_rois=num_rois))
        scores = predict(model, data, None, batch_size=batch_size, device=dev, progress=progress)
        return {"scores": scores, "image_ids": list(data.image_ids), "labels": data.labels}


@torch.no_grad()
def explain_image(model: IAGCNHead, cache: CacheData | FeatureCache | str | os.PathLike, image: int | str, *,
                  device: str | torch.device = "cpu", num_rois: int | None = None) -> dict[str, Any]:
    """Per-image internals for the explain plots (eval mode, z = z_mu), as NumPy arrays; reads that one row only.

    ``image``: a row number or an image id. Keys: image_id, index, boxes (N, 4), box_valid (N,), labels (C,),
    logits (C,), y_w, y_r (C,) or None, z / z_mu / z_logvar (N,) or None (no Var_Inf), region_scores A_I^w (N, C),
    a_I (C,), A_I (C, C), A_S (C, C), A_F (C, C) (before normalisation), each None where the preset lacks it.
    ``device`` (auto | cpu | cuda[:k]): where the model (moved in place) and the image's features run.
    ``num_rois``: the run's top-N slice (its config's num_rois): only the image's first N ROIs are read.
    """
    dev = resolve_device(device)
    if isinstance(cache, CacheData):
        cache = cache.cache
    with contextlib.ExitStack() as stack:
        c = cache if isinstance(cache, FeatureCache) else stack.enter_context(FeatureCache(cache))
        ids = c.image_ids()
        if isinstance(image, str):
            if image not in ids:
                raise UserError(f"cache {c.path}: no image with id {image!r}")
            index = ids.index(image)
        else:
            index = int(image)
            if not 0 <= index < len(ids):
                raise UserError(f"cache {c.path}: no row {index} (it holds {len(ids)} images)")
        row = {name: c.read(name, index, index + 1) for name in ("global", "regions", "box_valid", "labels", "boxes")}
        if num_rois is not None and num_rois != c.num_rois:                # the top-N slice, as CacheData reads it
            check_score_order(c, num_rois, valid=c.read("box_valid").astype(bool))
            row.update({k: row[k][:, :num_rois] for k in ("regions", "box_valid", "boxes")})
    x = torch.from_numpy(row["global"].astype(np.float32))          # (1, D)
    X = torch.from_numpy(row["regions"].astype(np.float32))         # (1, N, D)
    valid = torch.from_numpy(row["box_valid"].astype(bool))         # (1, N)
    if not (torch.isfinite(x).all() and torch.isfinite(X).all()):
        raise UserError(f"cache {c.path}: non-finite features (NaN/Inf) for image {ids[index]}; re-extract it")
    was_training = model.training
    model.eval()
    model.to(dev)
    out = model(x.to(dev), X.to(dev), valid.to(dev))
    model.train(was_training)

    def first(t):
        return None if t is None else t[0].detach().cpu().numpy().copy()

    return {"image_id": ids[index], "index": index, "boxes": row["boxes"][0], "box_valid": row["box_valid"][0].astype(bool),
            "labels": row["labels"][0].astype(np.int8), "logits": first(out.logits), "y_w": first(out.y_w),
            "y_r": first(out.y_r), "z": first(out.z), "z_mu": first(out.z_mu), "z_logvar": first(out.z_logvar),
            "region_scores": first(out.scores), "a_I": first(out.a_I), "A_I": first(out.A_I),
            "A_S": model.A_S.cpu().numpy().copy(), "A_F": first(out.A_F)}


def load_run_or_checkpoint(*, run_dir: Path | None = None, checkpoint: Path | None = None,
                           which: str = "best") -> tuple[LoadedRun, Path]:
    """(the loaded run (model in eval mode), checkpoint path) from a run folder or one checkpoint file (``eval``,
    ``compare`` and the calibration's hold-out scoring share it)."""
    if checkpoint is not None:
        if not Path(checkpoint).exists():
            raise UserError(f"--checkpoint {checkpoint}: file not found")
        return load_checkpoint_model(checkpoint), Path(checkpoint)
    return load_run(run_dir, which=which), runfolder.checkpoint_path(run_dir, which)
