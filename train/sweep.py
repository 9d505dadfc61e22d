"""`iagcn sweep`: every preset x seed on caches loaded once; results.csv after every run.

The paper-layout table.md and the ΔmAP-vs-baseline comparison (ablation.json) are stage three's: the CLI layer
(``train/cli.py``) passes :func:`evaluate.ablation.write_sweep_table` as ``on_results`` and calls
:func:`evaluate.ablation.write_ablation` after the sweep, so training never imports evaluation.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from iagcn.errors import UserError
from iagcn.fsutil import check_writable_dir, exclusive_lock, interrupt_hint, write_text_atomic
from iagcn.train import runfolder
from iagcn.train.config import TrainConfig, recorded_config
from iagcn.train.data import CacheData
from iagcn.train.run import check_run_inputs, train_run


#: what an earlier invocation wrote that this one may not rewrite (evaluate.ablation.write_ablation writes them
#: after the runs when the baseline is swept): removed when a sweep starts, so none is left stale under its name
PREVIOUS_INVOCATION_FILES = ("ablation.json", "ablation.md")


def run_dir_for(out: Path, preset: str, seed: int) -> Path:
    return out / f"{preset}-s{seed}"


def run_sweep(configs: Iterable[TrainConfig], *, train_data: CacheData, eval_data: CacheData, out_dir: str | Path,
              progress: bool = True, log=print,
              on_results: Callable[[Path, list[dict[str, Any]]], None] | None = None,
              probe: bool = True) -> list[dict[str, Any]]:
    """Train every config (one per preset x seed) into out_dir/<preset>-s<seed>/; complete runs are skipped,
    interrupted ones resume. With ``probe`` the `linear-probe` reference (train.probe) is fitted first into
    out_dir/linear-probe-s0/. Writes results.csv after every run, then calls ``on_results(out, rows)`` (the CLI
    passes the table.md writer); returns the rows."""
    configs = list(configs)
    for config in configs:  # every refusal before the sweep folder exists
        check_run_inputs(config, train_data=train_data, eval_data=eval_data)
    if probe:
        from iagcn.train.probe import check_probe_inputs

        check_probe_inputs(train_data)
    out = check_writable_dir(out_dir, what="the sweep", option="--out")
    with exclusive_lock(out, what="sweep directory", inside="sweep"), \
            interrupt_hint(lambda: f"interrupted: {sum(runfolder.is_complete(run_dir_for(out, c.preset, c.seed)) for c in configs)}"
                                   f"/{len(configs)} runs complete in {out}; rerun the same `iagcn sweep` command to "
                                   f"resume (the interrupted run continues from its last epoch)"):
        return _run_sweep_locked(configs, train_data, eval_data, out, progress, log, on_results, probe)


def _run_sweep_locked(configs, train_data, eval_data, out: Path, progress, log, on_results,
                      probe=True) -> list[dict[str, Any]]:
    for name in PREVIOUS_INVOCATION_FILES:   # an earlier sweep's comparison: rewritten only if this one makes one
        (out / name).unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    todo = [not runfolder.is_complete(run_dir_for(out, c.preset, c.seed)) for c in configs]
    trained_s: list[float] = []                       # wall seconds of each run trained in this call
    if probe:
        from iagcn.train.probe import PROBE_NAME, run_probe

        result = run_probe(train_data, eval_data, out / f"{PROBE_NAME}-s0", log=log)
        rows.append(probe_row(result))
    for i, cfg in enumerate(configs):
        run_dir = run_dir_for(out, cfg.preset, cfg.seed)
        if runfolder.is_complete(run_dir):
            _refuse_other_config(run_dir, cfg)
            runfolder.check_same_caches(run_dir, train_data.cache, eval_data.cache,
                                        action=f"sweep --out {out}: reusing complete run {run_dir.name}")
            log(f"[{i + 1}/{len(configs)}] {run_dir.name}: complete, skipped")
            result = runfolder.read_metrics(run_dir)
        else:
            log(f"[{i + 1}/{len(configs)}] {run_dir.name}: training ({fmt_duration(time.perf_counter() - t0)} into "
                f"the sweep; {sweep_eta(trained_s, sum(todo[i:]))})")
            t_run = time.perf_counter()
            result = train_run(cfg, train_data=train_data, eval_data=eval_data, out_dir=run_dir,
                               resume=runfolder.checkpoint_path(run_dir, "last").exists(), progress=progress, log=log,
                               resume_command="rerun the same `iagcn sweep` command to resume",
                               caller=f"sweep --out {out}: continuing the interrupted run {run_dir.name}")
            trained_s.append(time.perf_counter() - t_run)
        rows.append(result_row(result, cfg, run_dir))
        write_results(out, rows)
        if on_results is not None:
            on_results(out, rows)
    log(f"sweep: {len(configs)} run(s) in {out}, {len(trained_s)} trained in {fmt_duration(time.perf_counter() - t0)}")
    return rows


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def sweep_eta(trained_s: list[float], remaining: int) -> str:
    """The overall ETA: the mean wall time of the runs trained so far times the runs still to train (this one
    included). Presets differ in cost, so it is a rough figure until every preset has run once."""
    if remaining <= 0:
        return "nothing left to train"
    if not trained_s:
        return f"{remaining} run(s) to train, ETA after the first"
    eta = sum(trained_s) / len(trained_s) * remaining
    return f"{remaining} run(s) to train, ETA {fmt_duration(eta)}"


def _refuse_other_config(run_dir: Path, cfg: TrainConfig) -> None:
    """A complete run trained with other settings must not slip into this sweep's table (execution fields such as
    the device or the thread count may differ: they do not change what a run computes)."""
    saved = runfolder.read_record(run_dir, option="sweep run")["config"]
    diff = recorded_config(saved, source=str(run_dir / runfolder.CONFIG)).identity_diff(cfg)
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
    row = {"preset": result["preset"], "seed": result["seed"], "recipe": "probe", "protocol": result["protocol"]}
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


def parse_list(text: str, *, what: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} is empty; give a comma-separated list")
    try:
        values = [cast(t) for t in items]
    except ValueError:
        raise UserError(f"--{what} {text}: expected a comma-separated list of {cast.__name__}") from None
    dup = sorted({str(v) for v in values if values.count(v) > 1})
    if dup:
        raise UserError(f"--{what} {text}: {', '.join(dup)} listed more than once; one run counts once (a "
                        f"repeated {what[:-1]} would be counted as two)")
    return values
