"""The run folder: the one module that owns a training run's file names and formats (as cache/format.py owns the
cache). Every other module reads and writes run files through these functions.

A run folder (``iagcn train --out DIR``) holds:

    config.json      the run record: resolved TrainConfig, protocol, caches (paths, config hashes), git commit,
                     class names (written before the first epoch)
    log.csv          one row per epoch: LOG_FIELDS
    last.pt/best.pt  checkpoints {model, optimizer, rng, epoch, config, meta, best, history, protocol}
                     (torch.save; read with torch.load(weights_only=True))
    scores.npz       logits (n, C) float32 of the evaluation cache + image_ids (also scores.npy + image_ids.txt)
    holdout_scores.npz  with a hold-out (--val-fraction > 0): the selected checkpoint's logits on the hold-out rows
                     of the train cache + their image_ids, labels and the epoch (stage three's threshold calibration)
    metrics.json     the selected checkpoint's metrics on the evaluation cache; written last: marks a complete run

Only training writes these files. An evaluation writes its own files elsewhere (``evaluate/evaluation.py``)
and refuses a run folder as its output (:func:`refuse_run_folder`), so it never replaces what training wrote.
Readers check the schema: a missing file, an unreadable one or one without the required keys is one line,
``UserError``, naming the file and what to do.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import atomic_path, remove_stale_temporaries, write_json_atomic, write_text_atomic
from iagcn.validation import check_numpy_file

CONFIG = "config.json"
LOG = "log.csv"
LAST = "last.pt"
BEST = "best.pt"
SCORES = "scores.npz"
SCORES_NPY = "scores.npy"
IMAGE_IDS = "image_ids.txt"
METRICS = "metrics.json"
HOLDOUT_SCORES = "holdout_scores.npz"
RUN_FILES = (LAST, BEST, CONFIG, LOG, METRICS, SCORES, SCORES_NPY, IMAGE_IDS, HOLDOUT_SCORES)

#: the schema: keys every config.json / metrics.json / checkpoint holds
CONFIG_KEYS = ("config", "protocol", "git_commit", "train_cache", "eval_cache", "class_names")
METRICS_KEYS = ("metrics", "protocol", "selected_epoch", "selection_mAP", "epochs_run", "train_seconds",
                "eval_cache", "preset", "seed")
LOG_FIELDS = ("epoch", "lr", "loss", "loss_ml", "loss_kl", "loss_y_w", "loss_y_r", "loss_a_I", "loss_l2", "select_mAP",
              "seconds", "samples_per_s")
OPTIONAL_LOG_FIELDS = ("eval_mAP",)                                      # written when the runs record them (legacy_report)
CHECKPOINT_KEYS = ("model", "epoch", "config", "meta")                 # what loading a model needs
RESUME_KEYS = ("optimizer", "rng", "best", "history")                   # and what resuming needs on top


# -- what a folder is ---------------------------------------------------------------------------------------
def is_run_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a training run's files (its record or a checkpoint)."""
    path = Path(path)
    return any((path / name).exists() for name in (CONFIG, LAST, BEST))


def is_complete(run_dir: str | os.PathLike) -> bool:
    """True when training finished: metrics.json (written last) is there."""
    return (Path(run_dir) / METRICS).exists()


def refuse_run_folder(path: str | os.PathLike, *, option: str = "--out") -> None:
    """Outputs of other commands never go into a run folder: its files are training's record."""
    path = Path(path)
    if is_run_folder(path):
        raise UserError(f"{option} {path} is a training run folder (its {CONFIG} and {METRICS} are the run's "
                        f"record); write elsewhere, e.g. {option} {path / 'eval'}")


def remove_stale(run_dir: Path) -> None:
    """Temporaries of every run file left by a killed process."""
    for name in RUN_FILES:
        remove_stale_temporaries(run_dir / name)


