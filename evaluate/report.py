"""Tables in the paper's layouts, as Markdown or plain text.

* :func:`metrics_table` — Tables 1, 3-6: ``Methods | mAP CP CR CF1 OP OR OF1`` (one decimal, percent), and the
  top-3 block ``Methods | CP CR CF1 OP OR OF1`` (ML-GCN's layout; the paper prints only the first block).
* :func:`per_class_table` — Table 2: per-class AP with (short VOC) class names as columns, then mAP.
* :func:`ablation_table` — per-run metric dicts grouped by preset: mean ± std over seeds, with an optional
  ``ΔmAP vs <baseline> [95% CI]`` column (``*`` marks intervals that exclude zero) and the seed-test p-value.

All inputs are percentages as returned by :mod:`iagcn.metrics`; NaN prints as ``-`` (as the paper prints
missing entries). Pure string formatting, no I/O.
"""
from __future__ import annotations

import math
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from iagcn.classes import VOC_CLASSES
from iagcn.metrics import MAIN_METRICS, THRESHOLD_METRICS, mean_average_precision

Fmt = Literal["markdown", "text"]

VOC_SHORT_NAMES: dict[str, str] = {
    "aeroplane": "aero", "bicycle": "bike", "diningtable": "table", "motorbike": "motor", "pottedplant": "plant",
    "tvmonitor": "tv"}
MISSING = "-"


def short_class_names(class_names: Sequence[str]) -> list[str]:
    """The paper's Table 2 headers (aero bike ... tv) when these are VOC class names, else the names unchanged."""
    names = list(class_names)
    if names and set(names) <= set(VOC_CLASSES):
        return [VOC_SHORT_NAMES.get(n, n) for n in names]
    return names


