"""`iagcn eval`: score files or trained runs -> metrics.json, per_class_ap.csv, scores, the paper's tables, plots.

Two sources of scores, one evaluation path (:func:`evaluate_scores`):

* ``--scores FILE --targets FILE``: predictions of any model (npy / npz / csv; the targets may also be a cache .h5),
  logits or probabilities as ``--scores-are`` says;
* ``--run DIR`` (or ``--checkpoint FILE``) ``--cache FILE``: the trained head of a run scores every image of the
  cache (stage two's :func:`train.run.predict_cache`), never retraining.

Outputs of one evaluation (``--out DIR``), each written atomically:

    eval_config.json   the EvalConfig, the inputs (paths, run, cache) and the git commit
    metrics.json       {"metrics": {mAP, CP ... OF1, *_top3}, "per_class_ap": {class: AP}, "num_images", ...}
    per_class_ap.csv   class,ap (percent, empty for classes without positives)
    scores.npz         scores (n, C) float32 + image_ids (n,) (+ scores_are); for runs also scores.npy + image_ids.txt
    *.png              plots (training curves, per-class AP bars, PR curves) when asked for
"""
from __future__ import annotations

import csv
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from iagcn.evaluate.metrics import (ScoresAre, average_precision_per_class, mean_average_precision, multilabel_metrics,
                              validate_scores_targets)
from iagcn.configio import config_to_dict
from iagcn.errors import UserError
from iagcn.fsutil import atomic_path, exclusive_lock, git_commit, write_json_atomic, write_text_atomic


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
    device: str = "cpu"                # device for scoring a cache (cpu | cuda)
    n_resamples: int = 1000            # compare: paired bootstrap resamples over images
    seed: int = 0                      # compare: bootstrap RNG seed
    ci: float = 0.95                   # compare: interval level


# ============================================================================================== reading inputs
@dataclass
class ScoreTable:
    """A (n, C) matrix read from a file, with the image ids / class names the file carried (or None)."""

    values: np.ndarray
    image_ids: list[str] | None
    class_names: list[str] | None
    path: Path


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv_matrix(path: Path, *, option: str) -> ScoreTable:
    """A CSV of numbers; an optional header row of class names and an optional first column of image ids.

    The header is recognised when its cells (after the id column) are not all numbers; the id column when the
    first cells of the data rows are not all numbers or the header names it ``image_id`` / ``id``.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {path}: cannot read ({e}); pass a .npy, .npz or .csv file") from e
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{option} {path}: empty file; write one row per image")
    header = None
    first = rows[0][0].strip()
    if not all(_is_number(c) for c in rows[0][1:]) or not first or first.lower() in ("image_id", "id", "image") or \
            (not _is_number(first) and len(rows) > 1 and _is_number(rows[1][0])):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise UserError(f"{option} {path}: a header but no data rows")
    has_ids = (header is not None and header[0].lower() in ("image_id", "id", "image", "")) or \
        not all(_is_number(r[0]) for r in rows)
    ids = [r[0].strip() for r in rows] if has_ids else None
    body = [r[1:] if has_ids else r for r in rows]
    widths = {len(r) for r in body}
    if len(widths) != 1:
        raise UserError(f"{option} {path}: rows have different numbers of columns {sorted(widths)}; "
                        "write one value per class on every row")
    try:
        values = np.array([[float(c) for c in r] for r in body], dtype=np.float64)
    except ValueError as e:
        raise UserError(f"{option} {path}: non-numeric value ({e}); only the header and id column may be text") from e
    names = None
    if header is not None:
        names = header[1:] if has_ids else header
        if len(names) != values.shape[1]:
            raise UserError(f"{option} {path}: header names {len(names)} columns but rows hold {values.shape[1]}")
    return ScoreTable(values, ids, names, path)


def read_matrix(path: str | os.PathLike, *, option: str, key: str = "scores") -> ScoreTable:
    """Read scores or targets from .npy, .npz (``key``, optional ``image_ids``/``class_names``), .csv or a cache .h5."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{option} {path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from iagcn.cache.format import FeatureCache

        with FeatureCache(path) as c:
            return ScoreTable(c.read("labels").astype(np.int8), c.image_ids(), c.class_names, path)
    if suffix == ".csv":
        return read_csv_matrix(path, option=option)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{option} {path}: not a readable .npy/.npz file ({type(e).__name__}); "
                        "pass .npy, .npz or .csv") from e
    if isinstance(loaded, np.ndarray):
        return ScoreTable(loaded, None, None, path)
    with loaded:
        keys = list(loaded.keys())
        name = key if key in keys else ("labels" if "labels" in keys else (keys[0] if len(keys) == 1 else None))
        if name is None:
            raise UserError(f"{option} {path}: .npz has arrays {keys} but no {key!r}; save it as {key}=...")
        ids = [str(i) for i in loaded["image_ids"]] if "image_ids" in keys else None
        names = [str(c) for c in loaded["class_names"]] if "class_names" in keys else None
        return ScoreTable(np.asarray(loaded[name]), ids, names, path)