# -- config.json: the run record ----------------------------------------------------------------------------
def cache_record(cache) -> dict[str, Any]:
    """config.json's entry for a cache (``cache.format.FeatureCache``): what stage three needs to find and check it."""
    return {"path": str(Path(cache.path).resolve()), "extract_config_hash": cache.attrs.get("extract_config_hash"),
            "fingerprint": cache.fingerprint(),   # content identity: resume and sweep refuse another cache
            "dataset": cache.attrs.get("dataset"), "split": cache.attrs.get("split"), "num_images": cache.num_images,
            # stage three (`iagcn predict`) re-runs stage one with exactly this config and checks these weight hashes
            "extract_config": cache.attrs.get("extract_config"),
            "backbone_weights_sha256": cache.attrs.get("backbone_weights_sha256"),
            "proposer_weights_sha256": cache.attrs.get("proposer_weights_sha256")}


def check_same_caches(run_dir: str | os.PathLike, train, evaluation, *, action: str) -> None:
    """Refuse to continue (``action``, e.g. "--resume DIR") a run on other caches than the ones it started on.

    The caches are part of a run's identity, as its config is. Compared: each cache's content fingerprint
    (``FeatureCache.fingerprint``); for config.json files written before fingerprints, the extraction config hash
    and the number of images. A cache that merely moved (same content, another path) is accepted."""
    run_dir = Path(run_dir)
    for role, cache, option in (("train", train, "--train-cache"), ("eval", evaluation, "--eval-cache")):
        saved = recorded_cache(run_dir, role, option=action.split()[0])
        now = cache_record(cache)
        fields = ("fingerprint",) if "fingerprint" in saved else ("extract_config_hash", "num_images")
        if any(saved.get(f) != now.get(f) for f in fields):
            what = "content fingerprint" if fields == ("fingerprint",) else "extraction config hash / image count"
            raise UserError(f"{action}: run {run_dir} was trained on another {option} ({saved.get('path')}; its "
                            f"{what} differs from {cache.path}); use the run's own caches or train into another "
                            f"--out")


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    _check_keys(record, CONFIG_KEYS, Path(run_dir) / CONFIG)
    write_json_atomic(Path(run_dir) / CONFIG, record, what="run config")


def read_record(run_dir: str | os.PathLike, *, option: str = "--run") -> dict[str, Any]:
    """The run's config.json, checked against the schema."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise UserError(f"{option} {run_dir}: no {CONFIG}; pass a folder written by `iagcn train --out`")
    record = _read_json(path, what="run config")
    _check_keys(record, CONFIG_KEYS, path)
    if not isinstance(record["config"], dict):
        raise UserError(f"{path}: 'config' is not a mapping; rerun the training or fix the file")
    return record


def read_verified_record(run_dir: str | os.PathLike, *, option: str = "--run") -> dict[str, Any]:
    """The run's config.json, checked against the config its checkpoint stores (best.pt, else last.pt): the same
    identity config (``TrainConfig.identity_diff``) and class names, else one line. A config.json that disagrees
    with the weights it describes (edited, or copied from another run) would put the run under another preset or
    seed in a table. A folder without a checkpoint (the linear probe; a run whose checkpoints were deleted) has
    nothing to check against and is returned as read."""
    from iagcn.train.config import recorded_config

    run_dir = Path(run_dir)
    record = read_record(run_dir, option=option)
    ckpt_path = next((p for p in (run_dir / BEST, run_dir / LAST) if p.exists()), None)
    if ckpt_path is None:
        return record
    ckpt = load_checkpoint(ckpt_path)
    saved = recorded_config(record["config"], source=str(run_dir / CONFIG))
    diff = saved.identity_diff(recorded_config(ckpt["config"], source=str(ckpt_path)))
    if list(record.get("class_names") or []) != list(ckpt["meta"].get("class_names") or []):
        diff.append("class_names")
    if diff:
        raise UserError(f"{run_dir / CONFIG}: disagrees with {ckpt_path.name} on {', '.join(diff)} (the folder was "
                        f"edited or mixed with another run's files); restore the run's own config.json or retrain it")
    return record


def cache_identity(entry: dict[str, Any] | None) -> tuple:
    """What identifies a recorded cache: its content fingerprint (config.json files written before fingerprints:
    the extraction config hash and the number of images), never its path."""
    entry = entry or {}
    if "fingerprint" in entry:
        return ("fingerprint", entry["fingerprint"])
    return ("hash", entry.get("extract_config_hash"), entry.get("num_images"))


def seed_group_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What, besides the seed, differs between two run records (config.json): identity config fields (execution
    fields such as the device may differ) and the train / evaluation caches. Empty: the two runs are seeds of one
    experiment."""
    from iagcn.train.config import recorded_config

    def identity(record: dict[str, Any]) -> dict[str, Any]:
        cfg = dict(record["config"])
        if record.get("recipe") != "probe":        # the linear probe's config is not a TrainConfig
            import dataclasses

            cfg = dataclasses.asdict(recorded_config(cfg, source=CONFIG).identity())
        cfg.pop("seed", None)
        return cfg

    ia, ib = identity(a), identity(b)
    diff = [k for k in sorted(set(ia) | set(ib)) if ia.get(k) != ib.get(k)]
    for role in ("train", "eval"):
        if cache_identity(a.get(f"{role}_cache")) != cache_identity(b.get(f"{role}_cache")):
            diff.append(f"{role} cache")
    return diff


