"""`iagcn compare`: is run (or preset) B better than A on these images, beyond the noise?

From the runs' saved per-image scores (never retraining), on the targets of one cache:

* per metric the difference B - A on all images, with a **paired bootstrap** interval over images: each resample
  draws n images with replacement, the same images for A and B. With several seeds per side the statistic is
  the difference of the seed-averaged metrics, mean_s M(B_s) - mean_s M(A_s), every run of a resample weighting
  the same images (:func:`evaluate.stats.paired_bootstrap_runs`; for one run per side this is :func:`evaluate.stats.paired_bootstrap`);
* with >= 2 seeds on both sides, a **paired seed test** per metric (:func:`evaluate.stats.paired_seed_test`,
  runs paired by their seed).

Run arguments: a run folder, or ``SWEEP_DIR:PRESET`` for every ``SWEEP_DIR/PRESET-s<seed>`` run of a sweep.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from iagcn.errors import UserError
from iagcn.validation import require_unique
from iagcn.evaluate.evaluation import EvalConfig
from iagcn.evaluate.inputs import cache_targets, rows_for_ids
from iagcn.evaluate.runscores import RunScores, run_scores_for_cache
from iagcn.evaluate.stats import paired_bootstrap_runs
from iagcn.jsonutil import to_json
from iagcn.metrics import metric_names
from iagcn.train import runfolder


def refuse_incomplete(path: Path, spec: str) -> None:
    """Only complete runs (metrics.json written) are compared."""
    if not runfolder.is_complete(path):
        raise UserError(f"{spec}: run {path} is not complete (no metrics.json: interrupted?); finish it with "
                        f"`iagcn train --resume {path}` (or the same `iagcn sweep` command) before comparing")


def expand_run_spec(spec: str, *, log=None) -> list[Path]:
    """``DIR`` (one complete run) or ``SWEEP_DIR:PRESET`` (the complete seeds of a preset in a sweep).

    Only complete runs (with metrics.json) are compared: an interrupted run folder of a sweep is left out (with a
    note through ``log``); an explicit incomplete run folder is refused.
    """
    path = Path(spec)
    if path.is_dir() and (path / runfolder.CONFIG).exists():
        refuse_incomplete(path, spec)
        return [path]
    if ":" in spec:
        folder, preset = spec.rsplit(":", 1)
        groups = sweep_runs(folder, log=log)
        if preset not in groups:
            raise UserError(f"{spec}: no complete runs of preset {preset} (a config.json and metrics.json) in "
                            f"{folder}; pass SWEEP_DIR:PRESET of a finished sweep")
        return groups[preset]
    if path.is_dir():
        subs = sorted({p.parent.name.rsplit('-s', 1)[0] for p in path.glob(f"*/{runfolder.CONFIG}")})
        hint = f"; it looks like a sweep: pass {spec}:PRESET with PRESET one of {', '.join(subs)}" if subs else ""
        raise UserError(f"{spec}: no config.json (not a run folder){hint}")
    raise UserError(f"{spec}: not found; pass a run folder (iagcn train --out) or SWEEP_DIR:PRESET")


def check_seeds_of_one_experiment(runs: Sequence[tuple[Path, dict[str, Any]]], *, where: str) -> None:
    """Runs averaged as seeds of one side (a preset of a sweep, the --a or --b list) must differ only in their
    seed: the same identity config and the same train and evaluation caches (content fingerprints). Otherwise
    their mean is no preset's number; refused, naming the two runs and what differs."""
    if len(runs) < 2:
        return
    (first, ref), rest = runs[0], runs[1:]
    for d, record in rest:
        diff = runfolder.seed_group_diff(ref, record)
        if diff:
            raise UserError(f"{where}: runs {first} and {d} differ in {', '.join(diff[:6])}"
                            f"{' ...' if len(diff) > 6 else ''}, not only in the seed, so they are not seeds of one "
                            "experiment; compare them as separate runs or remove the odd one")


def pair_by_seed(a: Sequence[RunScores], b: Sequence[RunScores]) -> tuple[list[RunScores], list[RunScores], str]:
    """Order both sides so that a[i] and b[i] share seed i when the seed sets agree (else keep the given order)."""
    seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
    if len(a) == len(b) and None not in seeds_a and sorted(seeds_a) == sorted(seeds_b) and \
            len(set(seeds_a)) == len(seeds_a):
        by_b = {r.seed: r for r in b}
        a_sorted = sorted(a, key=lambda r: r.seed)
        return a_sorted, [by_b[r.seed] for r in a_sorted], "by seed"
    return list(a), list(b), "by order (seed sets differ)"


