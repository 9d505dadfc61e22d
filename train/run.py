"""One training run: resolve inputs, train with model selection, checkpoint, resume, score the evaluation cache.

Run directory (``--out DIR``):
    config.json      resolved TrainConfig + protocol, caches (paths, config hashes), git commit, class names
    log.csv          one row per epoch: lr, loss parts, selection mAP, seconds, samples/s
    last.pt/best.pt  {model, optimizer, scheduler, rng, epoch, config, meta, best, history} (torch.load weights_only)
    scores.npz       logits (n, C) on the evaluation cache + image_ids (also scores.npy + image_ids.txt)
    metrics.json     stage three's metrics of the selected checkpoint on the evaluation cache; marks a complete run

Stage three uses :func:`load_run`, :func:`predict_cache` and :func:`explain_image`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iagcn.cache.format import FeatureCache, check_compatible
from iagcn.configio import config_from_dict, config_to_dict
from iagcn.errors import UserError
from iagcn.fsutil import atomic_path, check_writable_dir, exclusive_lock, git_commit, interrupt_hint, \
    remove_stale_temporaries, write_json_atomic, write_text_atomic
from iagcn.train.config import TrainConfig
from iagcn.train.data import CacheData
from iagcn.train.lcm import statistical_lcm
from iagcn.train.loop import evaluate, learning_rate, predict, train_one_epoch
from iagcn.train.model import IAGCNHead
from iagcn.train.standardize import feature_statistics

LOG_FIELDS = ("epoch", "lr", "loss", "loss_ml", "loss_kl", "select_mAP", "seconds", "samples_per_s")


# -- small helpers ----------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: {e}; use auto, cpu or cuda[:k]") from e


def protocol_name(config: TrainConfig) -> str:
    """Which split chose the epoch: 'holdout-F' (honest), 'select-on-eval' (published), or 'last-epoch'."""
    if config.select_on_eval:
        return "select-on-eval"
    return f"holdout-{config.val_fraction:g}" if config.val_fraction > 0 else "last-epoch"


def split_train(labels: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(train rows, held-out selection rows or None): a seeded label-stratified holdout of the train cache."""
    n = len(labels)
    if config.select_on_eval or config.val_fraction <= 0:
        return np.arange(n), None
    from iagcn.evaluate.stats import stratified_holdout

    train_idx, hold_idx = stratified_holdout(labels, fraction=config.val_fraction, seed=config.seed)
    return np.sort(np.asarray(train_idx, np.int64)), np.sort(np.asarray(hold_idx, np.int64))


def load_label_embeddings(config: TrainConfig, cache: FeatureCache) -> tuple[np.ndarray, str]:
    """H0 (C, E): the cache's label embeddings, or a .npy file named by config.label_embeddings."""
    if config.label_embeddings == "cache":
        return cache.label_embeddings()
    path = Path(config.label_embeddings)
    if not path.exists():
        raise UserError(f"--label-embeddings {path}: file not found; pass a .npy (C, E) file or 'cache'")
    try:
        emb = np.load(path, allow_pickle=False).astype(np.float32)  # user file: never unpickled
    except Exception as e:  # noqa: BLE001
        raise UserError(f"--label-embeddings {path}: not a readable .npy array ({e}); save one with numpy.save") from e
    if emb.ndim != 2 or emb.shape[0] != cache.num_classes or not np.isfinite(emb).all():
        raise UserError(f"--label-embeddings {path}: expected a finite ({cache.num_classes}, E) array, got "
                        f"{emb.shape}; one row per class in the cache's class order")
    return emb, str(path)


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as weights_only-loadable values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                      float(np_state[4])],
            "python": [py_state[0], list(py_state[1]), py_state[2]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, obj: dict[str, Any]) -> None:
    with atomic_path(path, what="checkpoint") as tmp:
        torch.save(obj, tmp)


CHECKPOINT_KEYS = ("model", "epoch", "config", "meta")                 # what loading a model needs
RESUME_KEYS = ("optimizer", "rng", "best", "history")                   # and what resuming needs on top


