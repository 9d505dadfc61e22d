"""One training run: resolve inputs, train with model selection, checkpoint, resume, score the evaluation cache.

The run folder's files (config.json, log.csv, last.pt/best.pt, scores.npz, metrics.json) and their formats
belong to :mod:`train.runfolder`; the trained head for stage three to :mod:`train.inference`.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iagcn.cache.format import FeatureCache, check_compatible
from iagcn.configio import config_hash, config_to_dict
from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.fsutil import check_writable_dir, exclusive_lock, git_commit, interrupt_hint, link_over
from iagcn.jsonutil import to_json
from iagcn.train import runfolder
from iagcn.train.config import TrainConfig, execution_fields, recorded_config
from iagcn.train.data import CacheData
from iagcn.train.inference import build_model, load_state_checked
from iagcn.train.lcm import adjacency_control, statistical_lcm
from iagcn.train.loop import evaluate, learning_rate, predict, train_one_epoch
from iagcn.train.tensorboard_log import TensorBoardLog
from iagcn.train.model import IAGCNHead
from iagcn.train.standardize import feature_statistics
from iagcn.validation import check_numpy_file


# -- small helpers ----------------------------------------------------------------------------------
#: the protocol name of legacy_report's numbers: the epoch chosen on the evaluation (test) split, as ML-GCN, ADD-GCN
#: and ASL choose theirs (select_on_eval makes it the run's own protocol too)
LEGACY = "legacy"


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
    from iagcn.train.holdout import stratified_holdout

    train_idx, hold_idx = stratified_holdout(labels, fraction=config.val_fraction, seed=config.seed)
    return np.sort(np.asarray(train_idx, np.int64)), np.sort(np.asarray(hold_idx, np.int64))


def load_label_embeddings(config: TrainConfig, cache: FeatureCache) -> tuple[np.ndarray, str]:
    """H0 (C, E): the cache's label embeddings, or a .npy file named by config.label_embeddings."""
    if config.label_embeddings == "cache":
        return cache.label_embeddings()
    path = Path(config.label_embeddings)
    if not path.exists():
        raise UserError(f"--label-embeddings {path}: file not found; pass a .npy (C, E) file or 'cache'")
    check_numpy_file(path, where=f"--label-embeddings {path}")
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



def make_optimizer(model: IAGCNHead, config: TrainConfig):
    """The optimiser of ``config`` (train.optim.make_optimizer)."""
    from iagcn.train.optim import make_optimizer as make

    return make(model, config)


def schedule_lr(epoch: int, config: TrainConfig) -> float:
    """The LR of ``epoch`` under the config's schedule (train.loop.learning_rate)."""
    return learning_rate(epoch, base_lr=config.lr, step=config.lr_step, gamma=config.lr_gamma,
                         schedule=config.schedule, epochs=config.epochs)



_WARNED: set[str] = set()


