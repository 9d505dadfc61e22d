"""The real-photo benchmark (``make bench-real VOC_ROOT=...``): the paper's ablation on genuine VOC photos.

    python -m bench.real --voc-root VOCdevkit/VOC2007 [--source-split trainval] [--test-fraction 0.2]
        [--split-seed 0] [--seeds 0,1,2,3,4] [--presets ...] [--work DIR] [--stem real-voc07]

1. Split: the ids of ``<root>/ImageSets/Main/<source-split>.txt`` into a seeded, label-stratified train / test
   pair (``evaluate.stats.stratified_holdout``). The root may be read-only: the split files go into a work
   folder that links the root's JPEGImages/ and Annotations/ (nothing is copied).
2. Extract: both splits with the offline defaults (EfficientNet-Lite0 + selective search), ``iagcn extract``
   (resumable: a rerun reuses finished caches and parts).
3. Sweep: every preset x seed with the default (frozen) recipe, the linear-probe reference, and the ΔmAP vs
   ``--baseline`` column (paired bootstrap over test images, seeds averaged per side).
4. Write ``bench/results/<stem>.json`` (split, times, every run's metrics, the deltas) and ``<stem>.md``.

Every figure comes from this run; a number the tool cannot compute is refused, not printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PRESETS = "resnet,mlgcn,idlcm,idlcm-vi,iagcn,comsco,mlgcn-comsco,mlgcn-idlcm,idlcm-static"


def write_split(voc_root: Path, work: Path, *, source_split: str, test_fraction: float, seed: int) -> dict:
    """A VOC root under ``work`` (links to the real folders) with train.txt / test.txt; returns the split record."""
    import numpy as np

    from iagcn.train.holdout import stratified_holdout
    from iagcn.extract.datasets import read_voc

    ds = read_voc(voc_root, source_split)
    train_idx, test_idx = stratified_holdout(ds.labels, fraction=test_fraction, seed=seed)
    root = work / "VOCdevkit" / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for sub in ("JPEGImages", "Annotations"):
        link = root / sub
        if link.is_symlink() or link.exists():
            if link.resolve() != (voc_root / sub).resolve():
                raise SystemExit(f"{link} exists and does not point to {voc_root / sub}; use another --work")
        else:
            link.symlink_to((voc_root / sub).resolve(), target_is_directory=True)
    ids = np.asarray(ds.image_ids)
    record = {"voc_root": str(voc_root), "source_split": source_split, "test_fraction": test_fraction, "seed": seed,
              "n_source": len(ids)}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        chosen = sorted(ids[np.sort(idx)].tolist())
        text = "\n".join(chosen) + "\n"
        path = root / "ImageSets" / "Main" / f"{name}.txt"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        pos = (ds.labels[idx] == 1).sum(0)
        record[name] = {"n": len(chosen), "positives_per_class": pos.tolist()}
    record["root"] = str(root)
    return record


def extract(root: Path, split: str, out: Path, *, threads: int, workers: int, log) -> dict:
    """``iagcn extract`` with the offline defaults; returns {seconds, images, reused}."""
    from iagcn.cache.format import FeatureCache

    if out.exists():
        with FeatureCache(out) as c:
            n = c.num_images
        log(f"[bench-real] {out} exists ({n} images): reused")
        return {"seconds": None, "images": n, "reused": True}
    cmd = [sys.executable, "-m", "iagcn", "extract", "--dataset", "voc", "--root", str(root), "--split", split,
           "--out", str(out), "--workers", str(workers), "--threads", str(threads), "--quiet"]
    log("[bench-real] " + " ".join(cmd[2:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    with FeatureCache(out) as c:
        n = c.num_images
    log(f"[bench-real] extracted {n} images in {seconds:.0f} s ({seconds / max(n, 1):.2f} s/image)")
    return {"seconds": seconds, "images": n, "reused": False, "seconds_per_image": seconds / max(n, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", required=True, help="the VOCdevkit/VOC2007 folder (may be read-only)")
    ap.add_argument("--source-split", default="trainval", help="split file of the root whose ids are divided")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="label-stratified test fraction [0.2]")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--presets", default=PRESETS)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--baseline", default="mlgcn")
    ap.add_argument("--label-embeddings", default="cache",
                    help="H0 for the label GCNs: 'cache' (one-hot from the offline extraction) or a .npy (C, E)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override for every run (repeatable)")
    ap.add_argument("--work", default=os.environ.get("IAGCN_BENCH_DIR", "/tmp/iagcn-bench") + "/real",
                    help="scratch folder: split files, caches, sweep runs [$IAGCN_BENCH_DIR/real]")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", 2)))
    ap.add_argument("--workers", type=int, default=1, help="extraction DataLoader workers [1]")
    ap.add_argument("--stem", default="real-voc07", help="bench/results/<stem>.{json,md}")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--sweep-dir", default=None, help="sweep folder [WORK/sweep]")
    ap.add_argument("--train-only", action="store_true",
                    help="only train the runs into --sweep-dir (no probe, no report): split a long sweep over "
                         "several processes with disjoint --presets/--seeds and --sweep-dir, link their run folders "
                         "into WORK/sweep, then rerun without this flag (complete runs are reused)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from bench.harness import machine_info
    from iagcn.configio import apply_overrides, config_to_dict
    from iagcn.fsutil import write_json_atomic, write_text_atomic
    from iagcn.train.config import config_for_preset
    from iagcn.train.data import CacheData
    from iagcn.evaluate.ablation import ablate_sweep, sweep_ablation, write_sweep_table
    from iagcn.evaluate.evaluation import EvalConfig
    from iagcn.train.probe import PROBE_NAME
    from iagcn.train.sweep import parse_list, run_sweep

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    voc_root, work = Path(args.voc_root).resolve(), Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    t_all = time.perf_counter()
    split = write_split(voc_root, work, source_split=args.source_split, test_fraction=args.test_fraction,
                        seed=args.split_seed)
    log(f"[bench-real] split {split['train']['n']} train / {split['test']['n']} test images of {voc_root}")
    caches = {s: work / "cache" / f"{s}.h5" for s in ("train", "test")}
    times = {f"extract_{s}": extract(Path(split["root"]), s, caches[s], threads=args.threads, workers=args.workers,
                                     log=log) for s in ("train", "test")}

    presets, seeds = parse_list(args.presets, what="presets"), parse_list(args.seeds, what="seeds", cast=int)
    configs = [apply_overrides(config_for_preset(p, seed=s, num_threads=args.threads,
                                                 label_embeddings=args.label_embeddings), args.sets)
               for p in presets for s in seeds]
    sweep_dir = Path(args.sweep_dir).resolve() if args.sweep_dir else work / "sweep"
    t0 = time.perf_counter()
    with CacheData(caches["train"]) as train_data, CacheData(caches["test"]) as eval_data:
        rows = run_sweep(configs, train_data=train_data, eval_data=eval_data, out_dir=sweep_dir, progress=False,
                         log=log, probe=not args.train_only, on_results=write_sweep_table)
    if args.train_only:
        log(f"[bench-real] {len(configs)} runs complete in {sweep_dir} ({time.perf_counter() - t0:.0f} s)")
        return 0
    times["sweep_seconds"] = time.perf_counter() - t0
    # the runs' own training time (a rerun that reuses complete runs still reports what they cost)
    times["runs_train_seconds"] = float(sum(float(r.get("train_seconds") or 0) for r in rows))
    members = [(c.preset, c.seed) for c in configs] + [(PROBE_NAME, 0)]
    ablation = ablate_sweep(sweep_dir, baseline=args.baseline, cache_path=caches["test"],
                            config=EvalConfig(n_resamples=args.bootstrap, seed=0), log=log,
                            members=members) if args.baseline in presets else None
    # every preset against the linear probe too (issue 13: how far each head stands from the simplest strong
    # baseline), on exactly the runs of the table above; nothing is written into the sweep folder
    vs_probe = sweep_ablation(sweep_dir, baseline=PROBE_NAME, cache_path=caches["test"],
                              config=EvalConfig(n_resamples=args.bootstrap, seed=0),
                              groups={p: [Path(d) for d in dirs] for p, dirs in ablation["run_dirs"].items()}) \
        if ablation is not None else None
    table = (sweep_dir / "table.md").read_text()
    times["total_seconds"] = time.perf_counter() - t_all
    command = "python -m bench.real " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"machine": info, "command": command, "split": split, "times": times,
              "config_example": config_to_dict(configs[0]), "rows": rows, "table_md": table,
              "ablation": {k: v for k, v in (ablation or {}).items() if k not in ("runs", "comparisons")},
              "vs_probe": {k: v for k, v in (vs_probe or {}).items() if k not in ("runs", "comparisons")}}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    js, md = RESULTS_DIR / f"{args.stem}.json", RESULTS_DIR / f"{args.stem}.md"
    write_json_atomic(js, record, what="real benchmark")
    ex = {k: v for k, v in times.items() if k.startswith("extract_")}
    lines = [f"# Real-photo benchmark: {split['train']['n']} train / {split['test']['n']} test genuine VOC photos", "",
             f"Command: `{command}`", "",
             table.rstrip("\n"), "",
             *([probe_delta_line(vs_probe), ""] if vs_probe else []),
             "Times: " + ", ".join(
                 f"{k} {v['seconds']:.0f} s ({v['seconds_per_image']:.2f} s/image)" if v.get("seconds") else
                 f"{k} reused" for k, v in ex.items())
             + f", sweep {times['sweep_seconds']:.0f} s wall ({len(configs)} runs + probe; the runs' own training "
               f"time {times['runs_train_seconds']:.0f} s), total {times['total_seconds']:.0f} s.",
             "", f"{info['date']} · commit {str(info['git_commit'])[:10]} · torch {info['torch']} · {args.threads} "
             f"threads · {info['cpu']} ({info['logical_cpus']} logical CPUs) · load average at start "
             f"{info['load_average_at_start']}", ""]
    write_text_atomic(md, "\n".join(lines), what="real benchmark table")
    print("\n".join(lines))
    print(f"wrote {js} and {md}")
    return 0


def probe_delta_line(vs_probe: dict) -> str:
    """One line: every preset's ΔmAP against the linear probe, with its interval (* = it excludes zero)."""
    parts = []
    for preset, d in vs_probe["deltas"].items():
        m = d["metrics"]["mAP"]
        parts.append(f"`{preset}` {m['diff']:+.1f} [{m['low']:+.1f}, {m['high']:+.1f}]" + (" *" if m["excludes_zero"] else ""))
    return (f"ΔmAP vs `{vs_probe['baseline']}` (paired bootstrap over images, {round(vs_probe['ci'] * 100)}% percentile "
            "interval, seeds averaged; * = interval excludes zero): " + ", ".join(parts) + ".")


if __name__ == "__main__":
    sys.exit(main())
