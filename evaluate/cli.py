"""`iagcn` subcommands of the `evaluate` stage: eval, compare, explain, predict. Listed in COMMANDS."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import click

from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.evaluate.evaluation import EvalConfig
from iagcn.options import config_option, device_option, given
from iagcn.train import runfolder


def _warn_to_stderr() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
        click.echo(f"warning: {message}", err=True)

    warnings.showwarning = show


def _pr_classes(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


# ============================================================================================== eval
@click.command("eval")
@click.option("--run", "runs", multiple=True, type=click.Path(file_okay=False),
              help="Run folder (iagcn train --out); repeat to evaluate several runs side by side.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="A checkpoint file (best.pt / last.pt / any iagcn .pt) instead of --run.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Cache to score with --run/--checkpoint [default: the run's recorded evaluation cache].")
@click.option("--scores", type=click.Path(dir_okay=False), default=None,
              help="Scores of any model: .npy / .npz (scores, image_ids) / .csv (optional header + id column).")
@click.option("--targets", type=click.Path(dir_okay=False), default=None,
              help="Targets for --scores: .npy / .npz / .csv with 1 / 0 / -1, or a cache .h5 (its labels).")
@click.option("--scores-are", type=click.Choice(["logits", "probabilities"]), default=None,
              help="What --scores holds (required with --scores; runs always give logits).")
@click.option("--class-names", default=None, help="Comma-separated class names or a file (one a line).")
@click.option("--holdout-scores", type=click.Path(dir_okay=False), default=None,
              help="With --scores: the same model's scores on held-out TRAIN images, for calibrated thresholds.")
@click.option("--holdout-targets", type=click.Path(dir_okay=False), default=None,
              help="Targets for --holdout-scores (same formats as --targets).")
@config_option(EvalConfig, "threshold", type=float, help="Probability threshold for CP ... OF1.")
@config_option(EvalConfig, "top_k", type=int, help="Top-k block (0: none).")
@config_option(EvalConfig, "which", type=click.Choice(["best", "last"]), help="Which checkpoint of a run.")
@click.option("--pr-classes", default=None,
              help="Comma-separated classes for precision-recall curves [the 3 most frequent].")
@click.option("--no-plots", is_flag=True, help="Do not write PNG plots.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder [one --run: RUN/eval; several: required; --scores: print only].")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True,
              help="Table format printed.")
@device_option(EvalConfig, what="a run scoring a cache (model and batches)")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(runs, checkpoint, cache, scores, targets, scores_are, class_names, holdout_scores, holdout_targets,
             threshold, top_k, which, pr_classes, no_plots, out, fmt, device, quiet) -> None:
    """Evaluate scores (any model) or trained runs: metrics.json, per_class_ap.csv, scores, Table 1/2 layouts, plots."""
    from iagcn.evaluate import evaluation as E
    from iagcn.classes import parse_class_names
    from iagcn.evaluate import inputs as I
    from iagcn.evaluate.calibration import run_holdout
    from iagcn.evaluate.outputs import replacing_evaluation
    from iagcn.evaluate.runscores import score_run_on_cache

    _warn_to_stderr()
    if (holdout_scores is None) != (holdout_targets is None):
        raise UserError("--holdout-scores and --holdout-targets go together; pass both files")
    if holdout_scores is not None and scores is None:
        raise UserError("--holdout-scores goes with --scores; a run calibrates on its own hold-out")
    if scores is not None or targets is not None:
        if runs or checkpoint:
            raise UserError("--scores/--targets and --run/--checkpoint are exclusive; pass one kind of input")
        if scores is None or targets is None:
            raise UserError("--scores and --targets go together; pass both files")
        if scores_are is None:
            raise UserError("--scores-are is required with --scores: say 'logits' or 'probabilities'")
    elif not runs and not checkpoint:
        raise UserError("nothing to evaluate: pass --run DIR (or --checkpoint FILE) [--cache FILE], "
                        "or --scores FILE --targets FILE")
    elif runs and checkpoint:
        raise UserError("--run and --checkpoint are exclusive; pass one")
    elif scores_are == "probabilities":
        raise UserError("--scores-are probabilities: runs produce logits; drop --scores-are")
    config = E.EvalConfig(scores_are=scores_are or "logits", pr_classes=_pr_classes(pr_classes), plots=not no_plots,
                          **given(threshold=threshold, top_k=top_k, which=which, device=device))
    top_k = config.top_k
    if runs or checkpoint:
        resolve_device(config.device)                # refuse a bad --device before reading anything
    names_given = parse_class_names(class_names, option="--class-names")

    if scores is not None:
        if out:
            runfolder.refuse_run_folder(Path(out))    # before reading anything
        st = I.read_matrix(scores, option="--scores")
        if st.scores_are is not None and st.scores_are != config.scores_are:
            raise UserError(f"--scores {scores}: the file says its scores are {st.scores_are}, not "
                            f"{config.scores_are}; pass --scores-are {st.scores_are}")
        tt = I.read_matrix(targets, option="--targets", key="labels")
        s, t, ids = I.align_by_ids(st, tt)
        s, t, names = I.align_columns(st, tt, s, t, names_given)  # by class name whenever names are known
        holdout = None
        if holdout_scores is not None:
            from iagcn.evaluate.calibration import file_holdout

            holdout = file_holdout(holdout_scores, holdout_targets, class_names=names)
        ev = E.evaluate_scores(s, t, class_names=names, config=config, name=Path(scores).stem, image_ids=ids,
                               holdout=holdout)
        _check_pr_classes(config.pr_classes, names)
        I.warn_rows_by_position(st, tt)  # once the inputs are accepted
        click.echo(E.format_tables([ev], top_k=top_k, fmt=fmt))
        if out:
            inputs = {"scores": str(Path(scores).resolve()), "targets": str(Path(targets).resolve())}
            with replacing_evaluation(out) as written:   # the previous evaluation's files in --out go first
                written += list(E.write_evaluation(out, ev, config=config, inputs=inputs, save_scores=False,
                                                   lock=False).values())
                written.append(_write_tables_md(Path(out), [ev], top_k=top_k))
                if config.plots:
                    cfg = config if config.pr_classes else dataclasses.replace(config,
                                                                                pr_classes=E.default_pr_classes(ev))
                    written += E.run_plots(Path(out), [ev], config=cfg)
            click.echo(_wrote_lines(written))
        return

    # -- runs / checkpoint --------------------------------------------------------------------------
    sources = [Path(r) for r in runs] if runs else [Path(checkpoint).parent]
    if len(sources) > 1 and not out:
        raise UserError("several --run: pass --out DIR for the combined outputs")
    out_dir = Path(out) if out else sources[0] / "eval"
    runfolder.refuse_run_folder(out_dir)              # before scoring anything
    names = _run_names(sources)
    evaluations, logs, writes = [], {}, []
    for k, src in enumerate(sources):
        cache_path = Path(cache) if cache else _recorded_eval_cache(src)
        rs = score_run_on_cache(run_dir=src if runs else None, checkpoint=Path(checkpoint) if checkpoint else None,
                                cache_path=cache_path, config=config, progress=not quiet)
        tt = I.cache_targets(cache_path)
        t = I.rows_for_ids(tt, rs.image_ids, what="--cache")
        name = names[k]
        holdout = run_holdout(run_dir=src if runs else None, checkpoint=Path(checkpoint) if checkpoint else None,
                              which=config.which, eval_cache_path=cache_path, batch_size=config.batch_size,
                              device=config.device)
        ev = E.evaluate_scores(rs.scores, t, class_names=rs.class_names, config=config, name=name,
                               image_ids=rs.image_ids, holdout=holdout)
        evaluations.append(ev)
        logs[name] = runfolder.log_path(src)
        sub = out_dir / name if len(sources) > 1 else out_dir
        inputs = {"run": str(src.resolve()), "checkpoint": rs.source, "cache": str(cache_path.resolve())}
        writes.append((sub, ev, inputs))
    _check_pr_classes(config.pr_classes, evaluations[0].class_names)  # every check before the first file
    click.echo(E.format_tables(evaluations, top_k=top_k, fmt=fmt))
    with replacing_evaluation(out_dir, folders=[sub for sub, _, _ in writes if sub != out_dir]) as written:
        for sub, ev, inputs in writes:            # (the previous evaluation's files in --out went first)
            written += list(E.write_evaluation(sub, ev, config=config, inputs=inputs, lock=sub != out_dir).values())
            written.append(_write_tables_md(sub, [ev], top_k=top_k))
        if len(evaluations) > 1:                       # the runs side by side, at the top of --out
            written.append(_write_tables_md(out_dir, evaluations, top_k=top_k))
        if config.plots:
            cfg = config if config.pr_classes else dataclasses.replace(
                config, pr_classes=E.default_pr_classes(evaluations[0]))
            written += E.run_plots(out_dir, evaluations, config=cfg, logs=logs)
    click.echo(_wrote_lines(written))


def _run_names(sources: list[Path]) -> list[str]:
    """One name (and per-run output folder) per run: its folder's name, ``-k`` added where names repeat. Two runs
    that would still share a name (``x/a``, ``y/a`` and ``z/a-1``) are refused: one would overwrite the other."""
    base = [Path(s).resolve().name for s in sources]
    names = [n if base.count(n) == 1 else f"{n}-{k}" for k, n in enumerate(base)]
    for k, n in enumerate(names):
        if names.index(n) != k:
            raise UserError(f"--run {sources[names.index(n)]} and --run {sources[k]} would both be named {n!r} "
                            f"(their outputs in one folder); rename one run folder")
    return names


def _write_tables_md(folder: Path, evaluations, *, top_k: int) -> Path:
    """tables.md: the Table 1 (all + top-k) and Table 2 (per-class AP) layouts as Markdown, next to metrics.json."""
    from iagcn.evaluate.evaluation import format_tables
    from iagcn.evaluate.report import md_cell
    from iagcn.fsutil import write_text_atomic

    names = ", ".join(md_cell(e.name) for e in evaluations)   # names are data: escaped, never markup
    text = (f"# Evaluation of {names}\n\n{len(evaluations[0].targets)} images, {len(evaluations[0].class_names)} "
            f"classes; percent.\n\n" + format_tables(evaluations, top_k=top_k, fmt="markdown"))
    path = Path(folder) / "tables.md"
    write_text_atomic(path, text, what="evaluation tables")
    return path


def _wrote_lines(paths) -> str:
    """'wrote DIR/: a, b, c' per folder, in the order the files were written (the real paths)."""
    by_dir: dict[Path, list[str]] = {}
    for p in paths:
        p = Path(p)
        by_dir.setdefault(p.parent, [])
        if p.name not in by_dir[p.parent]:
            by_dir[p.parent].append(p.name)
    return "\n".join(f"wrote {d}/: {', '.join(names)}" for d, names in by_dir.items())


def _check_pr_classes(pr_classes, class_names) -> None:
    """--pr-classes must name classes of the evaluation, checked before any output is written."""
    unknown = [c for c in (pr_classes or ()) if c not in class_names]
    if unknown:
        raise UserError(f"--pr-classes: unknown class {unknown[0]!r}; choose from {', '.join(list(class_names)[:10])}"
                        + (" ..." if len(class_names) > 10 else ""))


def _recorded_eval_cache(run_dir: Path) -> Path:
    path = runfolder.recorded_cache(run_dir, "eval")["path"]
    if not path or not Path(path).exists():
        raise UserError(f"--run {run_dir}: its evaluation cache {path!r} is not there; pass --cache FILE")
    return Path(path)


# ============================================================================================== compare
@click.command("compare")
@click.argument("run_a", required=False)
@click.argument("run_b", required=False)
@click.option("--a", "more_a", multiple=True, help="A run of side A (repeat for seeds); or SWEEP_DIR:PRESET.")
@click.option("--b", "more_b", multiple=True, help="A run of side B (repeat for seeds); or SWEEP_DIR:PRESET.")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Cache whose images and targets are compared on [default: the first run's evaluation cache].")
@config_option(EvalConfig, "n_resamples", "--resamples", type=int, help="Bootstrap resamples.")
@config_option(EvalConfig, "seed", type=int, help="Bootstrap seed.")
@config_option(EvalConfig, "ci", type=float, help="Interval level.")
@config_option(EvalConfig, "threshold", type=float, help="Probability threshold for CP ... OF1.")
@config_option(EvalConfig, "top_k", type=int, help="Top-k block (0: none).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for compare.json and compare.md [print only].")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True)
@click.option("--sweep", "sweep_dir", type=click.Path(file_okay=False), default=None,
              help="Instead of A/B: every preset of this sweep folder against --baseline (ablation table).")
@click.option("--baseline", default="mlgcn", show_default=True, help="With --sweep: the preset compared against.")
def compare_cmd(run_a, run_b, more_a, more_b, cache, n_resamples, seed, ci, threshold, top_k, out, fmt, sweep_dir,
                baseline) -> None:
    """B - A per metric with a paired bootstrap CI over images (from saved scores), + a seed test with >= 2 seeds.

    RUN_A / RUN_B: run folders or SWEEP_DIR:PRESET (all seeds of a preset). Use --a/--b to list seeds one by one.
    With --sweep DIR --baseline PRESET: the ablation table of the sweep with a ΔmAP-vs-baseline [CI] column.
    """
    from iagcn.evaluate.compare import compare_runs, comparison_record, comparison_table
    from iagcn.configio import config_to_dict
    from iagcn.fsutil import git_commit, write_json_atomic, write_text_atomic

    _warn_to_stderr()
    if sweep_dir is not None:
        from iagcn.evaluate.ablation import sweep_ablation, sweep_ablation_table, sweep_runs, write_ablation

        if run_a or run_b or more_a or more_b:
            raise UserError("--sweep compares the sweep's presets; drop RUN_A/RUN_B/--a/--b")
        config = EvalConfig(plots=False, **given(threshold=threshold, top_k=top_k, n_resamples=n_resamples, seed=seed,
                                                 ci=ci))
        cache_path = Path(cache) if cache else _recorded_eval_cache(next(iter(sweep_runs(sweep_dir).values()))[0])
        result = sweep_ablation(sweep_dir, baseline=baseline, cache_path=cache_path, config=config,
                                log=lambda m: click.echo(m, err=True))
        click.echo(sweep_ablation_table(result, fmt=fmt))
        if out:
            paths = write_ablation(out, result, config=config)
            click.echo(f"wrote {paths['json']} and {paths['md']}")
        return
    side_a = ([run_a] if run_a else []) + list(more_a)
    side_b = ([run_b] if run_b else []) + list(more_b)
    if not side_a or not side_b:
        raise UserError("compare needs runs on both sides: iagcn compare RUN_A RUN_B, or --a RUN ... --b RUN ...")
    config = EvalConfig(plots=False, **given(threshold=threshold, top_k=top_k, n_resamples=n_resamples, seed=seed,
                                             ci=ci))
    if cache is None:
        from iagcn.evaluate.compare import expand_run_spec

        cache_path = _recorded_eval_cache(expand_run_spec(side_a[0])[0])
    else:
        cache_path = Path(cache)
    cmp = compare_runs(side_a, side_b, cache_path=cache_path, config=config,
                       log=lambda m: click.echo(m, err=True))
    text = comparison_table(cmp, fmt=fmt)
    click.echo(text)
    if out:
        rec = comparison_record(cmp, cache_path=cache_path, config=config)
        rec.update(config=config_to_dict(config), git_commit=git_commit())
        write_json_atomic(Path(out) / "compare.json", rec, what="comparison")
        write_text_atomic(Path(out) / "compare.md", comparison_table(cmp, fmt="markdown"), what="comparison table")
        click.echo(f"wrote {Path(out) / 'compare.json'} and {Path(out) / 'compare.md'}")


# ============================================================================================== explain
@click.command("explain", short_help="Fig. 1 (A_F next to A_S) and Fig. 3 (ROI boxes coloured by z) for cached images.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder (iagcn train --out).")
@click.option("--cache", type=click.Path(dir_okay=False), default=None,
              help="Cache holding the image [default: the run's recorded evaluation cache].")
@click.option("--image-id", "image_ids", multiple=True, required=True, help="Image id in the cache (repeatable).")
@click.option("--image-root", type=click.Path(file_okay=False), default=None,
              help="Folder with the image files [default: the dataset root recorded in the cache].")
@config_option(EvalConfig, "which", type=click.Choice(["best", "last"]), help="Which checkpoint of the run.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder for the figures.")
@device_option(EvalConfig, what="the run's head (model and the image's features)")
@click.option("--top-rois", type=click.IntRange(min=1), default=None,
              help="Fig. 3: draw only the K ROIs of largest weight z [default: every valid ROI].")
def explain_cmd(run_dir, cache, image_ids, image_root, which, out, device, top_rois) -> None:
    """Fig. 1 (the image's A_F next to A_S) and Fig. 3 (its ROI boxes coloured by z) for cached images."""
    from iagcn.evaluate.explain import explain

    _warn_to_stderr()
    config = EvalConfig(**given(which=which, device=device))
    resolve_device(config.device)                    # refuse a bad --device before reading anything
    cache_path = Path(cache) if cache else _recorded_eval_cache(Path(run_dir))
    for image_id in image_ids:
        rec = explain(run_dir, cache_path, image_id, out, image_root=image_root, which=config.which,
                      device=config.device, top_rois=top_rois)
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(rec["probabilities"].items())[:3])
        click.echo(f"{image_id}: labels {', '.join(rec['labels']) or '-'}; top predictions {top}")
        for note in rec["notes"]:
            click.echo(f"  note: {note}")
        for kind, path in rec["figures"].items():
            if kind != "image":
                click.echo(f"  wrote {path} (+ {Path(path).name}.npz)")