def warn(message: str) -> None:
    """The project's one-line warning on stderr (shown also with --quiet), once per process (a sweep's runs share
    their evaluation cache: its warning is printed once, not once per run)."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


#: a hold-out below this many images, or where a quarter of the classes have fewer than
#: MIN_HOLDOUT_POSITIVES positives, cannot tell epochs apart reliably (its mAP moves by points per image)
MIN_HOLDOUT_IMAGES = 100
MIN_HOLDOUT_POSITIVES = 3


def _names(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def selection_warnings(train_data: CacheData, hold_idx: np.ndarray | None, eval_data: CacheData,
                       config: TrainConfig) -> list[str]:
    """What a user should know before the epochs start, one line each: classes without positives in the split that
    chooses the epoch or in the evaluation cache (their AP is undefined: left out of mAP), and a hold-out too small
    for model selection to mean much."""
    names = list(train_data.class_names)
    lines = []
    if hold_idx is not None:
        positives = (train_data.labels[hold_idx] == 1).sum(0)                   # (C,)
        n_hold = len(hold_idx)
        missing = [names[c] for c in np.flatnonzero(positives == 0)]
        if missing:
            lines.append(f"AP undefined for {len(missing)} class(es) without positives in the {n_hold}-image "
                         f"hold-out ({_names(missing)}): left out of the selection mAP")
        few = int((positives < MIN_HOLDOUT_POSITIVES).sum())
        if n_hold < MIN_HOLDOUT_IMAGES or few > len(names) / 4:
            lines.append(f"the hold-out has {n_hold} images ({config.val_fraction:g} of {train_data.n}) and {few} of "
                         f"{len(names)} classes have fewer than {MIN_HOLDOUT_POSITIVES} positives in it: too small "
                         f"for the chosen epoch to mean much; raise --val-fraction, or pass --val-fraction 0 "
                         f"to keep the last epoch")
    eval_missing = [names[c] for c in np.flatnonzero((eval_data.labels == 1).sum(0) == 0)]
    if eval_missing:
        lines.append(f"AP undefined for {len(eval_missing)} class(es) without positives in the evaluation cache "
                     f"{eval_data.path} ({_names(eval_missing)}): left out of its mAP, CP and CR")
    return lines


# -- the run ----------------------------------------------------------------------------------------
def check_run_inputs(config: TrainConfig, *, train_data: CacheData, eval_data: CacheData) -> None:
    """Everything a run refuses before it writes: empty caches, cache compatibility, the device, the label
    embeddings."""
    for data, option in ((train_data, "--train-cache"), (eval_data, "--eval-cache")):
        if data.n == 0:
            raise UserError(f"{option} {data.path}: the cache holds no images; extract a split with at least one "
                            f"image")
    check_compatible(train_data.cache, eval_data.cache, role="evaluation")
    for data in (train_data, eval_data):                                  # the top-N slice: train and eval alike
        if data.N != (config.num_rois or data.cache.num_rois):
            raise UserError(f"cache {data.path} was opened with {data.N} ROIs per image but the config says num_rois="
                            f"{config.num_rois}; one --set num_rois for every run reading these caches")
    resolve_device(config.device)
    load_label_embeddings(config, train_data.cache)


def train_run(config: TrainConfig, *, train_data: CacheData, eval_data: CacheData, out_dir: str | os.PathLike,
              resume: bool = False, progress: bool = True, log=print,
              resume_command: str | None = None, caller: str | None = None) -> dict[str, Any]:
    """Train ``config`` on ``train_data``, select an epoch per the protocol, score ``eval_data`` once.

    With ``resume`` a run directory holding ``last.pt`` continues from it (same config required);
    without it such a directory is refused. ``caller`` names the run in refusals (default ``--resume DIR``; a
    sweep passes what its user typed). Returns the content of metrics.json.
    """
    check_run_inputs(config, train_data=train_data, eval_data=eval_data)  # first: a refusal leaves no run directory
    out = check_writable_dir(out_dir, what="the run directory", option="--out")
    kept = {"epochs": 0}
    how = resume_command or f"resume with `iagcn train --resume {out}`"

    def hint() -> str:
        if kept["epochs"] == 0:
            return f"interrupted: no epoch finished in {out}; {how}"
        return f"interrupted: epochs 1-{kept['epochs']} kept in {runfolder.checkpoint_path(out, 'last')}; {how}"

    with exclusive_lock(out, what="run directory", inside="run"), interrupt_hint(hint):
        runfolder.remove_stale(out)
        return _train_run_locked(config, train_data, eval_data, out, resume, progress, log, kept,
                                 caller or f"--resume {out}")


def _train_run_locked(config, train_data, eval_data, out, resume, progress, log, kept, caller) -> dict[str, Any]:
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    last_path, best_path = runfolder.checkpoint_path(out, "last"), runfolder.checkpoint_path(out, "best")
    ckpt = None
    if last_path.exists():
        if not resume:
            raise UserError(f"--out {out} already holds a run (last.pt); pass --resume {out} to continue it "
                            f"or choose another --out")
        ckpt = runfolder.load_checkpoint(last_path, keys=runfolder.CHECKPOINT_KEYS + runfolder.RESUME_KEYS)
        saved = recorded_config(ckpt["config"], source=str(last_path))
        diff = saved.identity_diff(config)          # execution fields (device, threads, ...) may change
        if diff:
            raise UserError(f"{caller}: the run was started with a different config ({', '.join(diff)}); "
                            f"rerun with the same options or choose another --out")
        if list(ckpt["meta"].get("class_names", [])) != list(train_data.class_names):
            raise UserError(f"{caller}: last.pt was trained on another class list than the train cache "
                            f"{train_data.path}; resume with the run's own caches or choose another --out")
        if (out / runfolder.CONFIG).exists():  # the caches are part of a run's identity, as its config is
            runfolder.check_same_caches(out, train_data.cache, eval_data.cache, action=caller)
        kept["epochs"] = int(ckpt["epoch"]) + 1

    protocol = protocol_name(config)
    train_idx, hold_idx = split_train(train_data.labels, config)
    # shown after the first epoch, so that a run refused on its data (NaN features, ...) stays one error line
    pending_warnings = selection_warnings(train_data, hold_idx, eval_data, config)
    A_S = statistical_lcm(train_data.labels[train_idx], tau=config.tau, p=config.p)    # (C, C) training part only
    A_S, control = adjacency_control(A_S, control=config.adjacency_control, seed=config.seed, p=config.p)  # (C, C)
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
    # the legacy protocol (legacy_report): the epoch with the best evaluation-cache mAP and its metrics
    legacy = {"epoch": -1, "mAP": float("-inf"), "metrics": None}
    if ckpt is not None:
        load_state_checked(model, ckpt["model"], path=last_path, config=config)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, best = int(ckpt["epoch"]) + 1, list(ckpt["history"]), dict(ckpt["best"])
        legacy = dict(ckpt.get("legacy") or legacy)
        log(f"resuming {out} after epoch {start_epoch} (best so far: epoch {best['epoch'] + 1})")

    run_record = {
        "config": config_to_dict(config), "identity_hash": config_hash(config.identity()), "recipe": config.recipe,
        "protocol": protocol, "git_commit": git_commit(),
        "train_cache": runfolder.cache_record(train_data.cache), "eval_cache": runfolder.cache_record(eval_data.cache),
        "class_names": train_data.class_names, "label_embeddings_source": emb_source,
        "adjacency_control": control, "rois": {"read": train_data.N, "cached": train_data.cache.num_rois},
        "num_train": int(len(train_idx)), "num_selection": int(len(hold_idx)) if hold_idx is not None else
        (eval_data.n if config.select_on_eval else 0),
        "data_in_memory": {"train": train_data.in_memory, "eval": eval_data.in_memory}, "device": str(device),
        "torch_threads": torch.get_num_threads(), "model_parameters": sum(p.numel() for p in model.parameters()),
    }
    runfolder.write_record(out, run_record)

    epoch_eval: dict[str, Any] = {}                      # this epoch's evaluation-cache metrics, once computed

    def select_score() -> float:
        if hold_idx is not None:
            m, _ = evaluate(model, train_data, hold_idx, batch_size=config.eval_batch_size, device=device)
        elif config.select_on_eval:
            m, _ = evaluate(model, eval_data, None, batch_size=config.eval_batch_size, device=device)
            epoch_eval["metrics"] = m
        else:
            return float("nan")
        return float(m["mAP"])

    def legacy_score(row: dict[str, Any]) -> None:
        """The legacy protocol: score the evaluation cache now; keep this epoch's metrics when its mAP is the best
        so far (strictly: ties keep the earlier epoch)."""
        m = epoch_eval.pop("metrics", None) or evaluate(model, eval_data, None, batch_size=config.eval_batch_size,
                                                        device=device)[0]
        row["eval_mAP"] = float(m["mAP"])
        if row["eval_mAP"] > legacy["mAP"]:                # NaN (no class with positives) never wins
            legacy.update(epoch=row["epoch"] - 1, mAP=row["eval_mAP"], metrics=to_json(m))

    stale = (start_epoch - 1 - best["epoch"]) if ckpt is not None else 0
    hparams = {k: v for k, v in config_to_dict(config.identity()).items() if k not in execution_fields()}
    with contextlib.closing(TensorBoardLog(out, enabled=config.tensorboard, hparams=hparams)) as tb:  # no-op unless --tensorboard
        tb.catch_up(history)                          # resumed: the epochs of last.pt that a kill kept from the events
        for epoch in range(start_epoch, config.epochs):
            lr = schedule_lr(epoch, config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            stats = train_one_epoch(model, optimizer, train_data, train_idx, config=config, epoch=epoch, device=device,
                                    progress=progress)
            score = select_score()
            row = {"epoch": epoch + 1, "lr": lr, **stats, "select_mAP": score}
            if config.legacy_report:
                legacy_score(row)
            epoch_eval.clear()
            history.append(row)
            improved = (score == score and score > best["select_mAP"]) or (score != score)  # NaN: last epoch is "best"
            if improved:
                best = {"epoch": epoch, "select_mAP": score if score == score else float("-inf")}
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": {"kind": config.schedule, "base_lr": config.lr, "step": config.lr_step,
                                   "gamma": config.lr_gamma, "epochs": config.epochs, "last_epoch": epoch, "lr": lr},
                     "rng": rng_state(), "epoch": epoch, "config": config_to_dict(config), "meta": meta,
                     "best": best, "history": history, "protocol": protocol,
                     **({"legacy": legacy} if config.legacy_report else {})}
            if improved:
                runfolder.save_checkpoint(best_path, state)
            runfolder.save_checkpoint(last_path, state)
            kept["epochs"] = epoch + 1                   # last.pt now holds this epoch: what a resume continues from
            runfolder.write_log(out, history)
            tb.epoch(row)
            stale = 0 if improved else stale + 1
            log(f"epoch {epoch + 1}/{config.epochs} lr {lr:.2g} loss {stats['loss']:.4f} (ml {stats['loss_ml']:.4f} "
                f"kl {stats['loss_kl']:.4f}) select mAP {score:.2f} [{protocol}] best epoch {best['epoch'] + 1} "
                f"{stats['seconds']:.1f}s {stats['samples_per_s']:.0f} img/s")
            for line in pending_warnings:
                warn(line)
            pending_warnings = []
            if config.early_stop_patience > 0 and stale >= config.early_stop_patience:
                log(f"early stop: no better selection mAP for {stale} epochs")
                break

        for line in pending_warnings:
            warn(line)
        # -- score the evaluation cache once, with the selected checkpoint ----------------------------
        selected_path = best_path if best_path.exists() else last_path
        selected = runfolder.load_checkpoint(selected_path)
        load_state_checked(model, selected["model"], path=selected_path, config=config)
        metrics, scores = evaluate(model, eval_data, None, batch_size=config.eval_batch_size, device=device,
                                   progress=progress)
        runfolder.save_scores(out, scores, eval_data.image_ids)
        if hold_idx is not None:                         # for stage three's threshold calibration (never trained on)
            hold_scores = predict(model, train_data, hold_idx, batch_size=config.eval_batch_size, device=device)
            runfolder.save_holdout_scores(out, hold_scores, [train_data.image_ids[i] for i in hold_idx],
                                          train_data.labels[hold_idx], epoch=int(selected["epoch"]) + 1)
        result = {"metrics": to_json(metrics), "protocol": protocol, "selected_epoch": int(selected["epoch"]) + 1,
                  "selection_mAP": best["select_mAP"] if best["select_mAP"] != float("-inf") else None,
                  "epochs_run": len(history), "train_seconds": float(sum(r["seconds"] for r in history)),
                  "eval_cache": runfolder.cache_record(eval_data.cache), "preset": config.preset, "recipe": config.recipe,
                  "seed": config.seed}
        if config.legacy_report:                         # the same run under the legacy protocol (test-set selection)
            result["legacy"] = {"protocol": LEGACY, "selected_epoch": legacy["epoch"] + 1 if legacy["metrics"] else None,
                                "metrics": legacy["metrics"],
                                "eval_mAP_per_epoch": [row.get("eval_mAP") for row in history]}
        runfolder.write_metrics(out, result)
        tb.final(metrics, epoch=result["selected_epoch"])
        if config.keep_checkpoints == "best" and best_path.exists() and last_path.exists():
            last_path.unlink()                           # the run is complete (metrics.json): nothing resumes from last.pt
        elif history and best_path.exists() and last_path.exists() and best["epoch"] == history[-1]["epoch"] - 1:
            # the selected epoch is the last (always so under the last-epoch protocol): best.pt and last.pt hold the
            # same state, so last.pt becomes a hard link to best.pt (one file on disk; --which last, --resume work)
            link_over(best_path, last_path, what="checkpoint")
        log(done_line(result))
        return result


def done_line(result: dict[str, Any]) -> str:
    """The closing line of a run from its metrics.json content (``train --quiet`` prints it too)."""
    m = result["metrics"]
    return (f"done: {result['preset']} seed {result['seed']} [{result['protocol']}] epoch {result['selected_epoch']}: "
            + " ".join(f"{k} {m[k]:.1f}" if m[k] is not None else f"{k} -" for k in ("mAP", "CF1", "OF1") if k in m))