@dataclass
class Comparison:
    runs_a: list[RunScores]
    runs_b: list[RunScores]
    pairing: str
    bootstrap: dict[str, Any]
    seed_tests: dict[str, dict[str, Any]] | None
    per_run: dict[str, dict[str, float]]  # run name -> full-image metrics


def compare_runs(specs_a: Sequence[str], specs_b: Sequence[str], *, cache_path: str | Path, config: EvalConfig,
                 progress: bool = False, log=None) -> Comparison:
    """Compare the runs of side A with those of side B on the images and targets of ``cache_path``."""
    from iagcn.metrics import multilabel_metrics
    from iagcn.evaluate.stats import paired_seed_test

    if not (0.0 < config.ci < 1.0):
        raise UserError(f"--ci {config.ci}: must be strictly between 0 and 1 (e.g. 0.95)")
    tail = config.n_resamples * (1.0 - config.ci) / 2.0   # resamples beyond each end of the percentile interval
    if tail < 2.5 - 1e-9:   # 100 resamples at the default 95%, as sweep's --bootstrap minimum
        raise UserError(f"--resamples {config.n_resamples} at --ci {config.ci}: only {tail:.1f} resamples lie beyond "
                        f"each end of the interval; use --resamples >= {math.ceil(5 / (1.0 - config.ci) - 1e-9)} "
                        f"(or a lower --ci)")
    cache_path = Path(cache_path)
    targets_table = cache_targets(cache_path)
    dirs_a = [p for s in specs_a for p in expand_run_spec(s, log=log)]
    dirs_b = [p for s in specs_b for p in expand_run_spec(s, log=log)]
    for side, dirs in (("A", dirs_a), ("B", dirs_b)):   # one run listed twice would count as two seeds
        require_unique([str(d.resolve()) for d in dirs], what="run", where=f"compare side {side}",
                       fix="list each run once")
        # each config.json agrees with its checkpoint; the runs of a side differ in the seed only
        check_seeds_of_one_experiment([(d, runfolder.read_verified_record(d, option=f"compare side {side}"))
                                       for d in dirs], where=f"compare side {side}")
    runs_a = [run_scores_for_cache(d, cache_path, config=config, progress=progress) for d in dirs_a]
    runs_b = [run_scores_for_cache(d, cache_path, config=config, progress=progress) for d in dirs_b]
    for r in runs_a + runs_b:
        if log:
            log(f"{r.name}: {r.source}")
    runs_a, runs_b, pairing = pair_by_seed(runs_a, runs_b)
    # every run's rows in the cache's order
    ids = targets_table.image_ids
    aligned = {}
    for r in runs_a + runs_b:
        pos = {i: k for k, i in enumerate(r.image_ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            raise UserError(f"run {r.run_dir}: no scores for {len(missing)} image(s) of {cache_path} "
                            f"(first {missing[0]!r}); compare on the cache the runs were scored on")
        aligned[id(r)] = r.scores[np.array([pos[i] for i in ids], dtype=np.int64)]
    targets = rows_for_ids(targets_table, ids, what="--cache")
    top_k = config.top_k or None
    boot = paired_bootstrap_runs([aligned[id(r)] for r in runs_a], [aligned[id(r)] for r in runs_b], targets,
                                 scores_are="logits", n_resamples=config.n_resamples, seed=config.seed, ci=config.ci,
                                 threshold=config.threshold, top_k=top_k)
    per_run = {}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in runs_a + runs_b:
            per_run[str(r.run_dir)] = multilabel_metrics(aligned[id(r)], targets, scores_are="logits",
                                                         threshold=config.threshold, top_k=top_k)
    seed_tests = None
    # a test ACROSS seeds needs >= 2 runs on each side, paired by the same seeds (never by order)
    if len(runs_a) >= 2 and len(runs_a) == len(runs_b) and pairing == "by seed":
        seed_tests = {}
        for k in metric_names(top_k):
            va = [per_run[str(r.run_dir)][k] for r in runs_a]
            vb = [per_run[str(r.run_dir)][k] for r in runs_b]
            if all(math.isfinite(v) for v in va + vb):
                seed_tests[k] = paired_seed_test(va, vb, ci=config.ci)
    return Comparison(runs_a=runs_a, runs_b=runs_b, pairing=pairing, bootstrap=boot, seed_tests=seed_tests,
                      per_run=per_run)


def comparison_record(cmp: Comparison, *, cache_path: str | Path, config: EvalConfig) -> dict[str, Any]:
    return to_json({"a": [str(r.run_dir) for r in cmp.runs_a], "b": [str(r.run_dir) for r in cmp.runs_b],
                  "seeds_a": [r.seed for r in cmp.runs_a], "seeds_b": [r.seed for r in cmp.runs_b],
                  "pairing": cmp.pairing, "cache": str(cache_path), "bootstrap": cmp.bootstrap,
                  "seed_tests": cmp.seed_tests, "per_run": cmp.per_run,
                  "sources": {str(r.run_dir): r.source for r in cmp.runs_a + cmp.runs_b}})


def side_label(runs: Sequence[RunScores]) -> str:
    if len(runs) == 1:
        return runs[0].name
    presets = {r.preset for r in runs}
    label = presets.pop() if len(presets) == 1 and None not in presets else runs[0].name
    return f"{label} ({len(runs)} seeds)"


def comparison_table(cmp: Comparison, *, fmt: str = "text") -> str:
    """Metric | A | B | B - A | CI | (seed test) rows; ``*`` marks intervals that exclude zero."""
    from iagcn.evaluate.report import fmt_pct, render_table

    boot = cmp.bootstrap
    level = f"{round(100 * boot['ci'])}%"
    header = ["Metric", f"A: {side_label(cmp.runs_a)}", f"B: {side_label(cmp.runs_b)}", "B - A", f"{level} CI", ""]
    if cmp.seed_tests is not None:
        header += ["seeds: mean d", "p (t-test)"]
    rows = []
    for k, m in boot["metrics"].items():
        mark = "*" if m["excludes_zero"] else ""
        row = [k, fmt_pct(m["a"]), fmt_pct(m["b"]), fmt_pct(m["diff"], signed=True),
               f"[{fmt_pct(m['low'], signed=True)}, {fmt_pct(m['high'], signed=True)}]", mark]
        if cmp.seed_tests is not None:
            st = cmp.seed_tests.get(k)
            row += [fmt_pct(st["mean_diff"], signed=True), f"{st['p_t']:.3f}"] if st else ["-", "-"]
        rows.append(row)
    note = (f"Paired bootstrap over {boot['n_images']} images, {boot['n_resamples']} resamples (seed {boot['seed']}), "
            f"{level} percentile interval; * = interval excludes zero. Runs paired {cmp.pairing}.")
    if cmp.seed_tests is not None:
        note += f" Seed test: paired t-test over {len(cmp.runs_a)} seeds (two-sided)."
    return render_table(header, rows, fmt=fmt) + ("\n" if fmt == "markdown" else "") + note + "\n"


def sweep_runs(sweep_dir: str | Path, *, log=None) -> dict[str, list[Path]]:
    """``{preset: [complete run dirs sorted by seed]}`` of a sweep folder, from each run's config.json.

    Only complete runs (metrics.json present) count: an interrupted run is left out, with a note through ``log``.
    Two complete runs of the same preset and seed (a copied folder) are refused: which one belongs in a table
    would be a guess. Presets come in the sweep's results.csv order, then first-seen order.
    """
    out: dict[str, list[tuple[int, Path]]] = {}
    records: dict[Path, dict[str, Any]] = {}
    skipped = []
    for cfg_path in sorted(Path(sweep_dir).glob(f"*/{runfolder.CONFIG}")):
        if not runfolder.is_complete(cfg_path.parent):
            skipped.append(cfg_path.parent.name)
            continue
        record = runfolder.read_verified_record(cfg_path.parent, option="--sweep")  # damaged / mixed: one line
        cfg = record["config"]
        try:
            preset, seed = str(cfg["preset"]), int(cfg["seed"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{cfg_path}: its config lacks a valid preset/seed ({type(e).__name__}: {e}); fix or "
                            f"remove that run folder") from e
        for other_seed, other in out.get(preset, []):
            if other_seed == seed:
                raise UserError(f"--sweep {sweep_dir}: two complete runs of {preset} seed {seed} ({other.name} and "
                                f"{cfg_path.parent.name}); remove one of them")
        out.setdefault(preset, []).append((seed, cfg_path.parent))
        records[cfg_path.parent] = record
    if skipped and log:
        log(f"note: left out {len(skipped)} incomplete run folder(s) without metrics.json: {', '.join(skipped)}")
    if not out:
        raise UserError(f"--sweep {sweep_dir}: no complete run folders (*/config.json with metrics.json); "
                        "pass the --out of a finished `iagcn sweep`")
    for preset, runs in out.items():   # the seeds of a preset are averaged: they must differ in the seed only
        check_seeds_of_one_experiment([(d, records[d]) for _, d in sorted(runs)],
                                      where=f"--sweep {sweep_dir}: preset {preset}")
    order = list(out)
    results = Path(sweep_dir) / "results.csv"
    if results.exists():  # the sweep's own preset order (the paper's row order)
        import csv

        with open(results, newline="") as fh:
            seen = [row.get("preset") for row in csv.DictReader(fh)]
        order = [p for p in dict.fromkeys(seen) if p in out] + [p for p in order if p not in seen]
    return {p: [d for _, d in sorted(out[p])] for p in order}
