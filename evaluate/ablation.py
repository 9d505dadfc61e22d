"""The ablation over a sweep: table.md (the paper's Tables 3-6 layout) and the ΔmAP-vs-baseline comparison.

* :func:`build_table` / :func:`write_sweep_table` — table.md of a sweep folder from its results.csv rows
  (mean ± std over seeds), with the ``ΔmAP vs <baseline> [CI]`` column once a comparison exists; a grid sweep's
  rows are (preset, varied values) groups, one column per varied field (:func:`varied_fields`);
* :func:`sweep_ablation` — every preset of a sweep against a baseline preset, from the runs' saved scores
  (paired bootstrap over images, :func:`evaluate.stats.paired_bootstrap_runs`; a seed test with >= 2 seeds); with
  a grid each group against the baseline preset *at the same grid values*, so the two rows differ in one thing;
* :func:`write_ablation` — the one writer of ``ablation.json`` (one schema, :data:`ABLATION_KEYS`) and
  ``ablation.md``, called by the CLI layer (``iagcn sweep --baseline`` and ``iagcn compare --sweep``).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Any

from iagcn.configio import config_to_dict
from iagcn.errors import UserError
from iagcn.evaluate.compare import compare_runs, comparison_record, refuse_incomplete, sweep_runs
from iagcn.evaluate.evaluation import EvalConfig
from iagcn.fsutil import git_commit, write_json_atomic, write_text_atomic
from iagcn.jsonutil import finite_or_none, to_json
from iagcn.train import runfolder
from iagcn.train.config import PAPER_ROWS, TrainConfig

#: the columns of the paper's Tables 3-6, in order
TABLE_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
#: ablation.json's schema: these keys of a :func:`sweep_ablation` result, then the EvalConfig and the git commit
ABLATION_RESULT_KEYS = ("baseline", "sweep", "cache", "ci", "deltas", "seed_tests", "comparisons", "run_dirs",
                        "varied")
ABLATION_KEYS = ABLATION_RESULT_KEYS + ("config", "git_commit")


# -- table.md ---------------------------------------------------------------------------------------
def row_name(preset: str, *, backbone: str | None) -> str:
    """What a preset's table row is: the paper's row name, except ``resnet``, named by what ran (a linear
    classifier on the cache's backbone; the paper's ResNet-101 row only when that backbone is resnet101)."""
    if preset == "resnet":
        return f"linear on {backbone or 'the cached global feature'}" + (" (the paper's ResNet-101 row)"
                                                                         if backbone == "resnet101" else "")
    return PAPER_ROWS.get(preset, preset)


def recorded_backbone(sweep_dir: str | Path, rows: list[dict[str, Any]]) -> str | None:
    """The backbone of the train cache recorded by the sweep's first readable run (None if unknown)."""
    for r in rows:
        try:
            entry = runfolder.recorded_cache(Path(sweep_dir) / str(r["run_dir"]), "train")
        except (UserError, KeyError):
            continue
        return (entry.get("extract_config") or {}).get("backbone")
    return None


def varied_fields(rows: list[dict[str, Any]]) -> list[str]:
    """The fields a grid sweep varied: the results.csv columns that are TrainConfig fields (other than the axes
    every sweep has, preset, seed and recipe), in column order."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"preset", "seed", "recipe"}
    return [c for c in dict.fromkeys(k for r in rows for k in r) if c in fields]


def grid_values(row: dict[str, Any], varied: list[str]) -> tuple[str, ...]:
    """A row's values of the varied fields ('' where it has none: the linear probe)."""
    return tuple("" if row.get(f) in (None, "") else str(row[f]) for f in varied)


def group_of(row: dict[str, Any], varied: list[str]) -> str:
    """A row's table group: its preset, in a grid sweep with its varied values (``iagcn fusion_lambda=0.5``)."""
    return " ".join([str(row["preset"]), *(f"{f}={v}" for f, v in zip(varied, grid_values(row, varied)) if v)])


