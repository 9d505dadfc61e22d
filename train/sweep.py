"""`iagcn sweep`: every preset x seed on caches loaded once; results.csv and the paper-layout table.md.

The table is built by :func:`build_table` from the per-run rows, so a later column (e.g. a ΔmAP-vs-baseline
bootstrap interval from evaluate.stats) plugs in through ``extra_columns`` without touching the runs.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from iagcn.errors import UserError
from iagcn.fsutil import check_writable_dir, exclusive_lock, interrupt_hint, write_json_atomic, write_text_atomic
from iagcn.train.config import PAPER_ROWS, TrainConfig
from iagcn.train.data import CacheData
from iagcn.train.run import train_run

#: the columns of the paper's Tables 3-6, in order
TABLE_METRICS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")


def run_dir_for(out: Path, preset: str, seed: int) -> Path:
    return out / f"{preset}-s{seed}"


def run_sweep(configs: Iterable[TrainConfig], *, train_data: CacheData, eval_data: CacheData, out_dir: str | Path,
              progress: bool = True, log=print, probe: bool = True) -> list[dict[str, Any]]:
    """Train every config (one per preset x seed) into out_dir/<preset>-s<seed>/; complete runs are skipped,
    interrupted ones resume. With ``probe`` the `linear-probe` reference (train.probe) is fitted first into
    out_dir/linear-probe-s0/. Writes results.csv and table.md after every run; returns the rows."""
    out = check_writable_dir(out_dir, what="the sweep", option="--out")
    configs = list(configs)
    with exclusive_lock(out / "sweep", what="sweep directory"), \
            interrupt_hint(lambda: f"interrupted: {sum((run_dir_for(out, c.preset, c.seed) / 'metrics.json').exists() for c in configs)}"
                                   f"/{len(configs)} runs complete in {out}; rerun the same `iagcn sweep` command to "
                                   f"resume (the interrupted run continues from its last epoch)"):
        return _run_sweep_locked(configs, train_data, eval_data, out, progress, log, probe)


def _run_sweep_locked(configs, train_data, eval_data, out: Path, progress, log, probe=True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if probe:
        from iagcn.train.probe import PROBE_NAME, run_probe

        result = run_probe(train_data, eval_data, out / f"{PROBE_NAME}-s0", log=log)
        rows.append(probe_row(result))
    for i, cfg in enumerate(configs):
        run_dir = run_dir_for(out, cfg.preset, cfg.seed)
        done = run_dir / "metrics.json"
        if done.exists():
            _refuse_other_config(run_dir, cfg)
            log(f"[{i + 1}/{len(configs)}] {run_dir.name}: complete, skipped")
            result = json.loads(done.read_text())
        else:
            log(f"[{i + 1}/{len(configs)}] {run_dir.name}: training ({time.perf_counter() - t0:.0f}s into the sweep)")
            result = train_run(cfg, train_data=train_data, eval_data=eval_data, out_dir=run_dir,
                               resume=(run_dir / "last.pt").exists(), progress=progress, log=log,
                               resume_command="rerun the same `iagcn sweep` command to resume")
        rows.append(result_row(result, cfg, run_dir))
        write_results(out, rows)
    return rows


def _refuse_other_config(run_dir: Path, cfg: TrainConfig) -> None:
    """A complete run trained with other settings must not slip into this sweep's table."""
    from iagcn.configio import config_to_dict

    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{run_dir}: metrics.json exists but config.json is unreadable; delete that folder "
                        f"and rerun") from e
    mine = json.loads(json.dumps(config_to_dict(cfg)))
    diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
    if diff:
        raise UserError(f"{run_dir}: a complete run with a different config ({', '.join(diff)}) is already there; "
                        f"use another sweep --out or delete that folder")