def parse_class_names(text: str | None) -> list[str] | None:
    """``--class-names``: a file of names (one a line) or a comma-separated list."""
    if not text:
        return None
    p = Path(text)
    names = p.read_text().splitlines() if p.is_file() else text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"--class-names {text}: no names found; give a comma-separated list or a file of names")
    return names


def align_by_ids(scores: ScoreTable, targets: ScoreTable) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Rows of scores and targets for the same images: matched by image id when both carry ids, else by order."""
    s, t = scores.values, targets.values
    if scores.image_ids is not None and targets.image_ids is not None:
        index = {i: r for r, i in enumerate(targets.image_ids)}
        missing = [i for i in scores.image_ids if i not in index]
        if missing:
            raise UserError(f"--scores {scores.path}: {len(missing)} image id(s) not in the targets "
                            f"(first: {missing[0]!r}); score the same images as --targets/--cache")
        rows = np.array([index[i] for i in scores.image_ids], dtype=np.int64)
        if len(rows) != len(targets.image_ids):
            warnings.warn(f"evaluating {len(rows)} of the {len(targets.image_ids)} target images (those scored)",
                          stacklevel=2)
        return s, t[rows], list(scores.image_ids)
    if s.shape[0] != t.shape[0]:
        raise UserError(f"--scores {scores.path} has {s.shape[0]} rows but --targets {targets.path} has "
                        f"{t.shape[0]}; pass one row per image, in the same order")
    return s, t, scores.image_ids or targets.image_ids


def resolve_class_names(given: list[str] | None, *candidates: list[str] | None, n_classes: int) -> list[str]:
    """The class names: explicit ``--class-names``, else the first file that carried them, else ``class00`` ..."""
    for names in (given, *candidates):
        if names is not None:
            if len(names) != n_classes:
                raise UserError(f"--class-names: {len(names)} names for {n_classes} score columns; "
                                "give one name per column, in column order")
            return list(names)
    return [f"class{c:02d}" for c in range(n_classes)]


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


def evaluate_scores(scores, targets, *, class_names: Sequence[str], config: EvalConfig, name: str = "model",
                    image_ids: list[str] | None = None) -> Evaluation:
    """All metrics of ``scores`` against ``targets`` under ``config`` (threshold, top-k, logits/probabilities)."""
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
                      metrics=metrics, per_class_ap=ap, scores_are=config.scores_are)


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


def metrics_record(ev: Evaluation, *, config: EvalConfig, inputs: dict[str, Any]) -> dict[str, Any]:
    """The content of metrics.json (NaN -> null)."""
    return {"name": ev.name, "metrics": {k: _finite_or_none(v) for k, v in ev.metrics.items()},
            "per_class_ap": {c: _finite_or_none(a) for c, a in zip(ev.class_names, ev.per_class_ap)},
            "mAP_check": _finite_or_none(mean_average_precision(ev.per_class_ap)),
            "num_images": int(ev.scores.shape[0]), "num_classes": int(ev.scores.shape[1]),
            "scores_are": ev.scores_are, "threshold": config.threshold, "top_k": config.top_k, "inputs": inputs}


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
                     save_scores: bool = True) -> dict[str, Path]:
    """eval_config.json, metrics.json, per_class_ap.csv (and scores.npz) under ``out``; returns the paths."""
    out = Path(out)
    paths = {"eval_config": out / "eval_config.json", "metrics": out / "metrics.json",
             "per_class_ap": out / "per_class_ap.csv"}
    with exclusive_lock(out / "eval", what="evaluation folder"):  # one evaluation's files, never two mixed
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
    from iagcn.evaluate.report import metrics_table, per_class_table

    class_names = evaluations[0].class_names
    t1 = metrics_table([(e.name, e.metrics) for e in evaluations], fmt=fmt, top_k=top_k or None)
    t2 = per_class_table([(e.name, e.per_class_ap) for e in evaluations], class_names, fmt=fmt,
                         title="Per-class AP (Table 2 layout)")
    return f"Table 1 layout (percent)\n{t1}\n{t2}"


# ============================================================================================== runs
@dataclass
class RunScores:
    """A trained run's logits on a cache, with what identifies it."""

    name: str
    run_dir: Path
    scores: np.ndarray            # (n, C) logits, rows in the cache's image order
    image_ids: list[str]
    class_names: list[str]
    seed: int | None
    preset: str | None
    source: str                   # "saved scores <file>" or "checkpoint <file>"