def recorded_cache(run_dir: str | os.PathLike, role: str, *, option: str = "--run") -> dict[str, Any]:
    """config.json's ``train_cache`` / ``eval_cache`` entry (``role``: "train" or "eval")."""
    entry = read_record(run_dir, option=option)[f"{role}_cache"]
    if not isinstance(entry, dict) or "path" not in entry:
        raise UserError(f"{Path(run_dir) / CONFIG}: its {role}_cache entry lacks 'path'; rerun the training")
    return entry


# -- metrics.json: the completion marker --------------------------------------------------------------------
def write_metrics(run_dir: Path, result: dict[str, Any]) -> None:
    _check_keys(result, METRICS_KEYS, Path(run_dir) / METRICS)
    write_json_atomic(Path(run_dir) / METRICS, result, what="metrics")


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The finished run's metrics.json, checked against the schema."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        raise UserError(f"{run_dir}: no {METRICS}; the run has not finished (resume it with `iagcn train --resume`)")
    result = _read_json(path, what="run metrics")
    _check_keys(result, METRICS_KEYS, path)
    return result


# -- log.csv ------------------------------------------------------------------------------------------------
def log_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOG


def write_log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = LOG_FIELDS + tuple(k for k in OPTIONAL_LOG_FIELDS if any(k in row for row in history))
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(Path(run_dir) / LOG, buf.getvalue(), what="training log")


# -- checkpoints --------------------------------------------------------------------------------------------
def checkpoint_path(run_dir: str | os.PathLike, which: str) -> Path:
    """``which``: "best" (the selected epoch) or "last"."""
    if which not in ("best", "last"):
        raise UserError(f"which={which!r}: use 'best' or 'last'")
    return Path(run_dir) / (BEST if which == "best" else LAST)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    _check_keys(state, CHECKPOINT_KEYS + RESUME_KEYS, path)
    with atomic_path(path, what="checkpoint") as tmp:
        # through a Python file: a failed write keeps its errno (ENOSPC, EFBIG), which atomic_path turns into one
        # line; given a path, torch's own writer reports only "[enforce fail at inline_container.cc] unexpected pos"
        with open(tmp, "wb") as fh:
            try:
                torch.save(state, fh)
            except RuntimeError as e:
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from e
                raise


