"""The `linear-probe` reference: scikit-learn's LogisticRegression on the standardised global features.

The simplest strong baseline a reviewer would try on frozen features, reported in every sweep table so each
head's distance from it is visible. One binary L2-regularised logistic regression per class on x (standardised
with the training cache's statistics), entries with target -1 (VOC difficult-only) left out of that class's
fit; one inverse regularisation strength C for all classes, chosen by k-fold cross-validation on the TRAINING
cache only (mean over folds of the fold's mAP). The evaluation cache is scored once, with C refitted on the
whole training cache.

The `wide-probe` reference (``features="wide"``) is the same probe on [x, max over valid ROIs of X] (n, 2D): the
information the region branch sees, so a head with a region branch is compared with a probe that reads its inputs
too (an image without a valid ROI is read through its padding boxes, as the head does: train.model.regions_or_padding).

A probe run folder looks like a training run's (config.json, scores.npz, metrics.json), so `iagcn compare`
and the sweep's ΔmAP column read it like any other run.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iagcn.errors import UserError

PROBE_NAME = "linear-probe"
WIDE_PROBE_NAME = "wide-probe"
#: the probes' features -> their row name
PROBE_NAMES = {"global": PROBE_NAME, "wide": WIDE_PROBE_NAME}


@dataclass(frozen=True)
class ProbeConfig:
    Cs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)  # candidate inverse L2 strengths (standardised x)
    folds: int = 3                              # cross-validation folds on the training cache
    seed: int = 0                               # seeds the label-stratified fold assignment
    max_iter: int = 2000                        # lbfgs iterations per fit

    def __post_init__(self) -> None:
        if not self.Cs or any(not (c > 0 and math.isfinite(c)) for c in self.Cs):
            raise UserError("probe: Cs must be a non-empty list of positive numbers")
        if self.folds < 2:
            raise UserError("probe: folds must be >= 2")
        if self.max_iter < 1:
            raise UserError("probe: max_iter must be >= 1")


def standardise(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """(x - mean) / std per dimension with the statistics of ``train_x`` (n, D); constant dims only centred."""
    mean = train_x.mean(0)                                      # (D,)
    std = train_x.std(0)                                        # (D,)
    std = np.where(std < 1e-3, 1.0, std)                        # (D,)
    return [(a - mean) / std for a in (train_x, *others)]       # each (n_k, D)


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *, C: float,
                max_iter: int) -> np.ndarray:
    """One logistic regression per class; returns decision values (n_test, C_classes) (logits)."""
    from sklearn.linear_model import LogisticRegression

    n_classes = y_train.shape[1]
    out = np.zeros((len(x_test), n_classes), np.float64)        # (n_test, C)
    for c in range(n_classes):
        keep = y_train[:, c] >= 0                               # (n,) -1 = difficult-only: left out
        target = (y_train[keep, c] == 1).astype(int)            # (k,)
        if target.min() == target.max():                        # one class only: a constant logit
            out[:, c] = 10.0 if target[0] == 1 else -10.0
            continue
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit(x_train[keep], target)
        out[:, c] = clf.decision_function(x_test)               # (n_test,)
    return out


def choose_C(x: np.ndarray, y: np.ndarray, config: ProbeConfig, *, log=None) -> tuple[float, dict[str, float]]:
    """C with the best mean fold mAP (k label-stratified folds of the training cache); ties -> the smaller C.
    ``log``: one progress line per candidate C (the fits take a while on a real cache)."""
    from iagcn.metrics import multilabel_metrics
    from iagcn.train.holdout import stratified_holdout

    folds = np.zeros(len(y), np.int64)                          # (n,) fold of each image
    rest = np.arange(len(y))
    for k in range(config.folds - 1):                           # peel off folds of equal size, stratified
        frac = 1.0 / (config.folds - k)
        keep, hold = stratified_holdout(y[rest], fraction=frac, seed=config.seed + k)
        folds[rest[hold]] = k
        rest = rest[keep]
    folds[rest] = config.folds - 1
    scores: dict[str, float] = {}
    t0 = time.perf_counter()
    for j, C in enumerate(config.Cs):
        maps = []
        for k in range(config.folds):
            tr, te = folds != k, folds == k
            xtr, xte = standardise(x[tr], x[te])
            s = fit_predict(xtr, y[tr], xte, C=C, max_iter=config.max_iter)
            maps.append(multilabel_metrics(s, y[te], scores_are="logits")["mAP"])
        scores[f"{C:g}"] = float(np.mean(maps))
        if log:
            log(f"{PROBE_NAME}: C {C:g}: CV mAP {scores[f'{C:g}']:.2f} ({j + 1}/{len(config.Cs)} values of C, "
                f"{time.perf_counter() - t0:.0f}s)")
    best = max(config.Cs, key=lambda c: (scores[f"{c:g}"], -c))
    return float(best), scores


def check_probe_inputs(train_data, config: ProbeConfig = ProbeConfig()) -> None:
    """Refuse, before a sweep writes anything, a training cache too small for the probe's k-fold cross-validation."""
    if train_data.n < config.folds:
        raise UserError(f"--train-cache {train_data.path}: {train_data.n} image(s), too few for the probe "
                        f"references' {config.folds}-fold cross-validation (at least {config.folds}); use a larger "
                        f"training cache or pass --no-probe (and no --wide-probe)")