def build_table(rows: list[dict[str, Any]], *, metrics: tuple[str, ...] = TABLE_METRICS, backbone: str | None = None,
                **report_options: Any) -> str:
    """Markdown table, one row per preset (a grid sweep: per preset and varied values, one column per varied
    field): mean ± std over seeds in the layout of the paper's Tables 3-6.

    ``rows``: results.csv rows (preset, varied fields, seed, metric columns). ``report_options`` go to
    ``evaluate.report.ablation_table`` (``baseline``, ``deltas``, ``seed_tests``: the ΔmAP-vs-baseline hook).
    A legend maps presets to the paper's row names and states the model-selection protocol(s).
    """
    from iagcn.evaluate.report import ablation_table

    if any(_num(r.get("legacy_mAP")) == _num(r.get("legacy_mAP")) for r in rows):  # runs with legacy_report
        metrics = (*metrics, "legacy_mAP")            # the same runs' mAP with the epoch chosen on the test split
    varied = varied_fields(rows)
    runs = [{"preset": group_of(r, varied), "cells": [str(r["preset"]), *(v or "-" for v in grid_values(r, varied))],
             "seed": r.get("seed"), "metrics": {m: _num(r.get(m)) for m in metrics}}
            for r in rows]
    table = ablation_table(runs, metrics=metrics, fmt="markdown", columns=varied, **report_options)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    protocols = sorted({str(r.get("protocol")) for r in rows if r.get("recipe") != "probe"})  # the probes: CV
    recipes = sorted({str(r.get("recipe")) for r in rows if r.get("recipe") not in (None, "", "probe")})
    legend = "; ".join(f"`{p}` = {row_name(p, backbone=backbone)}" for p in presets)
    legacy = (" legacy_mAP: the same runs' mAP at the epoch with the best evaluation-cache mAP (the legacy "
              "protocol: test-set selection, as ML-GCN, ADD-GCN and ASL); legacy_mAP - mAP is what it inflates.") \
        if "legacy_mAP" in metrics else ""
    return (table.rstrip("\n") + "\n\n" + f"Mean ± sample std over seeds. Rows: {legend}. "
            f"Recipe: {', '.join(recipes) or 'n/a'}. Model selection: {', '.join(protocols)}.{legacy}\n")


def _num(v: Any) -> float:
    """A results.csv cell as a number (NaN when empty, text or non-finite)."""
    try:
        x = finite_or_none(v)
    except (TypeError, ValueError):
        return math.nan
    return math.nan if x is None else x


def read_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(sweep_dir) / "results.csv"
    if not path.exists():
        raise UserError(f"{path}: not found; pass the --out of a finished `iagcn sweep`")
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_sweep_table(sweep_dir: str | Path, rows: list[dict[str, Any]] | None = None,
                      ablation: dict[str, Any] | None = None) -> Path:
    """(Re)write ``table.md`` of a sweep folder: its results.csv rows, with the ΔmAP column of ``ablation``."""
    rows = read_results(sweep_dir) if rows is None else rows
    options = {} if ablation is None else dict(baseline=ablation["baseline"], deltas=ablation["deltas"],
                                              seed_tests=ablation["seed_tests"] or None, ci=ablation["ci"])
    path = Path(sweep_dir) / "table.md"
    write_text_atomic(path, build_table(rows, backbone=recorded_backbone(sweep_dir, rows), **options),
                      what="sweep table")
    return path


# -- the comparison against a baseline ----------------------------------------------------------------
def baseline_groups(grid: dict[str, tuple[str, tuple[str, ...]]], baseline: str) -> dict[str, str]:
    """Each group's baseline group: the ``baseline`` preset's group with the same grid values (the two differ in
    the preset only). ``grid``: group -> (preset, varied values). A group without such a partner (the linear
    probe of a grid sweep) has none."""
    by_values = {values: g for g, (preset, values) in grid.items() if preset == baseline}
    return {g: by_values[values] for g, (preset, values) in grid.items() if values in by_values}