def load_checkpoint(path: Path, *, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`: weights_only (no unpickling of arbitrary objects)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"checkpoint {path} cannot be read ({type(e).__name__}: truncated, or not an iagcn "
                        f"checkpoint); delete it or start another --out") from e
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; it was not written by `iagcn train`")
    return ckpt


# -- scores -------------------------------------------------------------------------------------------------
def save_scores(run_dir: Path, scores: np.ndarray, image_ids: list[str]) -> None:
    """scores.npz (scores, image_ids) and the same as scores.npy + image_ids.txt."""
    run_dir = Path(run_dir)
    with atomic_path(run_dir / SCORES, what="scores") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, scores=scores.astype(np.float32), image_ids=np.asarray(image_ids, dtype=str))
    with atomic_path(run_dir / SCORES_NPY, what="scores") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, scores.astype(np.float32))
    write_text_atomic(run_dir / IMAGE_IDS, "\n".join(image_ids) + "\n", what="image ids")


def load_scores(run_dir: str | os.PathLike) -> tuple[np.ndarray, list[str]] | None:
    """The logits a run saved for its evaluation cache (scores.npz, else scores.npy + image_ids.txt), or None."""
    run_dir = Path(run_dir)
    npz, npy, ids = run_dir / SCORES, run_dir / SCORES_NPY, run_dir / IMAGE_IDS
    try:
        if npz.exists():
            check_numpy_file(npz, where=str(npz))
            with np.load(npz, allow_pickle=False) as z:
                if "scores" in z and "image_ids" in z:
                    return np.asarray(z["scores"], dtype=np.float64), [str(i) for i in z["image_ids"]]
        if npy.exists() and ids.exists():
            check_numpy_file(npy, where=str(npy))
            return (np.load(npy, allow_pickle=False).astype(np.float64),
                    [line for line in ids.read_text().splitlines() if line])
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir}: saved scores unreadable ({type(e).__name__}: {e}); delete {SCORES}, "
                        f"{SCORES_NPY} and {IMAGE_IDS} to score from the checkpoint") from e
    return None


def save_holdout_scores(run_dir: Path, scores: np.ndarray, image_ids: list[str], labels: np.ndarray, *,
                        epoch: int) -> None:
    """holdout_scores.npz: logits (n_hold, C) of the hold-out rows (never trained on), their ids and labels, and the
    1-based epoch of the checkpoint that scored them."""
    with atomic_path(Path(run_dir) / HOLDOUT_SCORES, what="hold-out scores") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, scores=scores.astype(np.float32), image_ids=np.asarray(image_ids, dtype=str),
                     labels=np.asarray(labels, dtype=np.int8), epoch=np.asarray(int(epoch)))


def load_holdout_scores(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``{"scores" (n, C), "image_ids", "labels" (n, C), "epoch"}`` from holdout_scores.npz, or None without it."""
    path = Path(run_dir) / HOLDOUT_SCORES
    if not path.exists():
        return None
    try:
        check_numpy_file(path, where=str(path))                 # sizes bounded before np.load allocates
        with np.load(path, allow_pickle=False) as z:
            return {"scores": np.asarray(z["scores"], dtype=np.float64), "image_ids": [str(i) for i in z["image_ids"]],
                    "labels": np.asarray(z["labels"], dtype=np.int8), "epoch": int(z["epoch"]), "path": str(path)}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: unreadable hold-out scores ({type(e).__name__}: {e}); delete it (stage three then "
                        f"scores the hold-out from the checkpoint)") from e


# -- helpers ------------------------------------------------------------------------------------------------
def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    from iagcn.configio import DuplicateKeyError, loads_json_unique

    try:
        data = loads_json_unique(path.read_text())
    except DuplicateKeyError as e:
        raise UserError(f"{path}: {what}: {e}; fix the file (the later value would silently win)") from e
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable {what} ({type(e).__name__}); rerun the training or fix the file") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: {what} is not a JSON object; rerun the training or fix the file")
    return data


def _check_keys(data: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"{path}: lacks {', '.join(repr(k) for k in missing)}; not written by this version of "
                        f"`iagcn train` (rerun the training)")