def probe_features(data, *, features: str = "global", batch_size: int = 256) -> np.ndarray:
    """The probe's inputs of every image of ``data`` (CacheData), float64: x (n, D) ("global"), or [x, max over
    valid ROIs of X] (n, 2D) ("wide"; the ROIs are the ones ``data`` reads: its top-N slice, if any)."""
    if features == "global":
        return data.cache.read("global").astype(np.float64)                          # (n, D)
    if features != "wide":
        raise ValueError(f"probe_features: unknown features {features!r}")
    out = np.empty((data.n, 2 * data.D), np.float64)                                  # (n, 2D)
    for b in data.batches(batch_size=batch_size, regions=True):
        valid = b.valid.numpy()                                                       # (B, N)
        valid = valid | ~valid.any(1, keepdims=True)                                  # (B, N) none valid: padding
        X = np.where(valid[..., None], b.X.numpy(), -np.inf)                         # (B, N, D) padding out of the max
        out[b.index, :data.D] = b.x.numpy()                                           # (B, D) x
        out[b.index, data.D:] = X.max(1)                                              # (B, D) max over valid ROIs
    return out


def run_probe(train_data, eval_data, out_dir: str | os.PathLike, *, config: ProbeConfig = ProbeConfig(),
              log=print, features: str = "global") -> dict[str, Any]:
    """Fit the probe on ``train_data`` (CacheData), score ``eval_data`` once; write a run-like folder.

    ``features``: "global" (`linear-probe`, x) or "wide" (`wide-probe`, [x, max over valid ROIs of X]).
    A folder that already holds metrics.json for the same probe config and caches (their content fingerprints,
    ``FeatureCache.fingerprint``, as for every run) is reused; otherwise the probe is fitted again.
    """
    import json

    from iagcn.fsutil import git_commit
    from iagcn.jsonutil import to_json
    from iagcn.metrics import multilabel_metrics
    from iagcn.train import runfolder

    check_probe_inputs(train_data, config)
    name = PROBE_NAMES[features]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": {"preset": name, "seed": config.seed, **asdict(config),
                         **({"num_rois": train_data.N} if features == "wide" else {})}, "recipe": "probe",
              "protocol": f"C by {config.folds}-fold CV on the train cache", "git_commit": git_commit(),
              "train_cache": runfolder.cache_record(train_data.cache),
              "eval_cache": runfolder.cache_record(eval_data.cache),
              "class_names": train_data.class_names}
    if runfolder.is_complete(out) and (out / runfolder.CONFIG).exists():
        old = runfolder.read_record(out, option="probe")
        same = old.get("config") == json.loads(json.dumps(record["config"])) and all(  # caches: by content
            isinstance(old.get(role), dict) and old[role].get("fingerprint") == record[role]["fingerprint"]
            for role in ("train_cache", "eval_cache"))
        if same:
            log(f"{name}: complete, reused ({out})")
            return runfolder.read_metrics(out)
    runfolder.write_record(out, record)
    t0 = time.perf_counter()
    x_tr = probe_features(train_data, features=features)       # (n, D) or (n, 2D)
    y_tr = train_data.labels                                    # (n, C)
    x_ev = probe_features(eval_data, features=features)        # (m, D) or (m, 2D)
    log(f"{name}: {len(config.Cs)} values of C x {config.folds} folds on {len(y_tr)} images, then one refit")
    C, cv = choose_C(x_tr, y_tr, config, log=log)
    xtr, xev = standardise(x_tr, x_ev)
    scores = fit_predict(xtr, y_tr, xev, C=C, max_iter=config.max_iter).astype(np.float32)  # (m, C)
    metrics = multilabel_metrics(scores, eval_data.labels, scores_are="logits")
    runfolder.save_scores(out, scores, eval_data.image_ids)
    result = {"metrics": to_json(metrics), "protocol": record["protocol"], "preset": name, "recipe": "probe",
              "seed": config.seed, "C": C, "cv_mAP": cv, "selected_epoch": 0, "selection_mAP": None, "epochs_run": 0,
              "train_seconds": float(time.perf_counter() - t0), "eval_cache": record["eval_cache"]}
    runfolder.write_metrics(out, result)
    log(f"{name}: C {C:g} (CV mAP {cv[f'{C:g}']:.2f}) -> eval mAP {metrics['mAP']:.2f} "
        f"({result['train_seconds']:.0f}s)")
    return result
