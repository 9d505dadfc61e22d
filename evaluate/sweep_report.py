"""One self-contained ``report.html`` per sweep: the ablation table, every run, per-class AP bars, training curves
and precision-recall curves of all runs overlaid.

Self-contained: the figures are PNGs embedded as base64 ``data:`` URIs and the style sheet is inline, so the file
can be mailed or archived alone (no ``src=`` to a file or a server). Inputs are the sweep folder's own files:
``table.md`` (the ablation table, with the ΔmAP column when the sweep wrote it), ``results.csv`` (one row per run),
each run's ``log.csv`` and ``scores.npz`` (its logits on the evaluation cache), and the evaluation cache's labels.

pandas does the aggregation: the runs table (``results.csv``) and the per-class AP of each preset averaged over
its seeds.
"""
from __future__ import annotations

import base64
import html
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import write_text_atomic

RUN_COLUMNS = ("run_dir", "preset", "seed", "protocol", "selected_epoch", "epochs_run", "mAP", "CF1", "OF1",
               "train_seconds")

_STYLE = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
"""


def markdown_table_to_html(text: str) -> str:
    """The pipe tables of a Markdown text as HTML tables; other non-empty lines as paragraphs (escaped). Cells are
    read back as :func:`evaluate.report.md_cell` wrote them (escaped ``|``, entities, ``<br>``), then HTML-escaped."""
    from iagcn.evaluate.report import md_cell_text, md_row_cells

    out: list[str] = []
    rows: list[list[str]] = []

    def esc(c: str) -> str:
        return html.escape(c).replace("\n", "<br>")

    def flush() -> None:
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c.strip()) <= set(":-") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr></thead>"
                       "<tbody>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                                           for r in body) + "</tbody></table>")
            rows.clear()

    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|") and s.endswith("|"):
            rows.append([md_cell_text(c) for c in md_row_cells(s)])
            continue
        flush()
        if s:
            s = s.strip("*")
            out.append(f'<p class="note">{html.escape(s)}</p>')
    flush()
    return "\n".join(out)


def _png_data_uri(draw: Callable[[Path], Path]) -> str:
    """Run ``draw(path)`` (a plot function writing a PNG) in a temporary folder; the PNG as a data URI."""
    with tempfile.TemporaryDirectory(prefix="iagcn-report-") as tmp:
        path = draw(Path(tmp) / "figure.png")
        data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(title: str, uri: str | None, note: str = "") -> str:
    body = f'<img alt="{html.escape(title)}" src="{uri}">' if uri else '<p class="note">not available</p>'
    return f"<h2>{html.escape(title)}</h2>\n" + (f'<p class="note">{html.escape(note)}</p>\n' if note else "") + body


def sweep_runs_frame(sweep_dir: Path):
    """results.csv as a DataFrame (one row per run), in the order the sweep ran them."""
    import pandas as pd

    path = sweep_dir / "results.csv"
    if not path.exists():
        raise UserError(f"{sweep_dir}: no results.csv; is it an `iagcn sweep --out` folder with a finished run?")
    return pd.read_csv(path)


def with_groups(sweep_dir: Path, runs):
    """(The runs frame with a ``group`` column: the preset, in a grid sweep with its varied values (``iagcn
    fusion_lambda=0.5``, :func:`iagcn.evaluate.ablation.group_of`), as the table groups them; the varied fields).
    The varied values are taken as results.csv writes them (text: ``1``, not pandas' ``1.0``)."""
    from iagcn.evaluate.ablation import group_of, read_results, varied_fields

    records = read_results(sweep_dir)                      # the same rows as ``runs``, every cell as text
    varied = varied_fields(records)
    runs = runs.assign(group=[group_of(r, varied) for r in records])
    for f in varied:
        runs[f] = [r[f] or "-" for r in records]
    return runs, varied


def curve_caption(runs) -> str:
    """What the training-curve figure shows per epoch, by the runs' model-selection protocol: a hold-out mAP curve
    only where a hold-out exists."""
    protocols = sorted({str(p) for p, preset in zip(runs["protocol"], runs["preset"]) if preset != "linear-probe"})
    parts = []
    for p in protocols:
        if p.startswith("holdout-"):
            parts.append(f"{p}: the mAP curve is the hold-out's ({p[len('holdout-'):]} of the train cache, "
                         f"label-stratified), which chose the epoch")
        elif p == "select-on-eval":
            parts.append("select-on-eval: the mAP curve is the evaluation cache's, which also chose the epoch "
                         "(optimistic)")
        elif p == "last-epoch":
            parts.append("last-epoch: no hold-out (--val-fraction 0), so no mAP is measured per epoch and the "
                         "last epoch is kept; only the loss and time are drawn for these runs")
        else:
            parts.append(f"{p}: see the run's config.json")
    return ("Total loss and seconds per epoch from each run's log.csv (one colour per preset, its seeds and grid "
            "values as shades). " + "; ".join(parts) + ".")


def per_class_ap_by_preset(sweep_dir: Path, runs, cache_path: str | os.PathLike, *, by: str = "preset"):
    """(DataFrame of per-class AP, one row per run; {preset: mean AP over its seeds (C,)}, class names).

    Each run's AP comes from its saved logits (scores.npz) against the evaluation cache's labels. ``by``: the
    column the means are taken over (``group`` for a grid sweep's (preset, varied values) groups).
    """
    import pandas as pd

    from iagcn.evaluate.inputs import cache_targets, rows_for_ids
    from iagcn.metrics import average_precision_per_class
    from iagcn.train.runfolder import load_scores

    table = cache_targets(Path(cache_path))
    class_names = list(table.class_names or [])
    records = []
    for row in runs.itertuples(index=False):
        saved = load_scores(sweep_dir / str(row.run_dir))
        if saved is None:
            continue
        scores, ids = saved
        targets = rows_for_ids(table, ids, what=f"run {row.run_dir}")
        ap = average_precision_per_class(scores, targets, warn=False)                   # (C,) percent, NaN: none
        records.append({"run_dir": row.run_dir, "preset": getattr(row, by), **dict(zip(class_names, ap))})
    frame = pd.DataFrame.from_records(records, columns=["run_dir", "preset", *class_names])
    means = frame.groupby("preset", sort=False)[class_names].mean()                      # NaN-skipping mean over seeds
    return frame, {p: means.loc[p].to_numpy(dtype=float) for p in means.index}, class_names


def write_sweep_report(sweep_dir: str | os.PathLike, *, cache_path: str | os.PathLike,
                       pr_classes: int = 3, title: str | None = None) -> Path:
    """Write ``<sweep_dir>/report.html`` (self-contained) and return its path."""
    from iagcn.evaluate.plots import (plot_per_class_ap, plot_pr_curves_overlay, plot_training_curves_overlay,
                                      shaded_colors)

    sweep_dir = Path(sweep_dir)
    runs, varied = with_groups(sweep_dir, sweep_runs_frame(sweep_dir))
    table_md = (sweep_dir / "table.md").read_text() if (sweep_dir / "table.md").exists() else ""
    frame, mean_ap, class_names = per_class_ap_by_preset(sweep_dir, runs, cache_path, by="group")
    # one hue per preset in every figure: its runs (seeds, grid values) and its groups as shades of it
    run_colors = shaded_colors(dict(zip(runs["run_dir"].astype(str), runs["preset"].astype(str))))
    group_colors = shaded_colors(dict(zip(runs["group"], runs["preset"].astype(str))))

    ap_uri = None
    if mean_ap:
        ap_uri = _png_data_uri(lambda p: plot_per_class_ap(mean_ap, class_names, p, colors=group_colors,
                                                           title="Per-class AP (mean over seeds)"))
    from iagcn.train.runfolder import log_path

    logs = {str(r): log_path(sweep_dir / str(r)) for r in runs["run_dir"] if log_path(sweep_dir / str(r)).exists()}
    curves_uri = _png_data_uri(lambda p: plot_training_curves_overlay(logs, p, colors=run_colors)) if logs else None

    pr_uri, pr_note = None, ""
    if len(frame):
        from iagcn.evaluate.inputs import cache_targets, rows_for_ids
        from iagcn.train.runfolder import load_scores

        table = cache_targets(Path(cache_path))
        first_seed = runs.drop_duplicates("group")                                   # one run per preset (group)
        curves, pr_colors = {}, {}
        for row in first_seed.itertuples(index=False):
            saved = load_scores(sweep_dir / str(row.run_dir))
            if saved is not None:
                curves[str(row.run_dir)] = (saved[0], rows_for_ids(table, saved[1], what=f"run {row.run_dir}"))
                pr_colors[str(row.run_dir)] = group_colors[row.group]
        positives = (table.values == 1).sum(0)                                            # (C,)
        chosen = [class_names[c] for c in np.argsort(-positives, kind="stable")[:pr_classes] if positives[c] > 0]
        if curves and chosen:
            pr_uri = _png_data_uri(lambda p: plot_pr_curves_overlay(curves, class_names, chosen, p, colors=pr_colors,
                                                                    title="Precision-recall, one run per preset"))
            pr_note = (f"The {len(chosen)} classes with the most positives; the first seed of each preset"
                       + (" and grid point" if varied else "") + ".")

    shown = [c for c in RUN_COLUMNS[:2] if c in runs.columns] + varied + \
        [c for c in RUN_COLUMNS[2:] if c in runs.columns]
    runs_html = runs[shown].to_html(index=False, border=0, na_rep="-", float_format=lambda v: f"{v:.2f}")
    heading = title or f"IA-GCN sweep: {sweep_dir.name}"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(heading)}</title>",
        f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(heading)}</h1>",
        f'<p class="note">{len(runs)} run(s), {runs["preset"].nunique()} preset(s); evaluation cache '
        f"{html.escape(str(Path(cache_path).resolve()))}. Figures are embedded in this file.</p>",
        "<h2>Ablation table</h2>", markdown_table_to_html(table_md) if table_md else '<p class="note">no table.md</p>',
        "<h2>Runs</h2>", runs_html,
        _figure("Per-class AP", ap_uri, "AP per class on the evaluation cache, each preset averaged over its seeds."),
        _figure("Training curves, all runs overlaid", curves_uri, curve_caption(runs)),
        _figure("Precision-recall curves, overlaid", pr_uri, pr_note),
        "</body></html>",
    ]
    out = sweep_dir / "report.html"
    write_text_atomic(out, "\n".join(parts) + "\n", what="sweep report")
    return out

