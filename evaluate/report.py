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


def md_cell(text: object) -> str:
    """``text`` as the content of one Markdown table cell, shown as written: names are data, never markup.

    ``\\`` and ``|`` are backslash-escaped (a ``|`` would split the cell), ``&``, ``<`` and ``>`` become entities
    (a raw ``<script>`` would be live wherever the Markdown is rendered), a line break becomes ``<br>`` (a
    newline would end the row). :func:`md_cell_text` undoes it.
    """
    out = str(text).replace("\\", "\\\\").replace("|", "\\|")
    out = out.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("\r\n", "<br>").replace("\r", "<br>").replace("\n", "<br>")


def md_cell_text(cell: str) -> str:
    """The text of a cell written by :func:`md_cell` (its exact inverse)."""
    import html
    import re

    return html.unescape(re.sub(r"\\(.)", r"\1", cell.replace("<br>", "\n")))


def md_row_cells(line: str) -> list[str]:
    """The raw cells of one Markdown table row ``| a | b |``, split at the ``|`` that are not backslash-escaped."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    cells, current, k = [], "", 0
    while k < len(body):
        ch = body[k]
        if ch == "\\" and k + 1 < len(body):
            current += body[k:k + 2]
            k += 2
            continue
        if ch == "|":
            cells.append(current.strip())
            current = ""
        else:
            current += ch
        k += 1
    if current.strip():
        cells.append(current.strip())
    return cells


def _text_cell(text: object) -> str:
    """A plain-text cell on one line: control characters shown as escapes (``\\n``), never a line break."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, fmt: Fmt = "markdown",
                 title: str | None = None) -> str:
    """A table with a left-aligned first column and right-aligned others, as Markdown or aligned plain text.

    Every cell (and the title) goes through :func:`md_cell` for Markdown, so a name holding ``|``, a newline or
    ``<script>`` neither shifts the columns nor becomes markup; plain text keeps each cell on one line."""
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt: {fmt!r} is not 'markdown' or 'text'")
    cell = md_cell if fmt == "markdown" else _text_cell
    title = cell(title) if title else title
    cells = [list(map(cell, header))] + [list(map(cell, r)) for r in rows]
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
#: classes with fewer positives than this are flagged (``*``) in the per-class tables: their AP moves by many
#: points per image
FEW_POSITIVES = 5


def per_class_table(results: Mapping[str, Sequence[float]] | Iterable[tuple[str, Sequence[float]]],
                    class_names: Sequence[str], *, fmt: Fmt = "markdown", title: str | None = None,
                    positives: Sequence[int] | None = None) -> str:
    """``Methods | <class> ... | mAP``: per-class AP (percent) per method; mAP = mean of the non-NaN APs.

    With ``positives`` (C,) a last row ``positives`` gives each class's number of positive images, ``*`` marking
    the classes with fewer than :data:`FEW_POSITIVES`, and a note under the table says so.
    """
    rows = []
    for name, ap in _rows_of(results):
        ap = np.asarray(ap, dtype=np.float64)
        if ap.shape != (len(class_names),):
            raise ValueError(f"per_class_table: {name} has {ap.size} APs for {len(class_names)} classes")
        rows.append([name, *(fmt_pct(v) for v in ap), fmt_pct(mean_average_precision(ap))])
    if positives is None:
        return render_table(["Methods", *short_class_names(class_names), "mAP"], rows, fmt=fmt, title=title)
    counts = [int(n) for n in positives]
    if len(counts) != len(class_names):
        raise ValueError(f"per_class_table: {len(counts)} positive counts for {len(class_names)} classes")
    few = [n < FEW_POSITIVES for n in counts]
    rows.append(["positives", *(f"{n}*" if f else str(n) for n, f in zip(counts, few)), MISSING])
    table = render_table(["Methods", *short_class_names(class_names), "mAP"], rows, fmt=fmt, title=title)
    note = (f"positives: images with target 1 per class (ignored entries not counted); * = fewer than "
            f"{FEW_POSITIVES} positives ({sum(few)} of {len(counts)} classes): such an AP rests on a handful of images.")
    return table + ("\n" if fmt == "markdown" else "") + note + "\n"


