"""What every benchmark shares: interleaved timing with medians, machine facts, the results files.

These machines are shared and noisy, so every figure is a *ratio* whose numerator and denominator are
measured in the same run, interleaved (numerator, denominator, numerator, ...), each the median of its
repeats.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(measures: dict[str, Callable[[], float]], *, repeats: int) -> dict[str, dict[str, Any]]:
    """Call each measure (returning seconds) once per round, in order, for ``repeats`` rounds.

    Returns name -> {"median": s, "samples": [s, ...]}.
    """
    samples: dict[str, list[float]] = {k: [] for k in measures}
    for _ in range(repeats):
        for name, fn in measures.items():
            samples[name].append(float(fn()))
    return {k: {"median": statistics.median(v), "samples": [round(x, 6) for x in v]} for k, v in samples.items()}


@dataclass
class Row:
    """One line of the results table: ``ratio = numerator / denominator`` against a target."""

    benchmark: str                  # e.g. "2. head training vs floor"
    case: str                       # e.g. "iagcn, VOC-sized"
    numerator: str                  # what the numerator is, with its value and unit
    denominator: str                # same for the denominator
    ratio: float | None
    target: str                     # e.g. "<= 2.0"; "" when only reported
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


def check(ratio: float | None, target: str) -> bool | None:
    """Whether ``ratio`` meets ``target`` ("<= x" or ">= x"); None without a target or ratio."""
    if ratio is None or not target:
        return None
    op, value = target.split()
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


def machine_info() -> dict[str, Any]:
    import torch

    from iagcn.fsutil import git_commit

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    return {
        "code_sources": code_sources(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "memory_gib": mem_gib,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def code_sources() -> dict[str, str]:
    """Where each stage package was imported from, and that folder's git commit (provenance of the figures)."""
    import importlib
    import subprocess

    out = {}
    for pkg in ("bench", "cache", "extract", "train"):
        try:
            folder = Path(importlib.import_module(pkg).__file__).resolve().parent
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                                 timeout=5).stdout.strip() or "unknown"
            out[pkg] = f"{folder} @ {sha}"
        except Exception as e:  # noqa: BLE001
            out[pkg] = f"unavailable ({type(e).__name__})"
    return out


def fmt_ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}"


def markdown_table(rows: list[Row], info: dict[str, Any]) -> str:
    head = ["benchmark", "case", "numerator", "denominator", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append("| " + " | ".join([r.benchmark, r.case, r.numerator, r.denominator, fmt_ratio(r.ratio),
                                         r.target or "(reported)", met]) + " |")
    lines.append("")
    lines.append(f"{info.get('date')} · commit {str(info.get('git_commit'))[:10]} · torch {info.get('torch')} · "
                 f"{info.get('torch_threads')} threads · {info.get('cpu')} ({info.get('logical_cpus')} logical CPUs, "
                 f"{info.get('memory_gib')} GiB) · load average at start {info.get('load_average_at_start')} · "
                 f"total {info.get('total_seconds', 0):.0f} s{' · --quick' if info.get('quick') else ''}")
    return "\n".join(lines) + "\n"


def write_results(rows: list[Row], info: dict[str, Any], *, out_dir: Path = RESULTS_DIR, stem: str = "latest") -> tuple[Path, Path]:
    """Write ``<stem>.json`` (machine info + every row with its raw samples) and ``<stem>.md`` atomically."""
    from iagcn.fsutil import write_json_atomic, write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json_atomic(js, {"machine": info, "rows": [asdict(r) for r in rows]}, what="benchmark results")
    write_text_atomic(md, markdown_table(rows, info), what="benchmark table")
    return js, md
