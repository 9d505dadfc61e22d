"""Figures as PNG files: training curves, per-class AP bars, precision-recall curves (one run or several
overlaid). The paper's Fig. 1 and Fig. 3 are in :mod:`iagcn.evaluate.figures`.

Pure functions: inputs are NumPy arrays (or a log CSV / DataFrame), output is one PNG written atomically
(:func:`iagcn.fsutil.atomic_path`); each returns the output path. matplotlib is imported inside the functions
and used through its object-oriented API with the Agg canvas (no pyplot, no global backend switch).
Fig. 1 and Fig. 3 also write the numbers they draw to ``<out>.npz`` (``save_data=True``), so a figure can
be checked against the model that produced it.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import atomic_path

PathLike = str | os.PathLike


def new_figure(*, figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, out: PathLike) -> Path:
    out = Path(out)
    with atomic_path(out, what="plot") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return out


def save_npz(out: PathLike, **arrays) -> Path:
    path = Path(str(out) + ".npz")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path, what="plot data") as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def short_class_names(class_names: Sequence[str]) -> list[str]:
    from iagcn.evaluate.report import short_class_names

    return short_class_names(class_names)


def plain_text(text: object) -> str:
    """``text`` as matplotlib should draw it: literally. Names (classes, runs, image ids, log columns) are data,
    never markup: an unescaped ``$`` starts mathtext, and a class ``cost_$10_to_$20`` made every plot raise
    (no report, no table). Each ``$`` is escaped (``\\$`` is drawn as ``$``); every string a plot draws from
    its inputs goes through here. Our own labels that are math (``$A_F$``) are drawn unescaped."""
    return str(text).replace("$", "\\$")


# ----------------------------------------------------------------------------------------------- colours
def shaded_colors(members: Mapping[str, str]) -> dict[str, tuple[float, float, float]]:
    """One hue per group, its members as shades of it: ``{member: group}`` (e.g. run -> preset) ->
    ``{member: RGB}``. Groups take matplotlib's tab10 colours in first-appearance order; a group's members run
    from darker to lighter in the order given, so a figure's seeds of one preset read as one family and the same
    mapping gives the same colours in every figure."""
    from matplotlib import colormaps

    palette = colormaps["tab10"].colors
    groups = list(dict.fromkeys(members.values()))
    out: dict[str, tuple[float, float, float]] = {}
    for g, group in enumerate(groups):
        base = np.asarray(palette[g % len(palette)], dtype=float)
        names = [m for m, grp in members.items() if grp == group]
        for j, name in enumerate(names):
            t = 0.0 if len(names) == 1 else -0.35 + 0.75 * j / (len(names) - 1)    # darker (< 0) .. lighter
            mixed = base * (1 + t) if t < 0 else base + (1 - base) * t
            out[name] = tuple(float(c) for c in np.clip(mixed, 0.0, 1.0))
    return out


def _epoch_ticks(ax) -> None:
    """Whole epochs on the x axis (never 2.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ----------------------------------------------------------------------------------------------- training curves
#: panel title -> how a log column is recognised (first match wins, in this order)
_PANELS = (
    ("learning rate", lambda c: c in ("lr", "learning_rate") or c.startswith("lr_")),
    ("loss", lambda c: "loss" in c),
    ("hold-out mAP (%)", lambda c: "map" in c),
    ("seconds per epoch", lambda c: "seconds" in c or "time" in c),
    ("throughput (images/s)", lambda c: "per_s" in c or "throughput" in c),
)


def _read_log(log):
    import pandas as pd

    if isinstance(log, pd.DataFrame):
        return log, "log"
    source = str(log)
    try:
        return pd.read_csv(log), source
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise UserError(f"{source}: cannot read the training log ({e}); pass the run's log.csv") from e


def training_curve_panels(df) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """(x column, [(panel title, columns)]): which log.csv columns are drawn on which axes.

    Quantities with different units never share an axis: losses, the hold-out (selection) mAP, the learning
    rate, seconds per epoch and throughput each get their own panel; anything else numeric goes to "other".
    A column that is zero (or empty) in every row is left out (e.g. ``loss_kl`` of a preset without Var_Inf).
    """
    numeric = df.select_dtypes("number")
    x_name = next((c for c in ("epoch", "step") if c in numeric.columns), None)
    panels: dict[str, list[str]] = {}
    for c in numeric.columns:
        if c == x_name:
            continue
        y = numeric[c].to_numpy(dtype=float)
        if not np.isfinite(y).any() or np.all(y[np.isfinite(y)] == 0):
            continue
        title = next((t for t, match in _PANELS if match(c.lower())), "other")
        panels.setdefault(title, []).append(c)
    order = [t for t, _ in _PANELS if t != "learning rate"] + ["learning rate", "other"]
    return x_name, [(t, panels[t]) for t in order if t in panels]


def _grid(fig, n: int, ncols: int = 3):
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    return [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


def plot_training_curves(log, out: PathLike, *, title: str | None = None) -> Path:
    """Curves from a run's ``log.csv`` (path or DataFrame), one panel per quantity (:func:`training_curve_panels`).

    The x axis is the ``epoch`` column (else ``step``, else the row number); the learning rate is on a log scale.
    """
    df, source = _read_log(log)
    x_name, panels = training_curve_panels(df)
    if not panels or len(df) == 0:
        raise UserError(f"{source}: no numeric rows to plot; train for at least one epoch first")
    numeric = df.select_dtypes("number")
    x = numeric[x_name].to_numpy() if x_name else np.arange(len(numeric))
    ncols = min(3, len(panels))
    fig = new_figure(figsize=(4.6 * ncols, 3.4 * -(-len(panels) // ncols)))
    for ax, (ylabel, cs) in zip(_grid(fig, len(panels)), panels):
        for c in cs:
            y = numeric[c].to_numpy(dtype=float)
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], marker="o" if ok.sum() < 30 else None, markersize=3, label=plain_text(c))
        ax.set_xlabel(plain_text(x_name or "row"))
        _epoch_ticks(ax)
        ax.set_title(ylabel, fontsize=10)
        if ylabel == "learning rate":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(cs) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(plain_text(title))
    fig.tight_layout()
    return save_png(fig, out)


def plot_training_curves_overlay(logs: Mapping[str, object], out: PathLike, *,
                                 title: str = "Training curves", colors: Mapping[str, object] | None = None) -> Path:
    """Several runs' log.csv overlaid, one line per run: total loss, hold-out mAP, seconds per epoch.
    ``colors``: run name -> colour (:func:`shaded_colors`); default matplotlib's cycle."""
    if not logs:
        raise UserError("plot_training_curves_overlay: no logs given")
    frames = {name: _read_log(log)[0] for name, log in logs.items()}
    wanted = (("loss", "loss"), ("select_mAP", "hold-out mAP (%)"), ("seconds", "seconds per epoch"))
    shown = [(c, t) for c, t in wanted if any(c in df.columns and df[c].notna().any() for df in frames.values())]
    if not shown:
        raise UserError("plot_training_curves_overlay: the logs have none of loss, select_mAP, seconds")
    fig = new_figure(figsize=(4.8 * len(shown), 3.8))
    for ax, (col, label) in zip(_grid(fig, len(shown), ncols=len(shown)), shown):
        for name, df in frames.items():
            if col not in df.columns:
                continue
            x = df["epoch"].to_numpy() if "epoch" in df.columns else np.arange(len(df))
            y = df[col].to_numpy(dtype=float)
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], label=plain_text(name), linewidth=1.2, marker="o" if ok.sum() < 30 else None, markersize=3,
                    **_color(colors, name))
        ax.set_xlabel("epoch")
        _epoch_ticks(ax)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(4, len(labels)), frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.04 * (len(labels) // 4)))
    fig.suptitle(plain_text(title))
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 4), 1, 1))
    return save_png(fig, out)


