"""`iagcn compare`: is run (or preset) B better than A on these images, beyond the noise?

From the runs' saved per-image scores (never retraining), on the targets of one cache:

* per metric the difference B - A on all images, with a **paired bootstrap** interval over images: each resample
  draws n images with replacement, the same images for A and B. With several seeds per side the statistic is
  the difference of the seed-averaged metrics, mean_s M(B_s) - mean_s M(A_s), every run of a resample weighting
  the same images (for one run per side this is exactly :func:`evaluate.stats.paired_bootstrap`);
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

from iagcn.evaluate.evaluation import EvalConfig, RunScores, cache_targets, rows_for_ids, run_scores_for_cache
from iagcn.evaluate.metrics import metric_names, validate_scores_targets
from iagcn.errors import UserError


def expand_run_spec(spec: str) -> list[Path]:
    """``DIR`` (one run) or ``SWEEP_DIR:PRESET`` (all seeds of a preset in a sweep), each a folder with config.json."""
    path = Path(spec)
    if path.is_dir() and (path / "config.json").exists():
        return [path]
    if ":" in spec:
        folder, preset = spec.rsplit(":", 1)
        runs = sorted(p for p in Path(folder).glob(f"{preset}-s*") if (p / "config.json").exists())
        if not runs:
            raise UserError(f"{spec}: no runs {preset}-s<seed> with a config.json in {folder}; "
                            "pass SWEEP_DIR:PRESET of a finished sweep")
        return runs
    if path.is_dir():
        subs = sorted({p.parent.name.rsplit('-s', 1)[0] for p in path.glob("*/config.json")})
        hint = f"; it looks like a sweep: pass {spec}:PRESET with PRESET one of {', '.join(subs)}" if subs else ""
        raise UserError(f"{spec}: no config.json (not a run folder){hint}")
    raise UserError(f"{spec}: not found; pass a run folder (iagcn train --out) or SWEEP_DIR:PRESET")


def pair_by_seed(a: Sequence[RunScores], b: Sequence[RunScores]) -> tuple[list[RunScores], list[RunScores], str]:
    """Order both sides so that a[i] and b[i] share seed i when the seed sets agree (else keep the given order)."""
    seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
    if len(a) == len(b) and None not in seeds_a and sorted(seeds_a) == sorted(seeds_b) and \
            len(set(seeds_a)) == len(seeds_a):
        by_b = {r.seed: r for r in b}
        a_sorted = sorted(a, key=lambda r: r.seed)
        return a_sorted, [by_b[r.seed] for r in a_sorted], "by seed"
    return list(a), list(b), "by order (seed sets differ)"


def paired_bootstrap_runs(scores_a: Sequence[np.ndarray], scores_b: Sequence[np.ndarray], targets: np.ndarray, *,
                          scores_are: str = "logits", n_resamples: int = 1000, seed: int = 0, ci: float = 0.95,
                          threshold: float = 0.5, top_k: int | None = 3, chunk: int = 250) -> dict[str, Any]:
    """B - A of the seed-averaged metrics, with a paired percentile-bootstrap interval over images.

    Same resampling stream as :func:`evaluate.stats.paired_bootstrap` (seeded generator, chunks of ``chunk``), so
    with one run per side the result is identical to it.
    """
    from iagcn.evaluate.stats import _percentile_interval, bootstrap_weights, weighted_multilabel_metrics

    if not scores_a or not scores_b:
        raise UserError("compare: each side needs at least one run")
    t = None
    checked_a, checked_b = [], []
    for s in scores_a:
        s2, t = validate_scores_targets(s, targets, scores_are=scores_are)
        checked_a.append(s2)
    for s in scores_b:
        s2, t = validate_scores_targets(s, targets, scores_are=scores_are)
        checked_b.append(s2)
    if not (0.0 < ci < 1.0):
        raise UserError(f"--ci {ci}: must be strictly between 0 and 1 (e.g. 0.95)")
    if n_resamples < 1:
        raise UserError(f"--resamples {n_resamples}: must be >= 1")
    n = t.shape[0]
    names = list(metric_names(top_k))

    def side_mean(side: list[np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
        per_run = [weighted_multilabel_metrics(s, t, weights, scores_are=scores_are, threshold=threshold, top_k=top_k)
                   for s in side]
        return {k: np.mean([m[k] for m in per_run], axis=0) for k in names}  # (R,) each

    ones = np.ones((1, n), dtype=np.int32)
    full_a = {k: float(v[0]) for k, v in side_mean(checked_a, ones).items()}
    full_b = {k: float(v[0]) for k, v in side_mean(checked_b, ones).items()}
    rng = np.random.default_rng(seed)
    diffs = {k: np.empty(n_resamples) for k in names}
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        _, weights = bootstrap_weights(n, n_resamples=stop - start, rng=rng)  # (r, n) multiplicities
        ma, mb = side_mean(checked_a, weights), side_mean(checked_b, weights)
        for k in names:
            diffs[k][start:stop] = mb[k] - ma[k]  # (r,)
    metrics = {}
    for k in names:
        low, high, n_valid = _percentile_interval(diffs[k], ci)
        metrics[k] = {"a": full_a[k], "b": full_b[k], "diff": full_b[k] - full_a[k], "low": low, "high": high,
                      "excludes_zero": bool(n_valid > 0 and (low > 0 or high < 0)), "n_valid": n_valid}
    return {"metrics": metrics, "n_images": n, "n_resamples": n_resamples, "seed": seed, "ci": ci,
            "runs_a": len(checked_a), "runs_b": len(checked_b),
            "method": "paired percentile bootstrap over images (same resampled images for every run); "
                      "statistic: mean over seeds of B minus mean over seeds of A"}


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
    from iagcn.evaluate.metrics import multilabel_metrics
    from iagcn.evaluate.stats import paired_seed_test

    cache_path = Path(cache_path)
    targets_table = cache_targets(cache_path)
    dirs_a = [p for s in specs_a for p in expand_run_spec(s)]
    dirs_b = [p for s in specs_b for p in expand_run_spec(s)]
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
    if len(runs_a) >= 2 and len(runs_a) == len(runs_b):
        seed_tests = {}
        for k in metric_names(top_k):
            va = [per_run[str(r.run_dir)][k] for r in runs_a]
            vb = [per_run[str(r.run_dir)][k] for r in runs_b]
            if all(math.isfinite(v) for v in va + vb):
                seed_tests[k] = paired_seed_test(va, vb, ci=config.ci)
    return Comparison(runs_a=runs_a, runs_b=runs_b, pairing=pairing, bootstrap=boot, seed_tests=seed_tests,
                      per_run=per_run)


def comparison_record(cmp: Comparison, *, cache_path: str | Path, config: EvalConfig) -> dict[str, Any]:
    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return float(x) if math.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x

    return clean({"a": [str(r.run_dir) for r in cmp.runs_a], "b": [str(r.run_dir) for r in cmp.runs_b],
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


def sweep_runs(sweep_dir: str | Path) -> dict[str, list[Path]]:
    """``{preset: [run dirs sorted by seed]}`` of a sweep folder, from each run's config.json (first-seen order)."""
    import json

    out: dict[str, list[tuple[int, Path]]] = {}
    for cfg_path in sorted(Path(sweep_dir).glob("*/config.json")):
        try:
            cfg = json.loads(cfg_path.read_text()).get("config", {})
        except (OSError, ValueError):
            continue
        out.setdefault(str(cfg.get("preset", cfg_path.parent.name)), []).append((int(cfg.get("seed", 0)),
                                                                                 cfg_path.parent))
    if not out:
        raise UserError(f"--sweep {sweep_dir}: no run folders (*/config.json); pass the --out of `iagcn sweep`")
    order = list(out)
    results = Path(sweep_dir) / "results.csv"
    if results.exists():  # the sweep's own preset order (the paper's row order)
        import csv

        with open(results, newline="") as fh:
            seen = [row.get("preset") for row in csv.DictReader(fh)]
        order = [p for p in dict.fromkeys(seen) if p in out] + [p for p in order if p not in seen]
    return {p: [d for _, d in sorted(out[p])] for p in order}


def sweep_ablation(sweep_dir: str | Path, *, baseline: str, cache_path: str | Path, config: EvalConfig,
                   log=None) -> dict[str, Any]:
    """Every preset of a sweep against ``baseline``: the ablation table (mean ± std over seeds) with the
    ``ΔmAP vs baseline [CI]`` column from the paired bootstrap and, with >= 2 seeds, the seed test's p-value."""
    groups = sweep_runs(sweep_dir)
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
            "seed_tests": seed_tests, "comparisons": records, "ci": config.ci}


def sweep_ablation_table(result: dict[str, Any], *, fmt: str = "text") -> str:
    """The ablation table (report.ablation_table) of a :func:`sweep_ablation` result."""
    from iagcn.evaluate.report import ablation_table

    return ablation_table(result["runs"], fmt=fmt, baseline=result["baseline"], deltas=result["deltas"],
                          seed_tests=result["seed_tests"] or None, ci=result["ci"])