def read_run_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    if not path.exists():
        raise UserError(f"--run {run_dir}: no config.json; pass a folder written by `iagcn train --out`")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable run config ({e}); rerun the training or fix the file") from e


def load_model(*, run_dir: Path | None = None, checkpoint: Path | None = None, which: str = "best"):
    """(model in eval mode, class names, A_S (C, C), checkpoint path) from a run folder or one checkpoint file."""
    from iagcn.train.run import load_run

    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise UserError(f"--checkpoint {checkpoint}: file not found")
        if checkpoint.stem in ("best", "last"):
            run = load_run(checkpoint.parent, which=checkpoint.stem)
        else:
            from iagcn.configio import config_from_dict
            from iagcn.train.config import TrainConfig
            from iagcn.train.run import build_model, load_checkpoint, load_state_checked

            ckpt = load_checkpoint(checkpoint)
            if not isinstance(ckpt, dict) or not {"model", "config", "meta"} <= set(ckpt):
                raise UserError(f"--checkpoint {checkpoint}: not an iagcn checkpoint (needs model, config, meta)")
            config = config_from_dict(TrainConfig, ckpt["config"], source=str(checkpoint))
            model = build_model(config, ckpt["meta"])
            load_state_checked(model, ckpt["model"], path=checkpoint, config=config)
            model.eval()
            return model, list(ckpt["meta"]["class_names"]), model.A_S.cpu().numpy().copy(), checkpoint
        return run.model, run.class_names, run.A_S, checkpoint
    run = load_run(run_dir, which=which)
    return run.model, run.class_names, run.A_S, Path(run_dir) / f"{which}.pt"


def _check_classes(name: str, run_classes: Sequence[str], cache_classes: Sequence[str], cache_path) -> None:
    if list(run_classes) != list(cache_classes):
        raise UserError(f"run {name} was trained on {len(run_classes)} classes that differ from cache {cache_path} "
                        f"({len(cache_classes)} classes); evaluate on a cache of the same dataset")


def score_run_on_cache(*, run_dir: Path | None, checkpoint: Path | None, cache_path: Path, config: EvalConfig,
                       progress: bool = False) -> RunScores:
    """Score every image of the cache with the run's (selected) checkpoint: logits (n, C) and image ids."""
    from iagcn.cache.format import FeatureCache
    from iagcn.train.run import predict_cache

    model, class_names, _, ckpt_path = load_model(run_dir=run_dir, checkpoint=checkpoint, which=config.which)
    with FeatureCache(cache_path) as c:
        _check_classes(str(run_dir or checkpoint), class_names, c.class_names, cache_path)
    out = predict_cache(model, cache_path, batch_size=config.batch_size, device=config.device, progress=progress)
    base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
    record = read_run_record(base) if (base / "config.json").exists() else {}
    cfg = record.get("config", {})
    return RunScores(name=base.name, run_dir=base, scores=np.asarray(out["scores"], dtype=np.float64),
                     image_ids=[str(i) for i in out["image_ids"]], class_names=list(class_names),
                     seed=cfg.get("seed"), preset=cfg.get("preset"), source=f"checkpoint {ckpt_path}")