# ============================================================================================== predict
@click.command("predict")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), required=True, help="Run folder (iagcn train --out).")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@config_option(EvalConfig, "threshold", type=float, help="Probability for a label to be predicted.")
@click.option("--top-k", type=int, default=None, help="At most this many labels per image.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
@config_option(EvalConfig, "which", type=click.Choice(["best", "last"]), help="Which checkpoint of the run.")
@device_option(EvalConfig, what="stage one (backbone, proposer) and the run's head")
@click.option("--workers", type=int, default=None, help="Image-loading worker processes [0 for <= 4 images, else 2].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--skip-bad", is_flag=True,
              help="Leave out unreadable or missing images (named in one warning line) instead of refusing, as "
                   "`iagcn extract --skip-bad`.")
def predict_cmd(run_dir, images, threshold, top_k, fmt, which, device, workers, quiet, skip_bad) -> None:
    """Labels with probabilities for IMAGE_OR_DIR...: stage one with the run's recorded extraction config, then its head."""
    from iagcn.evaluate.predict import format_predictions, predict_images

    _warn_to_stderr()
    config = EvalConfig(**given(threshold=threshold, which=which, device=device))
    resolve_device(config.device)                    # refuse a bad --device before reading anything
    preds = predict_images(run_dir, images, threshold=config.threshold, top_k=top_k, which=config.which,
                           device=config.device,
                           workers=workers, progress=not quiet, log=lambda m: click.echo(m, err=True),
                           skip_bad=skip_bad)
    click.echo(format_predictions(preds, fmt=fmt))


COMMANDS: list = [eval_cmd, compare_cmd, explain_cmd, predict_cmd]