# ----------------------------------------------------------------------------------------------- per-class AP
def _color(colors: Mapping[str, object] | None, name: str) -> dict[str, object]:
    return {"color": colors[name]} if colors and name in colors else {}


def plot_per_class_ap(runs: Mapping[str, Sequence[float]], class_names: Sequence[str], out: PathLike, *,
                      title: str = "Per-class AP", colors: Mapping[str, object] | None = None) -> Path:
    """Grouped bars: one group per class, one bar per run (AP in percent); mAP in the legend. ``colors``: run
    name -> colour."""
    from iagcn.metrics import mean_average_precision

    if not runs:
        raise UserError("plot_per_class_ap: no runs given; pass at least one {name: per-class AP}")
    n_classes = len(class_names)
    aps = {}
    for name, ap in runs.items():
        ap = np.asarray(ap, dtype=np.float64)
        if ap.shape != (n_classes,):
            raise UserError(f"plot_per_class_ap: run {name} has {ap.size} APs for {n_classes} classes")
        aps[name] = ap
    width = 0.8 / len(aps)
    fig = new_figure(figsize=(max(6.0, 0.45 * n_classes * max(1, len(aps)) ** 0.5 + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    centers = np.arange(n_classes)
    for i, (name, ap) in enumerate(aps.items()):
        ax.bar(centers - 0.4 + width * (i + 0.5), np.nan_to_num(ap, nan=0.0), width=width,
               label=f"{plain_text(name)} (mAP {mean_average_precision(ap):.1f})", **_color(colors, name))
    ax.set_xticks(centers)
    ax.set_xticklabels([plain_text(n) for n in short_class_names(class_names)], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(4, len(aps)), frameon=False)
    fig.suptitle(plain_text(title))
    return save_png(fig, out)


# ----------------------------------------------------------------------------------------------- PR curves
def _class_indices(classes: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    index = {n: i for i, n in enumerate(class_names)}
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and 0 <= int(c) < len(class_names):
            out.append(int(c))
        elif isinstance(c, str) and c in index:
            out.append(index[c])
        else:
            raise UserError(f"--classes: unknown class {c!r}; choose from {', '.join(class_names[:10])}"
                            + (" ..." if len(class_names) > 10 else ""))
    return out


def plot_pr_curves(scores, targets, class_names: Sequence[str], classes: Sequence[str | int], out: PathLike, *,
                   title: str = "Precision-recall") -> Path:
    """Precision-recall curves (scikit-learn's, ignored entries removed) of the chosen classes, AP in the legend."""
    from iagcn.metrics import validate_scores_targets

    s, t = validate_scores_targets(scores, targets)
    if s.shape[1] != len(class_names):
        raise UserError(f"plot_pr_curves: {s.shape[1]} score columns for {len(class_names)} class names")
    fig = new_figure(figsize=(5.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for c in _class_indices(classes, class_names):
        _draw_pr_curve(ax, s, t, c, label=class_names[c])
    _pr_axes(ax, legend_size=8)
    ax.set_title(plain_text(title))
    return save_png(fig, out)


def plot_pr_curves_overlay(runs: Mapping[str, tuple[object, object]], class_names: Sequence[str],
                           classes: Sequence[str | int], out: PathLike, *, title: str = "Precision-recall",
                           colors: Mapping[str, object] | None = None) -> Path:
    """Several runs' precision-recall curves overlaid: one panel per chosen class, one line per run (AP in the
    legend). ``runs`` maps a name to (scores (n, C), targets (n, C)); ignored entries (-1) are left out.
    ``colors``: run name -> colour."""

    from iagcn.metrics import validate_scores_targets

    if not runs:
        raise UserError("plot_pr_curves_overlay: no runs given")
    checked = {}
    for name, (scores, targets) in runs.items():
        s, t = validate_scores_targets(scores, targets)
        if s.shape[1] != len(class_names):
            raise UserError(f"plot_pr_curves_overlay: run {name} has {s.shape[1]} score columns for "
                            f"{len(class_names)} class names")
        checked[name] = (s, t)
    idx = _class_indices(classes, class_names)
    if not idx:
        raise UserError("plot_pr_curves_overlay: no classes chosen")
    ncols = min(3, len(idx))
    fig = new_figure(figsize=(4.4 * ncols, 4.0 * -(-len(idx) // ncols)))
    for ax, c in zip(_grid(fig, len(idx)), idx):
        for name, (s, t) in checked.items():
            _draw_pr_curve(ax, s, t, c, label=name, linewidth=1.2, **_color(colors, name))
        ax.set_title(plain_text(class_names[c]), fontsize=10)
        _pr_axes(ax, legend_size=7)
    fig.suptitle(plain_text(title))
    fig.tight_layout()
    return save_png(fig, out)


# ----------------------------------------------------------------------------------------------- Fig. 1
def _draw_pr_curve(ax, s: np.ndarray, t: np.ndarray, c: int, *, label: str, **style) -> None:
    """Class ``c``'s precision-recall curve (ignored entries -1 left out), AP in the legend label."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    keep = t[:, c] != -1
    y = t[keep, c] == 1
    if not y.any():
        ax.plot([], [], label=f"{plain_text(label)} (no positives)")
        return
    precision, recall, _ = precision_recall_curve(y, s[keep, c])
    ap = 100 * average_precision_score(y, s[keep, c])
    ax.step(recall, precision, where="post", label=f"{plain_text(label)} (AP {ap:.1f})", **style)


def _pr_axes(ax, *, legend_size: int) -> None:
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, loc="lower left")