def result_row(result: dict[str, Any], cfg: TrainConfig, run_dir: Path) -> dict[str, Any]:
    """One results.csv row: preset, seed, protocol, every metric, train seconds, selected epoch, run dir."""
    row = {"preset": cfg.preset, "seed": cfg.seed, "recipe": cfg.recipe, "protocol": result["protocol"]}
    for k, v in result["metrics"].items():
        if not isinstance(v, (list, dict)):
            row[k] = round(v, 4) if isinstance(v, float) else v
    row.update(train_seconds=round(float(result["train_seconds"]), 2), selected_epoch=result["selected_epoch"],
               epochs_run=result["epochs_run"], run_dir=run_dir.name)
    return row


def probe_row(result: dict[str, Any]) -> dict[str, Any]:
    """The results.csv row of the linear probe (train.probe.run_probe's result)."""
    row = {"preset": result["preset"], "seed": result["seed"], "protocol": result["protocol"]}
    for k, v in result["metrics"].items():
        if not isinstance(v, (list, dict)):
            row[k] = round(v, 4) if isinstance(v, float) else v
    row.update(train_seconds=round(float(result["train_seconds"]), 2), selected_epoch=0, epochs_run=0,
               run_dir=f"{result['preset']}-s{result['seed']}")
    return row


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "results.csv", buf.getvalue(), what="sweep results")
    write_text_atomic(out / "table.md", build_table(rows), what="sweep table")


def write_ablation(out_dir: str | Path, *, baseline: str, cache_path: str | Path, n_resamples: int = 1000,
                   seed: int = 0, log=print) -> dict[str, Any]:
    """Rewrite table.md with the ΔmAP-vs-``baseline`` column (issue 7) and write ablation.json.

    Every preset's saved evaluation scores (no retraining) are compared with the baseline's by a paired
    bootstrap over evaluation images (resampling the same images for both; seeds averaged per side), plus a
    paired test across seeds when there are >= 2 (evaluate.compare.sweep_ablation).
    """
    from iagcn.evaluate.compare import sweep_ablation
    from iagcn.evaluate.evaluation import EvalConfig

    out = Path(out_dir)
    result = sweep_ablation(out, baseline=baseline, cache_path=cache_path,
                            config=EvalConfig(n_resamples=n_resamples, seed=seed), log=log)
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    table = build_table(rows, baseline=baseline, deltas=result["deltas"],
                        seed_tests=result["seed_tests"] or None, ci=result["ci"])
    write_text_atomic(out / "table.md", table, what="sweep table")
    write_json_atomic(out / "ablation.json", {k: v for k, v in result.items() if k != "runs"}, what="sweep ablation")
    return result


def build_table(rows: list[dict[str, Any]], *, metrics: tuple[str, ...] = TABLE_METRICS, **report_options: Any) -> str:
    """Markdown table, one row per preset: mean ± std over seeds in the layout of the paper's Tables 3-6.

    ``rows``: results.csv rows (preset, seed, metric columns). ``report_options`` go to
    ``evaluate.report.ablation_table`` (``baseline``, ``deltas``, ``seed_tests``: the ΔmAP-vs-baseline hook).
    A legend maps presets to the paper's row names and states the model-selection protocol(s).
    """
    from iagcn.evaluate.report import ablation_table

    runs = [{"preset": r["preset"], "seed": r.get("seed"),
             "metrics": {m: (_num(r.get(m)) if _num(r.get(m)) is not None else math.nan) for m in metrics}}
            for r in rows]
    table = ablation_table(runs, metrics=metrics, fmt="markdown", **report_options)
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    protocols = sorted({str(r.get("protocol")) for r in rows if r.get("preset") != "linear-probe"})
    recipes = sorted({str(r.get("recipe")) for r in rows if r.get("recipe") not in (None, "", "probe")})
    legend = "; ".join(f"`{p}` = {PAPER_ROWS.get(p, p)}" for p in presets)
    return (table.rstrip("\n") + "\n\n" + f"Mean ± sample std over seeds. Rows: {legend}. "
            f"Recipe: {', '.join(recipes) or 'n/a'}. Model selection: {', '.join(protocols)}.\n")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parse_list(text: str, *, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise UserError(f"--{what} {text}: expected a comma-separated list of {cast.__name__}") from None
