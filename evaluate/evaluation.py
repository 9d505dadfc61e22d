"""`iagcn eval`: score files or trained runs -> metrics.json, per_class_ap.csv, scores, the paper's tables, plots.

Two sources of scores, one evaluation path (:func:`evaluate_scores`):

* ``--scores FILE --targets FILE``: predictions of any model (npy / npz / csv; the targets may also be a cache .h5),
  logits or probabilities as ``--scores-are`` says;
* ``--run DIR`` (or ``--checkpoint FILE``) ``--cache FILE``: the trained head of a run scores every image of the
  cache (stage two's :func:`train.inference.predict_cache`, :mod:`evaluate.runscores`), never retraining.

Outputs of one evaluation (``--out DIR``), each written atomically:

    eval_config.json   the EvalConfig, the inputs (paths, run, cache) and the git commit
    metrics.json       {"metrics": {mAP, CP ... OF1, *_top3}, "per_class_ap": {class: AP}, "num_images",
                        "map_conventions": {rule: {mAP, num_images, per_class_ap}}, "positives_per_class",
                        "calibration": {fixed, global, per_class | reason}, ...} (docs/metrics.md)
    per_class_ap.csv   class,ap (percent, empty for classes without positives)
    scores.npz         scores (n, C) float32 + image_ids (n,) (+ scores_are); for runs also scores.npy + image_ids.txt
    *.png              plots (training curves, per-class AP bars, PR curves) when asked for
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from iagcn.configio import config_to_dict
from iagcn.errors import UserError
from iagcn.metrics import (ScoresAre, average_precision_per_class, map_conventions, mean_average_precision,
                           multilabel_metrics, validate_scores_targets)
from iagcn.fsutil import atomic_path, exclusive_lock, git_commit, remove_stale_temporaries, write_json_atomic, \
    write_text_atomic
from iagcn.validation import ANY, Range, check_ranges, check_types
from iagcn.jsonutil import finite_or_none
from iagcn.train import runfolder


@dataclass(frozen=True)
class EvalConfig:
    """How stage three turns scores into numbers (saved as eval_config.json next to the outputs)."""

    scores_are: Literal["logits", "probabilities"] = "logits"  # what the score columns hold (runs: logits)
    threshold: float = 0.5             # probability at/above which a label is predicted (CP ... OF1)
    top_k: int = 3                     # size of the top-k block (ML-GCN's top-3); 0 = no top-k block
    which: Literal["best", "last"] = "best"  # checkpoint of a run to evaluate (best = the selected epoch)
    pr_classes: tuple[str, ...] = ()   # classes whose precision-recall curves are drawn (empty: none)
    plots: bool = True                 # write the PNG plots next to the metrics
    batch_size: int = 256              # images per forward pass when a run scores a cache
    device: str = "auto"               # where a run scores a cache: auto | cpu | cuda[:k] (iagcn.device)
    n_resamples: int = 1000            # compare: paired bootstrap resamples over images
    seed: int = 0                      # compare: bootstrap RNG seed
    ci: float = 0.95                   # compare: interval level

    def __post_init__(self) -> None:
        check_types(self, where="eval config", hint="fix the option")
        check_ranges(self, EVAL_RANGES, where="eval config", hint="fix the option", option_names=EVAL_OPTIONS)


#: the allowed values of every EvalConfig field (checked when the config is built)
EVAL_RANGES: dict[str, Range] = {
    "scores_are": ANY, "which": ANY, "pr_classes": ANY, "plots": ANY, "device": ANY,
    "threshold": Range(0.0, 1.0, note="a probability"),
    "top_k": Range(0, 100_000, note="0 = no top-k block"),
    "batch_size": Range(1, 1_000_000),
    "n_resamples": Range(100, 10_000_000, note="as `sweep --bootstrap`: fewer cannot place a percentile interval"),
    "seed": Range(0, 2**32 - 1),
    "ci": Range(0.0, 1.0, low_open=True, high_open=True, note="e.g. 0.95"),
}
EVAL_OPTIONS = {"threshold": "--threshold", "top_k": "--top-k", "n_resamples": "--resamples/--bootstrap",
                "seed": "--seed", "ci": "--ci", "batch_size": "--batch-size"}



# ============================================================================================== evaluation
@dataclass
class Evaluation:
    """Scores, targets and every number computed from them for one model on one set of images."""

    name: str
    scores: np.ndarray              # (n, C)
    targets: np.ndarray             # (n, C) 1 / 0 / -1
    image_ids: list[str] | None
    class_names: list[str]
    metrics: dict[str, float]       # multilabel_metrics (percent)
    per_class_ap: np.ndarray        # (C,) percent, NaN without positives
    scores_are: ScoresAre
    map_conventions: dict[str, dict] = field(default_factory=dict)  # iagcn.metrics.map_conventions
    calibration: dict[str, Any] = field(default_factory=dict)        # evaluate.calibration.calibration_record

    @property
    def positives(self) -> np.ndarray:
        """(C,) images with target 1 per class."""
        return (self.targets == 1).sum(0)


NO_HOLDOUT = ("no hold-out scores given: pass --holdout-scores FILE --holdout-targets FILE (the same model's scores "
              "on images held out of its training, never the evaluated ones)")


def evaluate_scores(scores, targets, *, class_names: Sequence[str], config: EvalConfig, name: str = "model",
                    image_ids: list[str] | None = None, holdout=None) -> Evaluation:
    """All metrics of ``scores`` against ``targets`` under ``config`` (threshold, top-k, logits/probabilities), and
    CP ... OF1 at thresholds calibrated on ``holdout`` (``evaluate.calibration.Holdout`` or ``Unavailable``)."""
    from iagcn.evaluate.calibration import Unavailable, calibration_record

    s, t = validate_scores_targets(scores, targets, scores_are=config.scores_are)
    if len(class_names) != s.shape[1]:
        raise UserError(f"{len(class_names)} class names for {s.shape[1]} score columns; give one name per column")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported once below, not once per call
        ap = average_precision_per_class(s, t, class_names=class_names, warn=False)  # (C,)
        metrics = multilabel_metrics(s, t, scores_are=config.scores_are, threshold=config.threshold,
                                     top_k=config.top_k or None, class_names=class_names, warn=False)
    missing = [class_names[c] for c in np.flatnonzero(np.isnan(ap))]
    if missing:
        warnings.warn(f"{name}: AP undefined for {len(missing)} class(es) without positives ({', '.join(missing[:10])}"
                      f"{' ...' if len(missing) > 10 else ''}): NaN, left out of mAP, CP and CR", stacklevel=2)
    return Evaluation(name=name, scores=s, targets=t, image_ids=image_ids, class_names=list(class_names),
                      metrics=metrics, per_class_ap=ap, scores_are=config.scores_are,
                      map_conventions=map_conventions(s, t),
                      calibration=calibration_record(s, t, class_names=class_names, scores_are=config.scores_are,
                                                     threshold=config.threshold, image_ids=image_ids,
                                                     holdout=holdout if holdout is not None else Unavailable(NO_HOLDOUT)))


def metrics_record(ev: Evaluation, *, config: EvalConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """The content of metrics.json (NaN -> null)."""
    return {"name": ev.name, "metrics": {k: finite_or_none(v) for k, v in ev.metrics.items()},
            "per_class_ap": {c: finite_or_none(a) for c, a in zip(ev.class_names, ev.per_class_ap)},
            "mAP_check": finite_or_none(mean_average_precision(ev.per_class_ap)),
            "num_images": int(ev.scores.shape[0]), "num_classes": int(ev.scores.shape[1]),
            "scores_are": ev.scores_are, "threshold": config.threshold, "top_k": config.top_k, "inputs": inputs,
            "positives_per_class": {c: int(n) for c, n in zip(ev.class_names, ev.positives)},
            "map_conventions": {k: {"mAP": finite_or_none(conv["mAP"]), "num_images": conv["num_images"],
                                    "per_class_ap": {c: finite_or_none(a)
                                                     for c, a in zip(ev.class_names, conv["per_class_ap"])}}
                                for k, conv in ev.map_conventions.items()},
            "calibration": ev.calibration}


def per_class_csv(ev: Evaluation) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "ap", "positives", "ignored"])
    for c, (name, ap) in enumerate(zip(ev.class_names, ev.per_class_ap)):
        w.writerow([name, "" if np.isnan(ap) else f"{ap:.4f}", int((ev.targets[:, c] == 1).sum()),
                    int((ev.targets[:, c] == -1).sum())])
    return buf.getvalue()


def save_scores_npz(path: Path, scores: np.ndarray, image_ids: Sequence[str] | None, *, scores_are: str,
                    class_names: Sequence[str]) -> Path:
    """scores (n, C) float32 + image_ids + class_names + scores_are, one atomic .npz."""
    buf = io.BytesIO()
    ids = np.asarray(list(image_ids) if image_ids is not None else [str(i) for i in range(len(scores))], dtype=str)
    np.savez(buf, scores=np.asarray(scores, dtype=np.float32), image_ids=ids,
             class_names=np.asarray(list(class_names), dtype=str), scores_are=np.asarray(scores_are))
    with atomic_path(path, what="scores") as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def write_evaluation(out: str | os.PathLike, ev: Evaluation, *, config: EvalConfig, inputs: dict[str, Any],
                     save_scores: bool = True, lock: bool = True) -> dict[str, Path]:
    """eval_config.json, metrics.json, per_class_ap.csv (and scores.npz) under ``out``; returns the paths.
    ``lock=False``: the caller holds ``out``'s lock (``evaluate.outputs.replacing_evaluation``)."""
    out = Path(out)
    runfolder.refuse_run_folder(out)  # an evaluation never replaces what training wrote (metrics.json, scores.npz)
    paths = {"eval_config": out / "eval_config.json", "metrics": out / "metrics.json",
             "per_class_ap": out / "per_class_ap.csv"}
    held = exclusive_lock(out, what="evaluation folder", inside="eval") if lock else contextlib.nullcontext()
    with held:  # one evaluation's files, never two mixed
        for path in (*paths.values(), out / "scores.npz"):  # what a killed evaluation left (we hold the lock)
            remove_stale_temporaries(path)
        write_json_atomic(paths["eval_config"], {"config": config_to_dict(config), "inputs": inputs,
                                                 "git_commit": git_commit()}, what="eval config")
        write_json_atomic(paths["metrics"], metrics_record(ev, config=config, inputs=inputs), what="metrics")
        write_text_atomic(paths["per_class_ap"], per_class_csv(ev), what="per-class AP")
        if save_scores:
            paths["scores"] = save_scores_npz(out / "scores.npz", ev.scores, ev.image_ids, scores_are=ev.scores_are,
                                              class_names=ev.class_names)
    return paths


