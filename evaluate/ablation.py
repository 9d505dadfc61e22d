"""The ablation over a sweep: table.md (the paper's Tables 3-6 layout) and the ΔmAP-vs-baseline comparison.

* :func:`build_table` / :func:`write_sweep_table` — table.md of a sweep folder from its results.csv rows
  (mean ± std over seeds), with the ``ΔmAP vs <baseline> [CI]`` column once a comparison exists;
* :func:`sweep_ablation` — every preset of a sweep against a baseline preset, from the runs' saved scores
  (paired bootstrap over images, :func:`evaluate.stats.paired_bootstrap_runs`; a seed test with >= 2 seeds);
* :func:`write_ablation` — the one writer of ``ablation.json`` (one schema, :data:`ABLATION_KEYS`) and
  ``ablation.md``, called by the CLI layer (``iagcn sweep --baseline`` and ``iagcn compare --sweep``).
"""
from __future__ import annotations

import csv
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
from iagcn.train.config import PAPER_ROWS

#: the columns of the paper's Tables 3-6, in order
TABLE_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
#: ablation.json's schema: these keys of a :func:`sweep_ablation` result, then the EvalConfig and the git commit
ABLATION_RESULT_KEYS = ("baseline", "sweep", "cache", "ci", "deltas", "seed_tests", "comparisons", "run_dirs")
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


def build_table(rows: list[dict[str, Any]], *, metrics: tuple[str, ...] = TABLE_METRICS, backbone: str | None = None,
                **report_options: Any) -> str:
    """Markdown table, one row per preset: mean ± std over seeds in the layout of the paper's Tables 3-6.

    ``rows``: results.csv rows (preset, seed, metric columns). ``report_options`` go to
    ``evaluate.report.ablation_table`` (``baseline``, ``deltas``, ``seed_tests``: the ΔmAP-vs-baseline hook).
    A legend maps presets to the paper's row names and states the model-selection protocol(s).
    """
    from iagcn.evaluate.report import ablation_table

    runs = [{"preset": r["preset"], "seed": r.get("seed"),
             "metrics": {m: _num(r.get(m)) for m in metrics}}
            for r in rows]
    table = ablation_table(runs, metrics=metrics, fmt="markdown", **report_options)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    protocols = sorted({str(r.get("protocol")) for r in rows if r.get("preset") != "linear-probe"})
    recipes = sorted({str(r.get("recipe")) for r in rows if r.get("recipe") not in (None, "", "probe")})
    legend = "; ".join(f"`{p}` = {row_name(p, backbone=backbone)}" for p in presets)
    return (table.rstrip("\n") + "\n\n" + f"Mean ± sample std over seeds. Rows: {legend}. "
            f"Recipe: {', '.join(recipes) or 'n/a'}. Model selection: {', '.join(protocols)}.\n")


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
def sweep_ablation(sweep_dir: str | Path, *, baseline: str, cache_path: str | Path, config: EvalConfig,
                   log=None, groups: dict[str, list[Path]] | None = None) -> dict[str, Any]:
    """Every preset of a sweep against ``baseline``: the ablation table (mean ± std over seeds) with the
    ``ΔmAP vs baseline [CI]`` column from the paired bootstrap and, with >= 2 seeds paired by seed on both sides,
    the seed test's p-value.

    ``groups`` (``{preset: [run dirs]}``): exactly the runs to compare (`iagcn sweep` passes the runs of its own
    invocation); default: every complete run in ``sweep_dir`` (:func:`sweep_runs`).
    """
    if groups is None:
        groups = sweep_runs(sweep_dir, log=log)
    else:
        for dirs in groups.values():
            for d in dirs:
                refuse_incomplete(Path(d), str(d))
    if baseline not in groups:
        raise UserError(f"--baseline {baseline}: not among the sweep's presets ({', '.join(groups)})")
    runs, deltas, seed_tests, records = [], {}, {}, {}
    base_specs = [str(d) for d in groups[baseline]]
    for preset, dirs in groups.items():
        cmp = compare_runs(base_specs, [str(d) for d in dirs], cache_path=cache_path, config=config)
        for r in cmp.runs_b:
            runs.append({"preset": preset, "seed": r.seed, "metrics": cmp.per_run[str(r.run_dir)]})
        if preset != baseline:
            deltas[preset] = cmp.bootstrap
            if cmp.seed_tests and "mAP" in cmp.seed_tests:
                seed_tests[preset] = cmp.seed_tests["mAP"]
            records[preset] = comparison_record(cmp, cache_path=cache_path, config=config)
            if log:
                m = cmp.bootstrap["metrics"]["mAP"]
                log(f"{preset} vs {baseline}: ΔmAP {m['diff']:+.2f} [{m['low']:+.2f}, {m['high']:+.2f}]")
    return {"baseline": baseline, "sweep": str(sweep_dir), "cache": str(cache_path), "runs": runs, "deltas": deltas,
            "seed_tests": seed_tests, "comparisons": records, "ci": config.ci,
            "run_dirs": {p: [str(d) for d in dirs] for p, dirs in groups.items()}}


