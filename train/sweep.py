"""`iagcn sweep`: every preset x grid point x seed on caches loaded once; results.csv after every run.

A grid (``--grid FIELD=V1,V2``, :func:`parse_grid`) varies TrainConfig fields on top of the presets; every varied
field is a column of results.csv and names the run folders (:func:`run_name`). ``--jobs N`` trains independent runs
in N worker processes (:func:`run_sweep`), each on its own copy of the caches, with the same results as one by one.

The paper-layout table.md and the ΔmAP-vs-baseline comparison (ablation.json) are stage three's: the CLI layer
(``train/cli.py``) passes :func:`evaluate.ablation.write_sweep_table` as ``on_results`` and calls
:func:`evaluate.ablation.write_ablation` after the sweep, so training never imports evaluation.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import check_writable_dir, exclusive_lock, interrupt_hint, write_text_atomic
from iagcn.train import runfolder
from iagcn.train.config import TrainConfig, execution_fields, recorded_config
from iagcn.train.data import CacheData
from iagcn.train.run import check_run_inputs, train_run


#: what an earlier invocation wrote that this one may not rewrite (evaluate.ablation.write_ablation writes them
#: after the runs when the baseline is swept): removed when a sweep starts, so none is left stale under its name
PREVIOUS_INVOCATION_FILES = ("ablation.json", "ablation.md")


# -- grids over config fields -----------------------------------------------------------------------------
#: fields a grid may not vary, and the option that sets them
GRID_AXES = {"preset": "--presets", "seed": "--seeds", "recipe": "--recipe"}


def value_text(value: Any) -> str:
    """A field value as a results.csv cell and in a run name: what ``--set`` reads back (``0.5``, ``true``,
    ``null``, ``16,32``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return ",".join(value_text(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def parse_grid(specs: Sequence[str], *, fixed: Mapping[str, str] | None = None) -> dict[str, list[Any]]:
    """``--grid FIELD=V1,V2`` options -> ``{field: [values]}`` in the order given.

    Values are parsed as ``--set`` parses them (:func:`iagcn.configio.parse_field_value`); a tuple field's values
    are separated by ``;`` (``gcn_widths=512,1024;1024``). Refused, each in one line: an unknown field, the
    sweep's own axes (:data:`GRID_AXES`), an execution-only field (it changes how a run executes, never its
    result), a field given twice or also set by another option (``fixed``: field -> that option), fewer than two
    values, a value listed twice.
    """
    import typing

    from iagcn.configio import parse_field_value

    hints = typing.get_type_hints(TrainConfig)
    fixed = dict(fixed or {})
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        if "=" not in spec:
            raise UserError(f"--grid {spec!r}: expected FIELD=V1,V2 (e.g. --grid fusion_lambda=0.5,0.8)")
        key, text = (t.strip() for t in spec.split("=", 1))
        key = key.replace("-", "_")
        if key in GRID_AXES:
            raise UserError(f"--grid {spec}: {key} is an axis of every sweep; set it with {GRID_AXES[key]}")
        if key in execution_fields():
            raise UserError(f"--grid {spec}: {key} is execution-only (how a run executes, not what it computes): "
                            f"its runs would be one experiment; set it with --set {key}=... instead")
        if key in grid:
            raise UserError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2")
        if key in fixed:
            raise UserError(f"--grid {spec}: {key} is also set by {fixed[key]}; drop one of them")
        origin = typing.get_origin(hints.get(key))
        is_tuple = origin in (tuple, list) or "tuple" in str(hints.get(key, ""))
        items = [t.strip() for t in text.split(";" if is_tuple else ",") if t.strip()]
        values = [parse_field_value(TrainConfig, key, t, option="--grid") for t in items]
        if len(values) < 2:
            raise UserError(f"--grid {spec}: give two or more values separated by "
                            f"{'; (a tuple field)' if is_tuple else 'commas'}, or set one value with --set")
        texts = [value_text(v) for v in values]
        dup = sorted({t for t in texts if texts.count(t) > 1})
        if dup:
            raise UserError(f"--grid {spec}: {', '.join(dup)} listed more than once; each value once")
        grid[key] = values
    return grid


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of a grid, the first field varying slowest; ``[{}]`` for no grid."""
    fields = list(grid)
    return [dict(zip(fields, combo)) for combo in itertools.product(*(grid[f] for f in fields))]


def sweep_configs(base: Callable[[str], TrainConfig], presets: Sequence[str], seeds: Sequence[int],
                  grid: Mapping[str, Sequence[Any]] | None = None) -> list[TrainConfig]:
    """Every preset x grid point x seed, in that order (``base(preset)``: the preset's resolved config). A grid
    value the config does not read (``lr_step`` under the cosine schedule) is refused, as such an option is."""
    from iagcn.train.config import unused_fields

    out = []
    for preset in presets:
        cfg = base(preset)
        for point in grid_points(grid or {}):
            for seed in seeds:
                run = dataclasses.replace(cfg, seed=seed, **point)
                unused = {k: why for k, why in unused_fields(run).items() if k in point}
                for key, why in unused.items():
                    raise UserError(f"--grid {key}={','.join(value_text(v) for v in grid[key])}: {why}; drop it")
                out.append(run)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", text.replace(",", "x"))


def run_name(cfg: TrainConfig, varied: Sequence[str] = ()) -> str:
    """The run folder of ``cfg`` in a sweep: ``<preset>-s<seed>``, with a grid
    ``<preset>-<field>=<value>-...-s<seed>`` (``iagcn-fusion_lambda=0.5-s0``; tuples as ``16x32``)."""
    return "-".join([cfg.preset, *(f"{f}={_slug(value_text(getattr(cfg, f)))}" for f in varied), f"s{cfg.seed}"])


def run_names(configs: Sequence[TrainConfig], varied: Sequence[str] = ()) -> list[str]:
    """:func:`run_name` of every config; two configs that would share a folder are refused."""
    names = [run_name(c, varied) for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"sweep: runs {', '.join(dup)} would share a folder (a value listed twice, or two values "
                        f"that read the same); list each preset, seed and grid value once")
    return names


def run_sweep(configs: Iterable[TrainConfig], *, train_data: CacheData, eval_data: CacheData, out_dir: str | Path,
              progress: bool = True, log=print,
              on_results: Callable[[Path, list[dict[str, Any]]], None] | None = None,
              probe: bool = True, varied: Sequence[str] = (), jobs: int = 1,
              devices: Sequence[str] = (), wide_probe: bool = False) -> list[dict[str, Any]]:
    """Train every config (one per preset x grid point x seed) into out_dir/:func:`run_name`/; complete runs are
    skipped, interrupted ones resume. ``varied``: the grid's fields (run names and results.csv columns). With
    ``probe`` the `linear-probe` reference (train.probe) is fitted first into out_dir/linear-probe-s0/, with
    ``wide_probe`` the `wide-probe` one (x and max-pooled ROIs) into out_dir/wide-probe-s0/. Writes
    results.csv (rows in config order) after every run, then calls ``on_results(out, rows)`` (the CLI passes the
    table.md writer); returns the rows.

    ``jobs`` > 1: the runs to train go to that many worker processes (spawned; each loads the caches once and uses
    total threads // jobs torch threads); ``devices`` (e.g. ``cuda:0,cuda:1``): worker slot k trains on
    ``devices[k % len(devices)]`` (:func:`slot_devices`). Each run computes what it computes alone: the results
    equal a sequential sweep's."""
    configs = list(configs)
    names = run_names(configs, varied)
    for config in configs:  # every refusal before the sweep folder exists
        check_run_inputs(config, train_data=train_data, eval_data=eval_data)
    if probe or wide_probe:
        from iagcn.train.probe import check_probe_inputs

        check_probe_inputs(train_data)
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be >= 1")
    slots = slot_devices(jobs, devices)
    out = check_writable_dir(out_dir, what="the sweep", option="--out")
    with exclusive_lock(out, what="sweep directory", inside="sweep"), \
            interrupt_hint(lambda: f"interrupted: {sum(runfolder.is_complete(out / n) for n in names)}"
                                   f"/{len(configs)} runs complete in {out}; rerun the same `iagcn sweep` command to "
                                   f"resume (the interrupted run continues from its last epoch)"):
        return _run_sweep_locked(configs, names, train_data, eval_data, out, progress, log, on_results, probe,
                                 list(varied), slots, wide_probe)


def slot_devices(jobs: int, devices: Sequence[str] = ()) -> list[str | None]:
    """The device of each of ``jobs`` worker slots: ``devices`` round-robin (slot k: ``devices[k % len]``), or
    None (each run's own ``device``) without ``devices``. A slot trains one run at a time."""
    return [devices[k % len(devices)] if devices else None for k in range(jobs)]


def _run_sweep_locked(configs, names, train_data, eval_data, out: Path, progress, log, on_results,
                      probe, varied, slots, wide_probe=False) -> list[dict[str, Any]]:
    for name in PREVIOUS_INVOCATION_FILES:   # an earlier sweep's comparison: rewritten only if this one makes one
        (out / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    dirs = [out / n for n in names]
    results: dict[int, dict[str, Any]] = {}
    measured: dict[str, tuple[float, float]] = {}      # preset -> (train seconds, epochs) of finished runs
    head: list[dict[str, Any]] = []
    if probe:
        from iagcn.train.probe import PROBE_NAME, run_probe

        log(f"{PROBE_NAME}: fitting the reference (LogisticRegression on x, C by cross-validation) before the "
            f"{len(configs)} run(s)")
        result = run_probe(train_data, eval_data, out / f"{PROBE_NAME}-s0", log=log)
        head.append(probe_row(result))
    if wide_probe:
        from iagcn.train.probe import WIDE_PROBE_NAME, run_probe

        result = run_probe(train_data, eval_data, out / f"{WIDE_PROBE_NAME}-s0", log=log, features="wide")
        head.append(probe_row(result))

    def rows() -> list[dict[str, Any]]:
        return head + [result_row(results[k], configs[k], dirs[k], varied) for k in sorted(results)]

    def publish() -> None:
        current = rows()
        write_results(out, current)
        if on_results is not None:
            on_results(out, current)

    def finished(i: int, result: dict[str, Any]) -> None:
        results[i] = result
        _measure(measured, configs[i].preset, result)

    todo = []
    for i, (cfg, run_dir) in enumerate(zip(configs, dirs)):
        if runfolder.is_complete(run_dir):
            _refuse_other_config(run_dir, cfg)
            runfolder.check_same_caches(run_dir, train_data.cache, eval_data.cache,
                                        action=f"sweep --out {out}: reusing complete run {run_dir.name}")
            log(f"[{i + 1}/{len(configs)}] {run_dir.name}: complete, skipped")
            finished(i, runfolder.read_metrics(run_dir))
        else:
            todo.append(i)
    if not todo:
        publish()

    def start_line(i: int, waiting: Sequence[int], device: str | None) -> str:
        left = [(configs[k].preset, _epochs_left(configs[k], dirs[k])) for k in waiting]
        on = f" on {device}" if device else ""
        return (f"[{i + 1}/{len(configs)}] {dirs[i].name}: training{on} ({fmt_duration(time.perf_counter() - t0)} "
                f"into the sweep; {sweep_eta(left, measured, jobs=len(slots))})")

    if len(slots) == 1 and slots[0] is None:           # one by one, in this process (the caches loaded once)
        for n, i in enumerate(todo):
            log(start_line(i, todo[n:], None))
            result = train_run(configs[i], train_data=train_data, eval_data=eval_data, out_dir=dirs[i],
                               resume=runfolder.checkpoint_path(dirs[i], "last").exists(), progress=progress,
                               log=log, resume_command="rerun the same `iagcn sweep` command to resume",
                               caller=f"sweep --out {out}: continuing the interrupted run {dirs[i].name}")
            finished(i, result)
            publish()
    elif todo:
        def done(i: int, result: dict[str, Any]) -> None:
            finished(i, result)
            publish()

        _run_parallel(configs, dirs, todo, slots, train_data, eval_data, progress=progress, log=log,
                      start_line=start_line, finished=done)
    log(f"sweep: {len(configs)} run(s) in {out}, {len(todo)} trained in {fmt_duration(time.perf_counter() - t0)}")
    return rows()


def _measure(measured: dict[str, tuple[float, float]], preset: str, result: Mapping[str, Any]) -> None:
    """Add a finished run's train seconds and epochs to its preset's total (what the ETA is weighted by)."""
    try:
        seconds, epochs = float(result["train_seconds"]), float(result["epochs_run"])
    except (KeyError, TypeError, ValueError):
        return
    if epochs > 0 and seconds > 0:
        s, e = measured.get(preset, (0.0, 0.0))
        measured[preset] = (s + seconds, e + epochs)


def _epochs_left(cfg: TrainConfig, run_dir: Path) -> int:
    """Epochs a run still has to train: its config's epochs minus those its log.csv already holds (a resume)."""
    log_file = runfolder.log_path(run_dir)
    done = max(0, len(log_file.read_text().splitlines()) - 1) if log_file.exists() else 0
    return max(0, cfg.epochs - done)


# -- worker processes (--jobs N) ------------------------------------------------------------------------------
_WORKER_DATA: dict[tuple, tuple[CacheData, CacheData]] = {}     # a worker's open caches, loaded once


def _equivalent_budget(data: CacheData) -> float:
    """A memory budget (GiB) under which a worker loads ``data``'s cache the way ``data`` holds it (in RAM as
    float32 / float16, or streamed): the same batches, hence the same results."""
    if not data.in_memory:
        return 0.0
    factor = 2 if data.memory_dtype == np.float32 else 1
    return factor * data.feature_bytes / 2**30


def _data_spec(data: CacheData) -> tuple:
    return (str(data.path), _equivalent_budget(data), data.block_rows, data.shuffle_buffer_blocks)


def _open_spec(spec: tuple) -> CacheData:
    path, budget, block_rows, shuffle_blocks = spec
    return CacheData(path, memory_budget_gib=budget, block_rows=block_rows, shuffle_buffer_blocks=shuffle_blocks)


def _worker_init() -> None:
    """A sweep worker: dies with its parent, leaves Ctrl-C to it (:func:`iagcn.processes.worker_setup`), and
    gives tqdm a thread lock (its default multiprocessing lock would be reported leaked when a worker is stopped)."""
    import threading

    from tqdm import tqdm

    from iagcn.processes import worker_setup

    worker_setup()
    tqdm.set_lock(threading.RLock())


def _worker_train(task: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process (top level: spawn pickles it by name); the caches stay open between runs."""
    key = (task["train"], task["eval"])
    if key not in _WORKER_DATA:
        for opened in _WORKER_DATA.values():
            for d in opened:
                d.close()
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = (_open_spec(task["train"]), _open_spec(task["eval"]))
    train_data, eval_data = _WORKER_DATA[key]
    run_dir = Path(task["run_dir"])

    def log(message: str) -> None:
        if not task["quiet"]:
            print(f"  {run_dir.name}: {message}", file=sys.stderr, flush=True)

    return train_run(task["config"], train_data=train_data, eval_data=eval_data, out_dir=run_dir,
                     resume=runfolder.checkpoint_path(run_dir, "last").exists(), progress=False, log=log,
                     resume_command="rerun the same `iagcn sweep` command to resume",
                     caller=f"sweep --out {run_dir.parent}: continuing the interrupted run {run_dir.name}")


def worker_threads(total: int, jobs: int) -> int:
    """torch threads of each of ``jobs`` workers sharing ``total`` threads (at least one)."""
    return max(1, total // max(1, jobs))


def _run_parallel(configs, dirs, todo, slots, train_data, eval_data, *, progress, log, start_line, finished,
                  work: Callable[[dict[str, Any]], dict[str, Any]] = _worker_train) -> None:
    """Train the runs ``todo`` in len(slots) spawned worker processes, at most one run per slot at a time
    (``work``: the function a worker runs per task, :func:`_worker_train`)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    import torch

    from iagcn.processes import raise_if_interrupted

    threads = worker_threads(configs[todo[0]].num_threads or torch.get_num_threads(), len(slots))
    spec = {"train": _data_spec(train_data), "eval": _data_spec(eval_data), "quiet": not progress}
    pending, free = deque(todo), list(range(len(slots)))
    inflight: dict[Any, tuple[int, int]] = {}
    pool = ProcessPoolExecutor(max_workers=min(len(slots), len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init)
    try:
        while pending or inflight:
            while pending and free:
                slot, i = free.pop(0), pending.popleft()
                changes: dict[str, Any] = {"num_threads": threads}
                if slots[slot] is not None:
                    changes["device"] = slots[slot]
                cfg = dataclasses.replace(configs[i], **changes)
                log(start_line(i, [i, *pending, *(k for k, _ in inflight.values())], cfg.device))
                inflight[pool.submit(work, {**spec, "config": cfg, "run_dir": str(dirs[i])})] = (i, slot)
            done, _ = wait(list(inflight), timeout=0.2, return_when=FIRST_COMPLETED)
            raise_if_interrupted()
            for job in done:
                i, slot = inflight.pop(job)
                try:
                    result = job.result()               # a worker's error (a UserError) is raised here
                except BrokenProcessPool as e:
                    raise UserError(f"a worker process died while training {dirs[i].name} (killed, or out of "
                                    f"memory?); rerun the same `iagcn sweep` command to resume, with fewer --jobs "
                                    f"if memory is short") from e
                free.append(slot)
                log(f"[{i + 1}/{len(configs)}] {dirs[i].name}: done in {fmt_duration(float(result['train_seconds']))}")
                finished(i, result)
    except BaseException:
        # an error or an interrupt: stop the other runs at once (each resumes from its last epoch)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_seconds(remaining: Sequence[tuple[str, float]], measured: Mapping[str, tuple[float, float]], *,
                jobs: int = 1) -> float | None:
    """Seconds the runs still to train will take: each run's epochs left times its preset's measured seconds per
    epoch (``measured``: preset -> (train seconds, epochs) of its finished runs); a preset not measured yet takes
    the seconds per epoch of all measured runs together. With ``jobs`` workers the work is shared, but it never
    ends before its longest run. None before anything was measured.

    ``remaining``: (preset, epochs left) of every run still to train."""
    rates = {p: s / e for p, (s, e) in measured.items() if e > 0}
    if not rates:
        return None
    fallback = sum(s for s, _ in measured.values()) / sum(e for _, e in measured.values())
    per_run = [rates.get(p, fallback) * e for p, e in remaining]
    if not per_run:
        return 0.0
    return max(sum(per_run) / max(1, jobs), max(per_run))


def sweep_eta(remaining: Sequence[tuple[str, float]], measured: Mapping[str, tuple[float, float]], *,
              jobs: int = 1) -> str:
    """The overall ETA of a sweep's progress line (:func:`eta_seconds`), weighted by each preset's measured cost;
    presets not timed yet are named (their share is a rough figure)."""
    if not remaining:
        return "nothing left to train"
    eta = eta_seconds(remaining, measured, jobs=jobs)
    if eta is None:
        return f"{len(remaining)} run(s) to train, ETA after the first"
    rough = sorted({p for p, _ in remaining} - set(measured))
    note = f" (rough: {', '.join(rough)} not timed yet)" if rough else ""
    return f"{len(remaining)} run(s) to train, ETA {fmt_duration(eta)}{note}"


def _refuse_other_config(run_dir: Path, cfg: TrainConfig) -> None:
    """A complete run trained with other settings must not slip into this sweep's table (execution fields such as
    the device or the thread count may differ: they do not change what a run computes)."""
    saved = runfolder.read_record(run_dir, option="sweep run")["config"]
    diff = recorded_config(saved, source=str(run_dir / runfolder.CONFIG)).identity_diff(cfg)
    if diff:
        raise UserError(f"{run_dir}: a complete run with a different config ({', '.join(diff)}) is already there; "
                        f"use another sweep --out or delete that folder")


def result_row(result: dict[str, Any], cfg: TrainConfig, run_dir: Path, varied: Sequence[str] = ()) -> dict[str, Any]:
    """One results.csv row: preset, the varied fields' values, seed, protocol, every metric, train seconds,
    selected epoch, run dir."""
    row = {"preset": cfg.preset, **{f: value_text(getattr(cfg, f)) for f in varied}, "seed": cfg.seed,
           "recipe": cfg.recipe, "protocol": result["protocol"]}
    for k, v in result["metrics"].items():
        if not isinstance(v, (list, dict)):
            row[k] = round(v, 4) if isinstance(v, float) else v
    row.update(train_seconds=round(float(result["train_seconds"]), 2), selected_epoch=result["selected_epoch"],
               epochs_run=result["epochs_run"], run_dir=run_dir.name)
    legacy = result.get("legacy")                     # legacy_report: the same run, its epoch chosen on the eval cache
    if legacy is not None and legacy.get("metrics"):
        row.update(legacy_mAP=round(float(legacy["metrics"]["mAP"]), 4), legacy_selected_epoch=legacy["selected_epoch"])
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
    for r in sorted(rows, key=len, reverse=True):      # a run's row first: the probe's lacks the varied fields
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
