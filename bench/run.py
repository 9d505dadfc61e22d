"""Run the benchmark suite: ``python -m bench.run [--only NAME,...] [--quick]`` (``make bench``).

Benchmarks (see docs/performance.md): extract, decode, train, reads, pastram, sweep, rpn. Writes
bench/results/latest.json (machine info + every row with its raw samples) and bench/results/latest.md,
and prints the table. Scratch caches and images go to $IAGCN_BENCH_DIR (default /tmp/iagcn-bench).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

BENCHMARKS = ("extract", "decode", "train", "reads", "pastram", "sweep", "rpn")

#: sizes of the full run and of --quick (a smoke run: every path, smaller shapes; its figures are not the targets')
SIZES = {
    "full": {"voc_n": 5011, "coco_n": 200, "extract_n": {"efficientnet-lite0": 24, "resnet101": 8},
             "extract_repeats": 2, "train_repeats": 3, "reads_repeats": 3, "pastram_n": 20000, "pastram_dim": 1024,
             "pastram_budget": 1.0, "pastram_repeats": 2, "sweep_train_n": 256, "sweep_eval_n": 128,
             "sweep_epochs": 2, "sweep_seeds": (0, 1, 2), "decode_n": 128, "decode_repeats": 2, "rpn_n": 8},
    "quick": {"voc_n": 1000, "coco_n": 64, "extract_n": {"efficientnet-lite0": 8, "resnet101": 2},
              "extract_repeats": 1, "train_repeats": 1, "reads_repeats": 2, "pastram_n": 4000, "pastram_dim": 512,
              "pastram_budget": 0.1, "pastram_repeats": 1, "sweep_train_n": 96, "sweep_eval_n": 48,
              "sweep_epochs": 1, "sweep_seeds": (0,), "decode_n": 32, "decode_repeats": 1, "rpn_n": 2},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    ap.add_argument("--quick", action="store_true", help="smaller shapes: a smoke run of every path, not the targets")
    ap.add_argument("--stem", default="latest", help="results file names bench/results/<stem>.{json,md} [latest]")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)), help="torch threads [2]")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or list(BENCHMARKS)
    unknown = [s for s in only if s not in BENCHMARKS]
    if unknown:
        ap.error(f"--only {','.join(unknown)}: unknown; choose from {','.join(BENCHMARKS)}")

    import torch

    torch.set_num_threads(args.threads)
    from bench import caches
    from bench.harness import machine_info, markdown_table, write_results

    S = SIZES["quick" if args.quick else "full"]
    info = machine_info()
    info.update(note=os.environ.get("BENCH_NOTE", ""), quick=args.quick, benchmarks=only, sizes={k: (list(v) if isinstance(v, tuple) else v)
                                                          for k, v in S.items()})
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    rows, failures, t_all = [], {}, time.perf_counter()
    timings = {}
    for name in only:
        t0 = time.perf_counter()
        log(f"[bench] {name} ...")
        try:
            rows += _run_one(name, S, caches, log)
        except Exception as e:  # noqa: BLE001 -- one failing benchmark must not lose the others' figures
            failures[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        timings[name] = round(time.perf_counter() - t0, 1)
        log(f"[bench] {name}: {timings[name]:.0f} s")
    info.update(total_seconds=time.perf_counter() - t_all, seconds_per_benchmark=timings, failures=failures)
    js, md = write_results(rows, info, stem=args.stem)
    print(markdown_table(rows, info))
    print(f"wrote {js} and {md}")
    for name, err in failures.items():
        print(f"FAILED {name}: {err}")
    return 1 if failures else 0


def _run_one(name: str, S: dict, caches, log) -> list:
    if name == "extract":
        from bench.extraction import bench_extraction

        return bench_extraction(n_images=S["extract_n"], repeats=S["extract_repeats"], log=log)
    if name == "decode":
        from bench.extraction import bench_decode

        return bench_decode(n=S["decode_n"], repeats=S["decode_repeats"], log=log)
    if name == "rpn":
        from bench.extraction import bench_rpn

        return bench_rpn(n=S["rpn_n"], repeats=S["extract_repeats"], log=log)
    if name == "train":
        from bench.training import bench_head_training

        voc = caches.fake_cache(f"voc-{S['voc_n']}", n=S["voc_n"], num_classes=20, log=log)
        coco = caches.fake_cache(f"coco-{S['coco_n']}", n=S["coco_n"], num_classes=80, log=log)
        return (bench_head_training(voc, label=f"VOC-sized (n {S['voc_n']}, N 40, D 2048, C 20)",
                                    repeats=S["train_repeats"], log=log)
                + bench_head_training(coco, label=f"COCO-shaped (n {S['coco_n']}, N 40, D 2048, C 80)",
                                      repeats=S["train_repeats"], log=log))
    if name == "reads":
        from bench.reads import bench_cache_reads

        voc = caches.fake_cache(f"voc-{S['voc_n']}", n=S["voc_n"], num_classes=20, log=log)
        return bench_cache_reads(voc, repeats=S["reads_repeats"], log=log)
    if name == "pastram":
        from bench.reads import bench_past_ram

        big = caches.fake_cache(f"pastram-{S['pastram_n']}-{S['pastram_dim']}", n=S["pastram_n"],
                                dim=S["pastram_dim"], log=log)
        return bench_past_ram(big, budget_gib=S["pastram_budget"], repeats=S["pastram_repeats"], log=log)
    if name == "sweep":
        from bench.training import bench_sweep

        tr = caches.fake_cache(f"sweep-train-{S['sweep_train_n']}", n=S["sweep_train_n"], log=log)
        ev = caches.fake_cache(f"sweep-eval-{S['sweep_eval_n']}", n=S["sweep_eval_n"], seed=1, split="test", log=log)
        return bench_sweep(tr, ev, epochs=S["sweep_epochs"], seeds=S["sweep_seeds"],
                           label=f"VOC-shaped train n {S['sweep_train_n']} / eval n {S['sweep_eval_n']}", log=log)
    raise ValueError(name)


if __name__ == "__main__":
    sys.exit(main())
