"""Threshold calibration for CP ... OF1: thresholds chosen on a hold-out of the TRAIN cache, never on the evaluated
images, reported next to the paper's fixed 0.5 (docs/metrics.md, "Calibrated thresholds").

Where the hold-out scores come from:

* a run trained with a hold-out (``--val-fraction > 0``) saved ``holdout_scores.npz``: the selected checkpoint's
  logits on the hold-out rows (which it never trained on). Used when its epoch is the evaluated checkpoint's;
* otherwise, when the run had a hold-out, the same seeded split of the run's train cache is recomputed and its rows
  are scored with the evaluated checkpoint (train cache present and unchanged);
* ``--holdout-scores FILE --holdout-targets FILE``: hold-out scores of any model (for ``--scores``);
* anything else (``--val-fraction 0``: every train image was trained on; ``select_on_eval``: no train hold-out;
  the evaluated cache is the train cache) makes the calibrated block *unavailable*, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iagcn.errors import UserError
from iagcn.jsonutil import finite_or_none
from iagcn.metrics import CALIBRATION_MIN_POSITIVES, calibrate_thresholds, predict_threshold, prf_counts, \
    prf_from_counts, sigmoid, thresholded_metrics, validate_scores_targets

CRITERION = (f"global: maximises OF1 on the hold-out; per class: maximises the class's F1 on the hold-out "
             f"(classes with fewer than {CALIBRATION_MIN_POSITIVES} hold-out positives use the global threshold)")


@dataclass
class Holdout:
    """Scores and targets of images held out from training, in the evaluated scores' space and class order."""

    scores: np.ndarray            # (n_hold, C)
    targets: np.ndarray           # (n_hold, C) 1 / 0 / -1
    image_ids: list[str] | None
    source: str                   # where they come from, for the record


@dataclass
class Unavailable:
    reason: str


def _as_probability(threshold: float, scores_are: str) -> float:
    return float(sigmoid(np.array([threshold]))[0]) if scores_are == "logits" else float(threshold)