def fmt_pct(x: float | None, *, signed: bool = False) -> str:
    """One decimal (``86.3``), ``+0.4`` when signed, ``-`` for None/NaN."""
    if x is None or not math.isfinite(float(x)):
        return MISSING
    return f"{float(x):+.1f}" if signed else f"{float(x):.1f}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, fmt: Fmt = "markdown",
                 title: str | None = None) -> str:
    """A table with a left-aligned first column and right-aligned others, as Markdown or aligned plain text."""
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt: {fmt!r} is not 'markdown' or 'text'")
    cells = [list(map(str, header))] + [list(map(str, r)) for r in rows]
    n_cols = len(header)
    if any(len(r) != n_cols for r in cells):
        raise ValueError("render_table: every row needs as many cells as the header")
    widths = [max(len(r[j]) for r in cells) for j in range(n_cols)]

    def line(r: Sequence[str]) -> list[str]:
        return [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]

    out: list[str] = []
    if fmt == "markdown":
        if title:
            out += [f"**{title}**", ""]
        out.append("| " + " | ".join(line(cells[0])) + " |")
        out.append("|" + "|".join([":" + "-" * (widths[0] + 1)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
        out += ["| " + " | ".join(line(r)) + " |" for r in cells[1:]]
    else:
        if title:
            out.append(title)
        out.append("  ".join(line(cells[0])).rstrip())
        out.append("  ".join("-" * w for w in widths))
        out += ["  ".join(line(r)).rstrip() for r in cells[1:]]
    return "\n".join(out) + "\n"


def _rows_of(results: Mapping[str, Mapping[str, float]] | Iterable[tuple[str, Mapping[str, float]]]):
    return list(results.items()) if isinstance(results, Mapping) else list(results)


# ----------------------------------------------------------------------------------------------- Tables 1, 3-6
def metrics_table(results: Mapping[str, Mapping[str, float]] | Iterable[tuple[str, Mapping[str, float]]], *,
                  fmt: Fmt = "markdown", top_k: int | None = 3, title: str | None = None,
                  num_classes: int | None = None) -> str:
    """``Methods | mAP CP CR CF1 OP OR OF1`` rows (one per method, in order), then the top-k block if present.

    ``results`` maps a method name to a :func:`iagcn.metrics.multilabel_metrics` dict (percent). With
    ``num_classes`` <= ``top_k`` the block is left out: every class is in every image's top k, so it would repeat
    the first block's CP ... OF1.
    """
    rows = _rows_of(results)
    main = render_table(["Methods", *MAIN_METRICS], [[name, *(fmt_pct(m.get(k)) for k in MAIN_METRICS)]
                                                      for name, m in rows], fmt=fmt, title=title or "All")
    if not top_k or (num_classes is not None and num_classes <= top_k) \
            or not any(f"CP_top{top_k}" in m for _, m in rows):
        return main
    top = render_table(["Methods", *THRESHOLD_METRICS],
                       [[name, *(fmt_pct(m.get(f"{k}_top{top_k}")) for k in THRESHOLD_METRICS)] for name, m in rows],
                       fmt=fmt, title=f"Top-{top_k}")
    return main + "\n" + top


# ----------------------------------------------------------------------------------------------- Table 2
def per_class_table(results: Mapping[str, Sequence[float]] | Iterable[tuple[str, Sequence[float]]],
                    class_names: Sequence[str], *, fmt: Fmt = "markdown", title: str | None = None) -> str:
    """``Methods | <class> ... | mAP``: per-class AP (percent) per method; mAP = mean of the non-NaN APs."""
    rows = []
    for name, ap in _rows_of(results):
        ap = np.asarray(ap, dtype=np.float64)
        if ap.shape != (len(class_names),):
            raise ValueError(f"per_class_table: {name} has {ap.size} APs for {len(class_names)} classes")
        rows.append([name, *(fmt_pct(v) for v in ap), fmt_pct(mean_average_precision(ap))])
    return render_table(["Methods", *short_class_names(class_names), "mAP"], rows, fmt=fmt, title=title)


# ----------------------------------------------------------------------------------------------- ablations
def _metrics_of(run: Mapping) -> Mapping[str, float]:
    return run["metrics"] if "metrics" in run else run


def group_by_preset(runs: Iterable[Mapping], *, metrics: Sequence[str] = MAIN_METRICS) -> dict[str, dict]:
    """``{preset: {"n": seeds, "seeds": [...], metric: {"mean", "std", "values"}}}`` in first-appearance order.

    Each run is ``{"preset": str, "seed": int (optional), "metrics": {name: value}}`` (or the metric keys at top
    level). std is the sample standard deviation (ddof=1); NaN with a single seed.
    """
    grouped: dict[str, list[Mapping]] = {}
    for run in runs:
        if "preset" not in run:
            raise ValueError("ablation: every run needs a 'preset' key")
        grouped.setdefault(str(run["preset"]), []).append(run)
    out: dict[str, dict] = {}
    for preset, rs in grouped.items():
        entry: dict = {"n": len(rs), "seeds": [r.get("seed") for r in rs],
                       "cells": [str(c) for c in rs[0].get("cells", [preset])]}
        for k in metrics:
            values = np.array([float(_metrics_of(r).get(k, math.nan)) for r in rs])
            finite = values[np.isfinite(values)]
            entry[k] = {"values": values.tolist(),
                        "mean": float(finite.mean()) if finite.size else math.nan,
                        "std": float(finite.std(ddof=1)) if finite.size >= 2 else math.nan}
        out[preset] = entry
    return out


def fmt_mean_std(mean: float, std: float) -> str:
    """``86.3 ± 0.4`` (just the mean for a single seed)."""
    if not math.isfinite(mean):
        return MISSING
    return f"{mean:.1f} ± {std:.1f}" if math.isfinite(std) else f"{mean:.1f}"


def fmt_delta_ci(delta: Mapping[str, float]) -> str:
    """``+0.8 [+0.2, +1.4] *`` from ``{"diff", "low", "high"}``; ``*`` when the interval excludes zero."""
    diff, low, high = (float(delta.get(k, math.nan)) for k in ("diff", "low", "high"))
    if not math.isfinite(diff):
        return MISSING
    mark = " *" if math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0) else ""
    return f"{fmt_pct(diff, signed=True)} [{fmt_pct(low, signed=True)}, {fmt_pct(high, signed=True)}]{mark}"


def ablation_table(runs: Iterable[Mapping], *, metrics: Sequence[str] = MAIN_METRICS, fmt: Fmt = "markdown",
                   baseline: str | None = None, deltas: Mapping[str, Mapping] | None = None,
                   seed_tests: Mapping[str, Mapping] | None = None, ci: float = 0.95,
                   title: str | None = None, columns: Sequence[str] = ()) -> str:
    """Rows = presets (first-appearance order), columns = n seeds + metrics as mean ± std over seeds.

    A grid sweep's rows are groups (a run's ``preset`` key names its group) shown with their ``cells`` (the
    preset, then one value per name in ``columns``, the varied fields); a row is a baseline row when its preset
    (first cell) is ``baseline``, and each Δ compares it with the baseline at the same values.

    Args:
        runs: per-run dicts (see :func:`group_by_preset`).
        baseline: preset the differences are taken against; adds the ``ΔmAP vs <baseline> [95% CI]`` column.
        deltas: ``{preset: {"diff", "low", "high"}}`` (e.g. ``paired_bootstrap(...)["metrics"]["mAP"]``, or the
            whole bootstrap result); the baseline's own row shows ``baseline``.
        seed_tests: ``{preset: paired_seed_test(...)}``; adds a ``p (seeds)`` column with the reported p-value.
    """
    grouped = group_by_preset(runs, metrics=metrics)
    header = ["Preset", *columns, "seeds", *metrics]
    level = f"{round(100 * ci):d}%"
    if baseline is not None:
        header.append(f"ΔmAP vs {baseline} [{level} CI]")
    if seed_tests is not None:
        header.append("p (seeds)")
    rows = []
    for preset, g in grouped.items():
        cells = g["cells"] if columns else [preset]
        row = [*cells, str(g["n"]), *(fmt_mean_std(g[k]["mean"], g[k]["std"]) for k in metrics)]
        is_baseline = cells[0] == baseline
        if baseline is not None:
            if is_baseline:
                row.append("baseline")
            else:
                d = (deltas or {}).get(preset)
                if d is not None and "metrics" in d:
                    d = d["metrics"]["mAP"]
                row.append(fmt_delta_ci(d) if d is not None else MISSING)
        if seed_tests is not None:
            st = seed_tests.get(preset)
            # a p-value across seeds only for a row of >= 2 seeds (never on a "1 seed" row)
            row.append(MISSING if st is None or is_baseline or g["n"] < 2 else f"{st['p_t']:.3f}")
        rows.append(row)
    table = render_table(header, rows, fmt=fmt, title=title)
    if baseline is not None:
        note = (f"ΔmAP: paired bootstrap over images (B - {baseline}), {level} percentile interval; "
                "* = interval excludes zero.")
        if columns:
            note += f" Each row is compared with {baseline} at the same {', '.join(columns)}."
        table += ("\n" if fmt == "markdown" else "") + note + "\n"
    return table