def sweep_ablation(sweep_dir: str | Path, *, baseline: str, cache_path: str | Path, config: EvalConfig,
                   log=None, groups: dict[str, list[Path]] | None = None,
                   grid: dict[str, tuple[str, tuple[str, ...]]] | None = None,
                   varied: list[str] | None = None) -> dict[str, Any]:
    """Every preset of a sweep against ``baseline``: the ablation table (mean ± std over seeds) with the
    ``ΔmAP vs baseline [CI]`` column from the paired bootstrap and, with >= 2 seeds paired by seed on both sides,
    the seed test's p-value.

    ``groups`` (``{group: [run dirs]}``, a group being a preset): exactly the runs to compare (`iagcn sweep`
    passes the runs of its own invocation); default: every complete run in ``sweep_dir`` (:func:`sweep_runs`).
    A grid sweep passes ``grid`` (group -> (preset, values of the ``varied`` fields)): each group is compared with
    the baseline preset's group at the same values (:func:`baseline_groups`), never across grid values.
    """
    if groups is None:
        groups = sweep_runs(sweep_dir, log=log)
    else:
        for dirs in groups.values():
            for d in dirs:
                refuse_incomplete(Path(d), str(d))
    varied = list(varied or [])
    grid = grid or {g: (g, ()) for g in groups}
    partner = baseline_groups(grid, baseline)
    if not any(preset == baseline for preset, _ in grid.values()):
        raise UserError(f"--baseline {baseline}: not among the sweep's presets ({', '.join(groups)})")
    runs, deltas, seed_tests, records = [], {}, {}, {}
    for group, dirs in groups.items():
        preset, values = grid[group]
        cells = [preset, *(v or "-" for v in values)]
        base = partner.get(group)
        if base is None:                                 # nothing differs from it in one thing: no Δ
            cmp = compare_runs([str(d) for d in dirs], [str(d) for d in dirs], cache_path=cache_path,
                               config=dataclasses.replace(config, n_resamples=100))   # its own metrics only (the CI is unused; 100 = the minimum)
        else:
            cmp = compare_runs([str(d) for d in groups[base]], [str(d) for d in dirs], cache_path=cache_path,
                               config=config)
        for r in cmp.runs_b:
            runs.append({"preset": group, "cells": cells, "seed": r.seed, "metrics": cmp.per_run[str(r.run_dir)]})
        if base is not None and group != base:
            deltas[group] = cmp.bootstrap
            if cmp.seed_tests and "mAP" in cmp.seed_tests:
                seed_tests[group] = cmp.seed_tests["mAP"]
            records[group] = comparison_record(cmp, cache_path=cache_path, config=config)
            if log:
                m = cmp.bootstrap["metrics"]["mAP"]
                log(f"{group} vs {base}: ΔmAP {m['diff']:+.2f} [{m['low']:+.2f}, {m['high']:+.2f}]")
    return {"baseline": baseline, "sweep": str(sweep_dir), "cache": str(cache_path), "runs": runs, "deltas": deltas,
            "seed_tests": seed_tests, "comparisons": records, "ci": config.ci,
            "run_dirs": {p: [str(d) for d in dirs] for p, dirs in groups.items()}, "varied": varied}


def sweep_ablation_table(result: dict[str, Any], *, fmt: str = "text") -> str:
    """The ablation table (report.ablation_table) of a :func:`sweep_ablation` result."""
    from iagcn.evaluate.report import ablation_table

    return ablation_table(result["runs"], fmt=fmt, baseline=result["baseline"], deltas=result["deltas"],
                          seed_tests=result["seed_tests"] or None, ci=result["ci"],
                          columns=result.get("varied") or ())


def write_ablation(out_dir: str | Path, result: dict[str, Any], *, config: EvalConfig) -> dict[str, Path]:
    """The one writer of ``ablation.json`` (keys :data:`ABLATION_KEYS`) and ``ablation.md`` under ``out_dir``."""
    out = Path(out_dir)
    runfolder.refuse_run_folder(out)
    record = {k: result[k] for k in ABLATION_RESULT_KEYS}
    record.update(config=config_to_dict(config), git_commit=git_commit())
    paths = {"json": out / "ablation.json", "md": out / "ablation.md"}
    write_json_atomic(paths["json"], to_json(record), what="ablation comparison")
    write_text_atomic(paths["md"], sweep_ablation_table(result, fmt="markdown"), what="ablation table")
    return paths


