"""Benchmarks 3 and 4: the training data path's read throughput, in RAM and streamed past a memory budget."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import Row, check, interleaved

BATCH = 32


def data_path_epoch(data, *, seed: int, batch_size: int = BATCH) -> float:
    """Seconds for one shuffled pass of ``train.data.CacheData.batches`` (float32 batches, as training sees them)."""
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for b in data.batches(None, batch_size=batch_size, shuffle=True, rng=rng, device="cpu"):
        pass
    return time.perf_counter() - t0


def numpy_gather_epoch(g32: np.ndarray, r32: np.ndarray, *, seed: int, batch_size: int = BATCH) -> float:
    """Seconds for one pass of plain NumPy gathers ``a[rows]`` of random batches from in-RAM float32 arrays."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(g32))
    t0 = time.perf_counter()
    for s in range(0, len(order), batch_size):
        rows = order[s:s + batch_size]
        g32[rows], r32[rows]                                                  # (b, D), (b, N, D) float32
    return time.perf_counter() - t0


def bench_cache_reads(cache_path: Path, *, repeats: int = 3, log=print) -> list[Row]:
    """Samples/s of the in-RAM training data path / samples/s of a NumPy gather from a float32 in-RAM array."""
    from iagcn.train.data import CacheData

    data = CacheData(cache_path, memory_budget_gib=64.0)
    assert data.in_memory
    g32 = data._global.astype(np.float32)                                    # (n, D) the features as float32
    r32 = data._regions.astype(np.float32)                                   # (n, N, D)
    g16, r16 = data._global, data._regions
    seeds = iter(range(10_000))

    def f16_gather() -> float:
        return numpy_gather_epoch(g16, r16, seed=next(seeds))

    res = interleaved({"data path": lambda: data_path_epoch(data, seed=next(seeds)),
                       "numpy gather f32": lambda: numpy_gather_epoch(g32, r32, seed=next(seeds)),
                       "numpy gather f16": f16_gather}, repeats=repeats)
    n = data.n
    data.close()
    del g32, r32
    sps = {k: n / v["median"] for k, v in res.items()}
    ratio = sps["data path"] / sps["numpy gather f32"]
    log(f"  reads: data path {sps['data path']:.0f}/s, numpy f32 gather {sps['numpy gather f32']:.0f}/s, "
        f"numpy f16 gather {sps['numpy gather f16']:.0f}/s -> {ratio:.2f}")
    return [Row(benchmark="3. cache reads (in RAM)", case=f"VOC-sized, batch {BATCH}, shuffled",
                numerator=f"data path {sps['data path']:.0f} img/s", denominator=f"NumPy gather (f32 array) "
                f"{sps['numpy gather f32']:.0f} img/s", ratio=ratio, target=">= 0.8", met=check(ratio, ">= 0.8"),
                details={"seconds": res, "samples_per_s": sps, "n": n,
                         "note": "data path: float16 rows gathered and converted into float32 batches; "
                                 "NumPy f16 gather (no conversion) given for reference"})]


_CHILD = r"""
import json, resource, sys, time
import numpy as np
from iagcn.train.data import CacheData
path, budget, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
t0 = time.perf_counter()
data = CacheData(path, memory_budget_gib=budget, block_rows=256, shuffle_buffer_blocks=8)
t_open = time.perf_counter() - t0
rng = np.random.default_rng(seed)
t0 = time.perf_counter()
seen = 0
for b in data.batches(None, batch_size=32, shuffle=True, rng=rng, device="cpu"):
    seen += len(b)
t = time.perf_counter() - t0
# VmHWM: this process's own peak resident set (ru_maxrss would carry the forking parent's peak across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) / 2**20 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"in_memory": data.in_memory, "open_s": t_open, "epoch_s": t, "samples": seen, "peak_rss_gib": peak}))
"""


def _child_epoch(path: Path, budget_gib: float, seed: int) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed iagcn.* package
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(budget_gib), str(seed)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_past_ram(cache_path: Path, *, budget_gib: float = 1.0, repeats: int = 2, log=print) -> list[Row]:
    """Streaming (cache > budget, file evicted from the page cache first) vs in RAM, each in a fresh subprocess
    whose peak RSS is reported. Throughput = samples / epoch seconds (loading into RAM not counted)."""
    from bench.caches import drop_from_page_cache
    from iagcn.cache.format import FeatureCache

    with FeatureCache(cache_path) as c:
        feature_gib = c.nbytes(("global", "regions")) / 2**30
    runs: dict[str, list[dict]] = {"stream": [], "ram": []}
    for r in range(repeats):
        dropped = drop_from_page_cache(cache_path)
        runs["stream"].append(_child_epoch(cache_path, budget_gib, seed=r))
        runs["ram"].append(_child_epoch(cache_path, 64.0, seed=r))
    assert all(not x["in_memory"] for x in runs["stream"]) and all(x["in_memory"] for x in runs["ram"])
    med = {k: float(np.median([x["samples"] / x["epoch_s"] for x in v])) for k, v in runs.items()}
    rss = {k: max(x["peak_rss_gib"] for x in v) for k, v in runs.items()}
    ratio = med["stream"] / med["ram"]
    rss_limit = budget_gib + 1.5
    log(f"  past RAM: stream {med['stream']:.0f}/s (peak RSS {rss['stream']:.2f} GiB), in RAM {med['ram']:.0f}/s "
        f"(peak RSS {rss['ram']:.2f} GiB) -> {ratio:.2f}")
    n = runs["ram"][0]["samples"]
    return [
        Row(benchmark="4. past RAM: throughput", case=f"{n} images, {feature_gib:.2f} GiB features, budget "
            f"{budget_gib:g} GiB, cold file", numerator=f"streaming {med['stream']:.0f} img/s",
            denominator=f"in RAM {med['ram']:.0f} img/s", ratio=ratio, target=">= 0.5", met=check(ratio, ">= 0.5"),
            details={"runs": runs, "page_cache_dropped": dropped, "feature_gib": feature_gib}),
        Row(benchmark="4. past RAM: peak RSS", case=f"streaming, budget {budget_gib:g} GiB",
            numerator=f"peak RSS {rss['stream']:.2f} GiB", denominator=f"limit budget + 1.5 = {rss_limit:g} GiB",
            ratio=rss["stream"] / rss_limit, target="<= 1.0", met=rss["stream"] <= rss_limit,
            details={"peak_rss_gib": rss}),
    ]