def saved_run_scores(run_dir: Path) -> tuple[np.ndarray, list[str]] | None:
    """The logits a run saved for its evaluation cache (scores.npz, else scores.npy + image_ids.txt), or None."""
    npz, npy, ids = run_dir / "scores.npz", run_dir / "scores.npy", run_dir / "image_ids.txt"
    if npz.exists():
        with np.load(npz, allow_pickle=False) as z:
            if "scores" in z and "image_ids" in z:
                return np.asarray(z["scores"], dtype=np.float64), [str(i) for i in z["image_ids"]]
    if npy.exists() and ids.exists():
        return np.load(npy, allow_pickle=False).astype(np.float64), [line for line in ids.read_text().splitlines() if line]
    return None


def run_scores_for_cache(run_dir: Path, cache_path: Path, *, config: EvalConfig, progress: bool = False) -> RunScores:
    """A run's logits on ``cache_path``: the scores it saved when they are for exactly these images (and the
    selected checkpoint), else computed from its checkpoint (never retraining)."""
    from iagcn.cache.format import FeatureCache

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    cfg = record.get("config", {})
    saved = saved_run_scores(run_dir) if config.which == "best" else None
    with FeatureCache(cache_path) as c:
        cache_ids, cache_classes = c.image_ids(), c.class_names
        cache_hash = c.attrs.get("extract_config_hash")
    recorded = record.get("eval_cache") or {}
    same_cache = recorded.get("extract_config_hash") == cache_hash and \
        Path(str(recorded.get("path", ""))).resolve() == Path(cache_path).resolve()
    if saved is not None and same_cache and sorted(saved[1]) == sorted(cache_ids):
        class_names = list(record.get("class_names") or cache_classes)
        _check_classes(run_dir.name, class_names, cache_classes, cache_path)
        return RunScores(name=run_dir.name, run_dir=run_dir, scores=saved[0], image_ids=saved[1],
                         class_names=class_names, seed=cfg.get("seed"), preset=cfg.get("preset"),
                         source=f"saved scores in {run_dir}")
    return score_run_on_cache(run_dir=run_dir, checkpoint=None, cache_path=Path(cache_path), config=config,
                              progress=progress)


def cache_targets(cache_path: Path) -> ScoreTable:
    return read_matrix(cache_path, option="--cache")


def rows_for_ids(table: ScoreTable, image_ids: Sequence[str], *, what: str) -> np.ndarray:
    """Rows of ``table`` (which carries image ids) for ``image_ids``, in that order."""
    index = {i: r for r, i in enumerate(table.image_ids or [])}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise UserError(f"{what}: {len(missing)} image id(s) not in {table.path} (first {missing[0]!r}); "
                        "use the cache the run was scored on")
    return table.values[np.array([index[i] for i in image_ids], dtype=np.int64)]


# ============================================================================================== plots
def run_plots(out: Path, evaluations: Sequence[Evaluation], *, config: EvalConfig,
              logs: dict[str, Path] | None = None) -> list[Path]:
    """Per-class AP bars (all evaluations side by side), PR curves of ``config.pr_classes`` per evaluation, and the
    training curves of every run whose log.csv exists. Returns the PNG paths written."""
    from iagcn.evaluate.plots import plot_per_class_ap, plot_pr_curves, plot_training_curves

    written = [plot_per_class_ap({e.name: e.per_class_ap for e in evaluations}, evaluations[0].class_names,
                                 out / "per_class_ap.png")]
    multi = len(evaluations) > 1
    for e in evaluations:
        sub = out / e.name if multi else out
        if config.pr_classes:
            written.append(plot_pr_curves(e.scores, e.targets, e.class_names, list(config.pr_classes),
                                          sub / "pr_curves.png", title=f"Precision-recall: {e.name}"))
    for name, log in (logs or {}).items():
        if log.exists():
            sub = out / name if multi else out
            written.append(plot_training_curves(log, sub / "training_curves.png", title=f"training: {name}"))
    return written


def default_pr_classes(ev: Evaluation, k: int = 3) -> tuple[str, ...]:
    """The ``k`` classes with the most positives (used when --pr-classes is not given)."""
    pos = (ev.targets == 1).sum(0)  # (C,)
    return tuple(ev.class_names[c] for c in np.argsort(-pos, kind="stable")[:k] if pos[c] > 0)