#: column headers of :func:`map_conventions_table`
AP_CONVENTION_HEADERS = {"all_point": "all-point", "voc07_11point": "VOC07 11-pt",
                         "voc10_all_point": "VOC10+ interp.", "difficult_as_negative": "difficult = neg.",
                         "labelled_images": "labelled images"}


def map_conventions_table(results: Mapping[str, Mapping[str, Mapping]] | Iterable[tuple[str, Mapping]], *,
                          fmt: Fmt = "markdown", title: str | None = None) -> str:
    """``Methods | <convention> ...``: mAP under each convention of :func:`iagcn.metrics.map_conventions`, one row
    per method, and a note under the table defining each column and its number of images."""
    from iagcn.metrics import AP_CONVENTIONS

    rows = _rows_of(results)
    table = render_table(["Methods", *(AP_CONVENTION_HEADERS[k] for k in AP_CONVENTIONS)],
                         [[name, *(fmt_pct(conv[k]["mAP"]) for k in AP_CONVENTIONS)] for name, conv in rows],
                         fmt=fmt, title=title or "mAP under each convention (percent)")
    first = rows[0][1] if rows else {}
    n_all = first.get("all_point", {}).get("num_images", "?")
    n_lab = first.get("labelled_images", {}).get("num_images", "?")
    note = ("all-point (the default mAP, the paper's): sklearn average_precision_score, -1 entries removed per "
            "class; VOC07 11-pt: mean of the highest precision at recall >= 0, 0.1, ..., 1 (VOC2007 devkit); "
            "VOC10+ interp.: area under the monotone precision envelope (VOC2010+ devkit); difficult = neg.: "
            f"-1 entries counted as negatives, then all-point; labelled images: all-point on the {n_lab} of {n_all} "
            "images with at least one label (as COCO's 40,137 of val2014's 40,504; `extract --keep-empty` keeps "
            "the others" + ("; every image here has one, so it equals all-point" if n_lab == n_all else "") + ").")
    return table + ("\n" if fmt == "markdown" else "") + note + "\n"


# ----------------------------------------------------------------------------------------------- thresholds
def thresholds_table(results: Mapping[str, Mapping] | Iterable[tuple[str, Mapping]], *, fmt: Fmt = "markdown",
                     title: str | None = None) -> str:
    """``Methods | threshold | CP CR CF1 OP OR OF1``: per method the row at the fixed threshold (the paper's 0.5),
    then the rows at the thresholds calibrated on the hold-out (``evaluate.calibration.calibration_record``), or a
    row saying they are unavailable, with the reason under the table."""
    rows, notes = [], []
    for name, rec in _rows_of(results):
        t = rec["fixed"]["threshold_probability"]
        rows.append([name, f"{t:g} (paper)" if t == 0.5 else f"{t:g} (--threshold)",
                     *(fmt_pct(rec["fixed"]["metrics"].get(k)) for k in THRESHOLD_METRICS)])
        if not rec["available"]:
            rows.append([name, "calibrated: unavailable", *(MISSING for _ in THRESHOLD_METRICS)])
            notes.append(f"{name}: no calibrated thresholds: {rec['reason']}.")
            continue
        g, pc = rec["global"], rec["per_class"]
        n_fb = len(pc["fallback_to_global"])
        rows.append([name, f"global {g['threshold_probability']:.3g} (hold-out)",
                     *(fmt_pct(g["metrics"].get(k)) for k in THRESHOLD_METRICS)])
        rows.append([name, "per class (hold-out)" + (f", {n_fb} at global" if n_fb else ""),
                     *(fmt_pct(pc["metrics"].get(k)) for k in THRESHOLD_METRICS)])
        notes.append(f"{name}: thresholds chosen on {rec['holdout_images']} hold-out images ({rec['source']}).")
    table = render_table(["Methods", "threshold", *THRESHOLD_METRICS], rows, fmt=fmt,
                         title=title or "Thresholded metrics: fixed threshold vs calibrated on the hold-out")
    criterion = next((r["criterion"] for _, r in _rows_of(results)), "")
    note = (f"Thresholds are probabilities. Calibrated thresholds are chosen on a hold-out of the train cache, "
            f"never on the evaluated images ({criterion}). " + " ".join(notes))
    return table + ("\n" if fmt == "markdown" else "") + note + "\n"


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