def load_checkpoint(path: Path, *, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`: weights_only (no unpickling of arbitrary objects)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: truncated, or not an iagcn "
                        f"checkpoint); delete it or start another --out") from e
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; it was not written by `iagcn train`")
    return ckpt


def load_state_checked(model: torch.nn.Module, state: dict[str, Any], *, path: Path, config: TrainConfig) -> None:
    """``model.load_state_dict`` with a one-line error when the weights belong to another preset or class list."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as e:
        first = " ".join(str(e).split())[:160]
        raise UserError(f"checkpoint {path}: its weights do not fit preset {config.preset!r} with these shapes "
                        f"(another preset or class list?): {first}") from e


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(path, buf.getvalue(), what="training log")


def build_model(config: TrainConfig, meta: dict[str, Any], *, label_embeddings: np.ndarray | None = None,
                A_S: np.ndarray | None = None) -> IAGCNHead:
    """The head for ``config`` and the cache shapes in ``meta`` (zeros for buffers a state_dict will fill)."""
    C, E = meta["num_classes"], meta["embedding_dim"]
    return IAGCNHead(config=config, num_classes=C, feature_dim=meta["feature_dim"], num_rois=meta["num_rois"],
                     label_embeddings=np.zeros((C, E), np.float32) if label_embeddings is None else label_embeddings,
                     A_S=np.eye(C, dtype=np.float32) if A_S is None else A_S)


def make_optimizer(model: IAGCNHead, config: TrainConfig):
    """The optimiser of ``config`` (train.optim.make_optimizer)."""
    from iagcn.train.optim import make_optimizer as make

    return make(model, config)


def schedule_lr(epoch: int, config: TrainConfig) -> float:
    """The LR of ``epoch`` under the config's schedule (train.loop.learning_rate)."""
    return learning_rate(epoch, base_lr=config.lr, step=config.lr_step, gamma=config.lr_gamma,
                         schedule=config.schedule, epochs=config.epochs)


def cache_record(cache: FeatureCache) -> dict[str, Any]:
    return {"path": str(Path(cache.path).resolve()), "extract_config_hash": cache.attrs.get("extract_config_hash"),
            "dataset": cache.attrs.get("dataset"), "split": cache.attrs.get("split"), "num_images": cache.num_images,
            # stage three (`iagcn predict`) re-runs stage one with exactly this config and checks these weight hashes
            "extract_config": cache.attrs.get("extract_config"),
            "backbone_weights_sha256": cache.attrs.get("backbone_weights_sha256"),
            "proposer_weights_sha256": cache.attrs.get("proposer_weights_sha256")}


# -- the run ----------------------------------------------------------------------------------------
def train_run(config: TrainConfig, *, train_data: CacheData, eval_data: CacheData, out_dir: str | os.PathLike,
              resume: bool = False, progress: bool = True, log=print,
              resume_command: str | None = None) -> dict[str, Any]:
    """Train ``config`` on ``train_data``, select an epoch per the protocol, score ``eval_data`` once.

    With ``resume`` a run directory holding ``last.pt`` continues from it (same config required);
    without it such a directory is refused. Returns the content of metrics.json.
    """
    # inputs first, so that a refusal leaves no run directory behind
    check_compatible(train_data.cache, eval_data.cache, role="evaluation")
    resolve_device(config.device)
    load_label_embeddings(config, train_data.cache)
    out = check_writable_dir(out_dir, what="the run directory", option="--out")
    kept = {"epochs": 0}
    how = resume_command or f"resume with `iagcn train --resume {out}`"

    def hint() -> str:
        if kept["epochs"] == 0:
            return f"interrupted: no epoch finished in {out}; {how}"
        return f"interrupted: epochs 1-{kept['epochs']} kept in {out / 'last.pt'}; {how}"

    with exclusive_lock(out / "run", what="run directory"), interrupt_hint(hint):
        for name in ("last.pt", "best.pt", "config.json", "log.csv", "metrics.json", "scores.npz", "scores.npy",
                     "image_ids.txt"):
            remove_stale_temporaries(out / name)
        return _train_run_locked(config, train_data, eval_data, out, resume, progress, log, kept)


def _train_run_locked(config, train_data, eval_data, out, resume, progress, log, kept) -> dict[str, Any]:
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    last_path, best_path = out / "last.pt", out / "best.pt"
    ckpt = None
    if last_path.exists():
        if not resume:
            raise UserError(f"--out {out} already holds a run (last.pt); pass --resume {out} to continue it "
                            f"or choose another --out")
        ckpt = load_checkpoint(last_path, keys=CHECKPOINT_KEYS + RESUME_KEYS)
        saved = config_from_dict(TrainConfig, ckpt["config"], source=str(last_path))
        if saved != config:
            diff = [f.name for f in dataclasses.fields(TrainConfig) if getattr(saved, f.name) != getattr(config, f.name)]
            raise UserError(f"--resume {out}: the run was started with a different config ({', '.join(diff)}); "
                            f"rerun with the same options or choose another --out")
        if list(ckpt["meta"].get("class_names", [])) != list(train_data.class_names):
            raise UserError(f"--resume {out}: last.pt was trained on another class list than the train cache "
                            f"{train_data.path}; resume with the run's own caches or choose another --out")
        kept["epochs"] = int(ckpt["epoch"]) + 1

    protocol = protocol_name(config)
    train_idx, hold_idx = split_train(train_data.labels, config)
    A_S = statistical_lcm(train_data.labels[train_idx], tau=config.tau, p=config.p)    # (C, C) training part only
    emb, emb_source = load_label_embeddings(config, train_data.cache)                  # (C, E)
    meta = {"num_classes": train_data.C, "feature_dim": train_data.D, "num_rois": train_data.N,
            "embedding_dim": int(emb.shape[1]), "class_names": train_data.class_names}

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    model = build_model(config, meta, label_embeddings=emb, A_S=A_S)
    if model.standardizer is not None:                                                 # train part's statistics only
        model.standardizer.set_statistics(feature_statistics(train_data, train_idx, batch_size=config.eval_batch_size,
                                                             regions=model.uses_regions))
    model = model.to(device)
    optimizer = make_optimizer(model, config)
    start_epoch, history = 0, []
    best = {"epoch": -1, "select_mAP": float("-inf")}
    if ckpt is not None:
        load_state_checked(model, ckpt["model"], path=last_path, config=config)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, best = int(ckpt["epoch"]) + 1, list(ckpt["history"]), dict(ckpt["best"])
        log(f"resuming {out} after epoch {start_epoch} (best so far: epoch {best['epoch'] + 1})")

    run_record = {
        "config": config_to_dict(config), "recipe": config.recipe, "protocol": protocol, "git_commit": git_commit(),
        "train_cache": cache_record(train_data.cache), "eval_cache": cache_record(eval_data.cache),
        "class_names": train_data.class_names, "label_embeddings_source": emb_source,
        "num_train": int(len(train_idx)), "num_selection": int(len(hold_idx)) if hold_idx is not None else
        (eval_data.n if config.select_on_eval else 0),
        "data_in_memory": {"train": train_data.in_memory, "eval": eval_data.in_memory}, "device": str(device),
        "torch_threads": torch.get_num_threads(), "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    write_json_atomic(out / "config.json", run_record, what="run config")

    def select_score() -> float:
        if hold_idx is not None:
            m, _ = evaluate(model, train_data, hold_idx, batch_size=config.eval_batch_size, device=device)
        elif config.select_on_eval:
            m, _ = evaluate(model, eval_data, None, batch_size=config.eval_batch_size, device=device)
        else:
            return float("nan")
        return float(m["mAP"])

    stale = (start_epoch - 1 - best["epoch"]) if ckpt is not None else 0
    for epoch in range(start_epoch, config.epochs):
        lr = schedule_lr(epoch, config)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        stats = train_one_epoch(model, optimizer, train_data, train_idx, config=config, epoch=epoch, device=device,
                                progress=progress)
        score = select_score()
        row = {"epoch": epoch + 1, "lr": lr, **stats, "select_mAP": score}
        history.append(row)
        improved = (score == score and score > best["select_mAP"]) or (score != score)  # NaN: last epoch is "best"
        if improved:
            best = {"epoch": epoch, "select_mAP": score if score == score else float("-inf")}
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": {"kind": config.schedule, "base_lr": config.lr, "step": config.lr_step,
                               "gamma": config.lr_gamma, "epochs": config.epochs, "last_epoch": epoch, "lr": lr},
                 "rng": rng_state(), "epoch": epoch, "config": config_to_dict(config), "meta": meta,
                 "best": best, "history": history, "protocol": protocol}
        if improved:
            save_checkpoint(best_path, state)
        save_checkpoint(last_path, state)
        kept["epochs"] = epoch + 1                   # last.pt now holds this epoch: what a resume continues from
        write_log(out / "log.csv", history)
        stale = 0 if improved else stale + 1
        log(f"epoch {epoch + 1}/{config.epochs} lr {lr:.2g} loss {stats['loss']:.4f} (ml {stats['loss_ml']:.4f} "
            f"kl {stats['loss_kl']:.4f}) select mAP {score:.2f} [{protocol}] best epoch {best['epoch'] + 1} "
            f"{stats['seconds']:.1f}s {stats['samples_per_s']:.0f} img/s")
        if config.early_stop_patience > 0 and stale >= config.early_stop_patience:
            log(f"early stop: no better selection mAP for {stale} epochs")
            break

    # -- score the evaluation cache once, with the selected checkpoint ----------------------------
    selected_path = best_path if best_path.exists() else last_path
    selected = load_checkpoint(selected_path)
    load_state_checked(model, selected["model"], path=selected_path, config=config)
    metrics, scores = evaluate(model, eval_data, None, batch_size=config.eval_batch_size, device=device,
                               progress=progress)
    save_scores(out, scores, eval_data.image_ids)
    result = {"metrics": _jsonable(metrics), "protocol": protocol, "selected_epoch": int(selected["epoch"]) + 1,
              "selection_mAP": best["select_mAP"] if best["select_mAP"] != float("-inf") else None,
              "epochs_run": len(history), "train_seconds": float(sum(r["seconds"] for r in history)),
              "eval_cache": cache_record(eval_data.cache), "preset": config.preset, "recipe": config.recipe,
              "seed": config.seed}
    write_json_atomic(out / "metrics.json", result, what="metrics")
    log(f"done: {config.preset} seed {config.seed} [{protocol}] epoch {result['selected_epoch']}: "
        + " ".join(f"{k} {metrics[k]:.1f}" for k in ("mAP", "CF1", "OF1") if k in metrics))
    return result


def save_scores(out: Path, scores: np.ndarray, image_ids: list[str]) -> None:
    """scores.npz (scores, image_ids) and the same as scores.npy + image_ids.txt."""
    with atomic_path(out / "scores.npz", what="scores") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, scores=scores.astype(np.float32), image_ids=np.asarray(image_ids, dtype=str))
    with atomic_path(out / "scores.npy", what="scores") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, scores.astype(np.float32))
    write_text_atomic(out / "image_ids.txt", "\n".join(image_ids) + "\n", what="image ids")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, float)):
            out[k] = None if not np.isfinite(v) else float(v)
        elif isinstance(v, (np.integer, int)):
            out[k] = int(v)
        elif isinstance(v, np.ndarray):
            out[k] = [None if not np.isfinite(x) else float(x) for x in v.astype(float).ravel()]
        else:
            out[k] = v
    return out


# -- for stage three ------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    model: IAGCNHead                 # in eval mode, on CPU
    config: TrainConfig
    class_names: list[str]
    A_S: np.ndarray                  # (C, C) statistical LCM of the training part
    epoch: int                       # 1-based epoch of the loaded checkpoint
    run_dir: Path
    meta: dict[str, Any]


def load_run(run_dir: str | os.PathLike, which: str = "best") -> LoadedRun:
    """The trained head of a run directory (``which``: "best" or "last"), in eval mode on CPU."""
    run_dir = Path(run_dir)
    path = run_dir / f"{which}.pt"
    if which not in ("best", "last"):
        raise UserError(f"load_run: which={which!r}; use 'best' or 'last'")
    if not path.exists():
        raise UserError(f"run {run_dir}: {path.name} not found; is this a finished `iagcn train --out` folder?")
    ckpt = load_checkpoint(path)
    config = config_from_dict(TrainConfig, ckpt["config"], source=str(path))
    try:
        model = build_model(config, ckpt["meta"])
    except KeyError as e:
        raise UserError(f"checkpoint {path}: its meta lacks {e}; it was not written by `iagcn train`") from e
    load_state_checked(model, ckpt["model"], path=path, config=config)
    model.eval()
    return LoadedRun(model=model, config=config, class_names=list(ckpt["meta"]["class_names"]),
                     A_S=model.A_S.numpy().copy(), epoch=int(ckpt["epoch"]) + 1, run_dir=run_dir, meta=ckpt["meta"])


def _as_data(cache: CacheData | FeatureCache | str | os.PathLike, memory_budget_gib: float) -> CacheData:
    return cache if isinstance(cache, CacheData) else CacheData(cache, memory_budget_gib=memory_budget_gib)


def predict_cache(model: IAGCNHead, cache: CacheData | FeatureCache | str | os.PathLike, *, batch_size: int = 256,
                  device: str = "cpu", memory_budget_gib: float = 4.0, progress: bool = False) -> dict[str, Any]:
    """Logits of every image of ``cache``: {"scores": (n, C) float32, "image_ids": list, "labels": (n, C) int8}."""
    data = _as_data(cache, memory_budget_gib)
    scores = predict(model, data, None, batch_size=batch_size, device=torch.device(device), progress=progress)
    return {"scores": scores, "image_ids": list(data.image_ids), "labels": data.labels}


@torch.no_grad()
def explain_image(model: IAGCNHead, cache: CacheData | FeatureCache | str | os.PathLike, image: int | str, *,
                  memory_budget_gib: float = 4.0) -> dict[str, Any]:
    """Per-image internals for the explain plots (eval mode, z = z_mu), as NumPy arrays.

    ``image``: a row number or an image id. Keys: image_id, index, boxes (N, 4), box_valid (N,), labels (C,),
    logits (C,), y_w, y_r (C,) or None, z / z_mu / z_logvar (N,) or None (no Var_Inf), region_scores A_I^w (N, C),
    a_I (C,), A_I (C, C), A_S (C, C), A_F (C, C) (before normalisation), each None where the preset lacks it.
    """
    data = _as_data(cache, memory_budget_gib)
    if isinstance(image, str):
        if image not in data.image_ids:
            raise UserError(f"cache {data.path}: no image with id {image!r}")
        index = data.image_ids.index(image)
    else:
        index = int(image)
    was_training = model.training
    model.eval()
    batch = next(data.batches(np.array([index]), batch_size=1, device="cpu"))
    out = model(batch.x, batch.X, batch.valid)
    model.train(was_training)

    def first(t):
        return None if t is None else t[0].detach().cpu().numpy().copy()

    return {"image_id": data.image_ids[index], "index": index,
            "boxes": data.cache.read("boxes", index, index + 1)[0], "box_valid": data.valid[index].copy(),
            "labels": data.labels[index].copy(), "logits": first(out.logits), "y_w": first(out.y_w),
            "y_r": first(out.y_r), "z": first(out.z), "z_mu": first(out.z_mu), "z_logvar": first(out.z_logvar),
            "region_scores": first(out.scores), "a_I": first(out.a_I), "A_I": first(out.A_I),
            "A_S": model.A_S.cpu().numpy().copy(), "A_F": first(out.A_F)}