def calibration_record(scores, targets, *, class_names: Sequence[str], holdout: Holdout | Unavailable,
                       scores_are: str, threshold: float, image_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``calibration`` entry of metrics.json: CP ... OF1 at ``threshold`` (the paper's 0.5) and, when a hold-out
    is available, at the global and per-class thresholds chosen on it (never on ``scores``)."""
    s, t = validate_scores_targets(scores, targets, scores_are=scores_are)
    fixed = predict_threshold(s, threshold=threshold, scores_are=scores_are)  # (n, C)
    record: dict[str, Any] = {
        "fixed": {"threshold_probability": threshold,
                  "metrics": {k: finite_or_none(float(v)) for k, v in prf_from_counts(*prf_counts(fixed, t)).items()}},
        "criterion": CRITERION, "min_positives": CALIBRATION_MIN_POSITIVES, "scores_are": scores_are}
    if isinstance(holdout, Unavailable):
        record.update(available=False, reason=holdout.reason)
        return record
    if image_ids is not None and holdout.image_ids is not None:
        shared = set(holdout.image_ids) & set(image_ids)
        if shared:
            record.update(available=False, reason=f"{len(shared)} hold-out image(s) are among the evaluated images "
                                                  f"(e.g. {sorted(shared)[0]!r}): thresholds are never chosen on "
                                                  f"the evaluated set")
            return record
    hs, ht = validate_scores_targets(holdout.scores, holdout.targets, scores_are=scores_are)
    if hs.shape[1] != s.shape[1]:
        raise UserError(f"hold-out scores have {hs.shape[1]} classes, the evaluated scores {s.shape[1]}; "
                        "pass hold-out scores of the same model and classes")
    if not (ht == 1).any():
        record.update(available=False, reason=f"the {len(ht)}-image hold-out has no positive label "
                                              f"({holdout.source}); use a larger hold-out")
        return record
    chosen = calibrate_thresholds(hs, ht)
    names = list(class_names)
    record.update(
        available=True, source=holdout.source, holdout_images=int(len(hs)),
        holdout_positives={c: int(n) for c, n in zip(names, chosen["positives"])},
        **{"global": {"threshold": chosen["global"],
                      "threshold_probability": _as_probability(chosen["global"], scores_are),
                      "holdout_OF1": 100.0 * chosen["global_OF1"],
                      "metrics": {k: finite_or_none(v) for k, v in thresholded_metrics(s, t, chosen["global"]).items()}},
           "per_class": {"thresholds": {c: float(v) for c, v in zip(names, chosen["per_class"])},
                         "threshold_probabilities": {c: _as_probability(v, scores_are)
                                                     for c, v in zip(names, chosen["per_class"])},
                         "fallback_to_global": [c for c, f in zip(names, chosen["fallback"]) if f],
                         "metrics": {k: finite_or_none(v)
                                     for k, v in thresholded_metrics(s, t, chosen["per_class"]).items()}}})
    return record


# ----------------------------------------------------------------------------------------------- sources
def run_holdout(*, run_dir: Path | None, checkpoint: Path | None, which: str, eval_cache_path: Path,
                batch_size: int = 256, device: str = "auto") -> Holdout | Unavailable:
    """The hold-out of a run for the checkpoint being evaluated (see the module docstring), or why there is none."""
    from iagcn.cache.format import FeatureCache
    from iagcn.train.inference import load_run_or_checkpoint
    from iagcn.train import runfolder

    base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
    run, ckpt_path = load_run_or_checkpoint(run_dir=run_dir, checkpoint=checkpoint, which=which)
    cfg = run.config
    if cfg.select_on_eval:
        return Unavailable("the run chose its epoch on the evaluation cache (select_on_eval) and held nothing out of "
                           "its train cache; thresholds are never chosen on the evaluated set")
    if cfg.val_fraction <= 0:
        return Unavailable("the run trained on every image of its train cache (val_fraction 0): no untouched "
                           "hold-out to choose thresholds on; train with --val-fraction 0.1 to get one")
    if not (base / runfolder.CONFIG).exists():
        return Unavailable(f"{ckpt_path} has no run record ({runfolder.CONFIG}) beside it naming its train cache")
    recorded = runfolder.recorded_cache(base, "train")
    with FeatureCache(eval_cache_path) as c:
        eval_fingerprint = c.fingerprint()
    if recorded.get("fingerprint") == eval_fingerprint:
        return Unavailable(f"the evaluated cache {eval_cache_path} is the run's train cache: its hold-out rows are "
                           f"among the evaluated images")
    saved = runfolder.load_holdout_scores(base)
    if saved is not None and saved["epoch"] == run.epoch:
        return Holdout(scores=saved["scores"], targets=saved["labels"], image_ids=saved["image_ids"],
                       source=f"{saved['path']}: epoch {saved['epoch']}'s logits on the run's {len(saved['labels'])}-"
                              f"image hold-out of its train cache (never trained on)")
    train_path = Path(str(recorded.get("path", "")))
    if not train_path.is_file():
        return Unavailable(f"no {runfolder.HOLDOUT_SCORES} for epoch {run.epoch} in {base} and its train cache "
                           f"{train_path} is not there to score the hold-out from")
    with FeatureCache(train_path) as c:
        if recorded.get("fingerprint") != c.fingerprint():
            return Unavailable(f"no {runfolder.HOLDOUT_SCORES} for epoch {run.epoch} in {base} and its train cache "
                               f"{train_path} changed since training (another fingerprint)")
    from iagcn.device import resolve_device
    from iagcn.train.data import CacheData
    from iagcn.train.loop import predict
    from iagcn.train.run import split_train

    data = CacheData(train_path)
    try:
        _, hold_idx = split_train(data.labels, cfg)             # the run's own seeded split
        scores = predict(run.model.to(resolve_device(device)), data, hold_idx, batch_size=batch_size,
                         device=resolve_device(device))
        targets, ids = data.labels[hold_idx], [data.image_ids[i] for i in hold_idx]
    finally:
        data.close()
    return Holdout(scores=np.asarray(scores, np.float64), targets=targets, image_ids=ids,
                   source=f"epoch {run.epoch} ({ckpt_path.name}) scoring the run's {len(hold_idx)}-image hold-out of "
                          f"{train_path} (val_fraction {cfg.val_fraction:g}, seed {cfg.seed}; never trained on)")


def file_holdout(scores_path: str, targets_path: str, *, class_names: Sequence[str]) -> Holdout:
    """``--holdout-scores`` / ``--holdout-targets``: read and aligned like ``--scores`` / ``--targets``."""
    from iagcn.evaluate import inputs as I

    st = I.read_matrix(scores_path, option="--holdout-scores")
    tt = I.read_matrix(targets_path, option="--holdout-targets", key="labels")
    s, t, ids = I.align_by_ids(st, tt)
    s, t, names = I.align_columns(st, tt, s, t, list(class_names))
    if set(names) != set(class_names):
        raise UserError(f"--holdout-scores {scores_path}: its classes differ from the evaluated ones; pass hold-out "
                        "scores of the same model and classes")
    position = {c: k for k, c in enumerate(names)}
    columns = [position[c] for c in class_names]               # the evaluated scores' column order
    s, t = s[:, columns], t[:, columns]
    return Holdout(scores=s, targets=t, image_ids=ids,
                   source=f"--holdout-scores {Path(scores_path).resolve()} with --holdout-targets "
                          f"{Path(targets_path).resolve()}")