def ablate_sweep(out_dir: str | Path, *, baseline: str, cache_path: str | Path, config: EvalConfig, log=print,
                 members: list[tuple[str, int]] | None = None, run_dirs: list[str] | None = None) -> dict[str, Any]:
    """`iagcn sweep --baseline`: table.md with the ΔmAP-vs-``baseline`` column (issue 7), ablation.json and .md.

    Every preset's saved evaluation scores (no retraining) are compared with the baseline's by a paired
    bootstrap over evaluation images (resampling the same images for both; seeds averaged per side), plus a
    paired test across seeds when both sides have >= 2 seeds (:func:`sweep_ablation`).

    ``members``: the (preset, seed) runs of this invocation, or ``run_dirs``: their folder names (a grid sweep);
    only they enter the table and the Δ column, never another run folder that happens to be in ``out_dir`` (an
    interrupted run, an earlier sweep's seeds). Default: the runs listed in results.csv. With a grid (varied
    fields in results.csv) each group is compared with the baseline preset at the same grid values.
    """
    out = Path(out_dir)
    rows = read_results(out)
    if members is not None:
        wanted = {(p, int(s)) for p, s in members}
        rows = [r for r in rows if (r["preset"], int(r["seed"])) in wanted]
        missing = sorted(wanted - {(r["preset"], int(r["seed"])) for r in rows})
        if missing:
            raise RuntimeError(f"sweep {out}: results.csv lacks runs {missing} of this invocation")
    if run_dirs is not None:
        rows = [r for r in rows if r["run_dir"] in set(run_dirs)]
        missing = sorted(set(run_dirs) - {r["run_dir"] for r in rows})
        if missing:
            raise RuntimeError(f"sweep {out}: results.csv lacks runs {missing} of this invocation")
    varied = varied_fields(rows)
    groups: dict[str, list[Path]] = {}
    grid: dict[str, tuple[str, tuple[str, ...]]] = {}
    for r in rows:
        groups.setdefault(group_of(r, varied), []).append(out / r["run_dir"])
        grid[group_of(r, varied)] = (r["preset"], grid_values(r, varied))
    result = sweep_ablation(out, baseline=baseline, cache_path=cache_path, config=config, log=log, groups=groups,
                            grid=grid, varied=varied)
    _check_deltas_match_table(rows, result, baseline_groups(grid, baseline), varied)
    write_sweep_table(out, rows, ablation=result)
    write_ablation(out, result, config=config)
    return result


def _check_deltas_match_table(rows: list[dict[str, Any]], result: dict[str, Any], partner: dict[str, str],
                              varied: list[str]) -> None:
    """The Δ column and the mAP column come from the same runs: mean mAP(group) - mean mAP(its baseline group)
    must equal the bootstrap's point estimate (to the rounding of results.csv). A mismatch is a bug, never a
    table."""
    means: dict[str, list[float]] = {}
    for r in rows:
        v = _num(r.get("mAP"))
        if math.isfinite(v):
            means.setdefault(group_of(r, varied), []).append(v)
    for preset, d in result["deltas"].items():
        base_group = partner.get(preset)
        if base_group not in means:
            continue
        base = sum(means[base_group]) / len(means[base_group])
        diff = d["metrics"]["mAP"]["diff"]
        complete = preset in means and len(means[preset]) == sum(group_of(r, varied) == preset for r in rows)
        if complete and diff is not None and math.isfinite(diff):
            table_diff = sum(means[preset]) / len(means[preset]) - base
            if abs(table_diff - diff) > 0.01:
                raise RuntimeError(f"ΔmAP of {preset} ({diff:+.4f}) disagrees with its mAP column "
                                   f"({table_diff:+.4f}); the table was not written")