def sweep_ablation_table(result: dict[str, Any], *, fmt: str = "text") -> str:
    """The ablation table (report.ablation_table) of a :func:`sweep_ablation` result."""
    from iagcn.evaluate.report import ablation_table

    return ablation_table(result["runs"], fmt=fmt, baseline=result["baseline"], deltas=result["deltas"],
                          seed_tests=result["seed_tests"] or None, ci=result["ci"])


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
                 members: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """`iagcn sweep --baseline`: table.md with the ΔmAP-vs-``baseline`` column (issue 7), ablation.json and .md.

    Every preset's saved evaluation scores (no retraining) are compared with the baseline's by a paired
    bootstrap over evaluation images (resampling the same images for both; seeds averaged per side), plus a
    paired test across seeds when both sides have >= 2 seeds (:func:`sweep_ablation`).

    ``members``: the (preset, seed) runs of this invocation; only they enter the table and the Δ column, never
    another run folder that happens to be in ``out_dir`` (an interrupted run, an earlier sweep's seeds). Default:
    the runs listed in results.csv.
    """
    out = Path(out_dir)
    rows = read_results(out)
    if members is not None:
        wanted = {(p, int(s)) for p, s in members}
        rows = [r for r in rows if (r["preset"], int(r["seed"])) in wanted]
        missing = sorted(wanted - {(r["preset"], int(r["seed"])) for r in rows})
        if missing:
            raise RuntimeError(f"sweep {out}: results.csv lacks runs {missing} of this invocation")
    groups: dict[str, list[Path]] = {}
    for r in rows:
        groups.setdefault(r["preset"], []).append(out / r["run_dir"])
    result = sweep_ablation(out, baseline=baseline, cache_path=cache_path, config=config, log=log, groups=groups)
    _check_deltas_match_table(rows, result, baseline)
    write_sweep_table(out, rows, ablation=result)
    write_ablation(out, result, config=config)
    return result


def _check_deltas_match_table(rows: list[dict[str, Any]], result: dict[str, Any], baseline: str) -> None:
    """The Δ column and the mAP column come from the same runs: mean mAP(preset) - mean mAP(baseline) must equal
    the bootstrap's point estimate (to the rounding of results.csv). A mismatch is a bug, never a table."""
    means: dict[str, list[float]] = {}
    for r in rows:
        v = _num(r.get("mAP"))
        if math.isfinite(v):
            means.setdefault(r["preset"], []).append(v)
    if baseline not in means:
        return
    base = sum(means[baseline]) / len(means[baseline])
    for preset, d in result["deltas"].items():
        diff = d["metrics"]["mAP"]["diff"]
        complete = preset in means and len(means[preset]) == sum(r["preset"] == preset for r in rows)
        if complete and diff is not None and math.isfinite(diff):
            table_diff = sum(means[preset]) / len(means[preset]) - base
            if abs(table_diff - diff) > 0.01:
                raise RuntimeError(f"ΔmAP of {preset} ({diff:+.4f}) disagrees with its mAP column "
                                   f"({table_diff:+.4f}); the table was not written")