def format_tables(evaluations: Sequence[Evaluation], *, top_k: int = 3, fmt: str = "text") -> str:
    """Table 1 style (all + top-k) and Table 2 style (per-class AP) for one or several evaluations."""
    from iagcn.evaluate.report import map_conventions_table, metrics_table, per_class_table, thresholds_table

    class_names = evaluations[0].class_names
    t1 = metrics_table([(e.name, e.metrics) for e in evaluations], fmt=fmt, top_k=top_k or None,
                       num_classes=len(class_names))
    t2 = per_class_table([(e.name, e.per_class_ap) for e in evaluations], class_names, fmt=fmt,
                         title="Per-class AP (Table 2 layout)", positives=evaluations[0].positives)
    t3 = map_conventions_table([(e.name, e.map_conventions) for e in evaluations], fmt=fmt)
    t4 = thresholds_table([(e.name, e.calibration) for e in evaluations if e.calibration], fmt=fmt)
    return f"Table 1 layout (percent)\n{t1}\n{t2}\n{t3}\n{t4}"




# ============================================================================================== plots
def run_plots(out: Path, evaluations: Sequence[Evaluation], *, config: EvalConfig,
              logs: dict[str, Path] | None = None) -> list[Path]:
    """Per-class AP bars (all evaluations side by side), PR curves of ``config.pr_classes`` per evaluation, and the
    training curves of every run whose log.csv exists. With several evaluations, also ``pr_curves.png`` and
    ``training_curves.png`` at the top of ``out`` with every run overlaid. Returns the PNG paths written."""
    from iagcn.evaluate.plots import (plot_per_class_ap, plot_pr_curves, plot_pr_curves_overlay,
                                      plot_training_curves, plot_training_curves_overlay)

    written = [plot_per_class_ap({e.name: e.per_class_ap for e in evaluations}, evaluations[0].class_names,
                                 out / "per_class_ap.png")]
    multi = len(evaluations) > 1
    if multi and config.pr_classes:
        written.append(plot_pr_curves_overlay({e.name: (e.scores, e.targets) for e in evaluations},
                                              evaluations[0].class_names, list(config.pr_classes),
                                              out / "pr_curves.png", title="Precision-recall, runs overlaid"))
    existing = {name: log for name, log in (logs or {}).items() if log.exists()}
    if multi and len(existing) > 1:
        written.append(plot_training_curves_overlay(existing, out / "training_curves.png",
                                                    title="Training curves, runs overlaid"))
    for e in evaluations:
        sub = out / e.name if multi else out
        if config.pr_classes:
            written.append(plot_pr_curves(e.scores, e.targets, e.class_names, list(config.pr_classes),
                                          sub / "pr_curves.png", title=f"Precision-recall: {e.name}"))
    for name, log in existing.items():
        sub = out / name if multi else out
        written.append(plot_training_curves(log, sub / "training_curves.png", title=f"training: {name}"))
    return written


def default_pr_classes(ev: Evaluation, k: int = 3) -> tuple[str, ...]:
    """The ``k`` classes with the most positives (used when --pr-classes is not given)."""
    pos = (ev.targets == 1).sum(0)  # (C,)
    return tuple(ev.class_names[c] for c in np.argsort(-pos, kind="stable")[:k] if pos[c] > 0)
