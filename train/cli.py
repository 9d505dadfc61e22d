"""`iagcn` subcommands of the `train` stage: `iagcn train` and `iagcn sweep`. Each module lists its commands in COMMANDS.

Where a run's config comes from (:func:`resolve_config`, the one resolution order; docs/training.md "Resolution
order"), lowest precedence first: TrainConfig's defaults < the preset < the recipe < ``--config FILE`` (YAML/JSON,
e.g. a previous run's config.json; :mod:`iagcn.configfile`) < the options given on the command line < ``--set``.
The preset is ``--preset``, else the file's ``preset:``; the recipe is ``--recipe``, else the file's ``recipe:``
(both given and different: refused, the file's values were chosen for its own recipe). ``--set recipe=`` /
``--set preset=`` (a label without the values) and an option and a ``--set`` of the same field with different
values are refused; an option the resolved config does not use (``--lr-step`` under the cosine schedule) is
refused, a file's such value warned about (:func:`iagcn.train.config.unused_fields`).
"""
from __future__ import annotations

from pathlib import Path

import click

from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.options import config_option, device_option, given
from iagcn.train.config import PRESETS, RECIPES, TRAIN_OPTIONS, TrainConfig


def default_config() -> TrainConfig:
    """The config a run starts from when nothing is given: the default preset under the default recipe."""
    from iagcn.train.config import config_for_preset

    return config_for_preset(TrainConfig.preset, recipe=TrainConfig.recipe)


def _recipe_help() -> str:
    """--recipe's help, its numbers read from RECIPES (config_for_preset)."""
    from iagcn.train.config import config_for_preset

    f = config_for_preset(TrainConfig.preset, recipe="frozen")
    p = config_for_preset(TrainConfig.preset, recipe="paper")

    def selection(c):
        return f"{c.val_fraction:.0%} hold-out selection" if c.val_fraction else "last epoch"

    return (f"Optimisation recipe the fields start from: frozen (standardize {f.standardize}; {f.optimizer.upper()} lr "
            f"{f.lr} + L2 {f.weight_decay} on the classifiers for the global branch, L2 {f.f_cnn_weight_decay} on "
            f"f_CNN, {f.region_optimizer} {f.region_lr} for the region side; {f.gcn_activation} label GCN; y_r "
            f"fused ({f.fusion_scale} scale) with lambda {f.fusion_lambda}; {f.schedule}; {f.epochs} epochs; "
            f"{selection(f)}; chosen on real photos, docs/training.md) or paper (section 4.3: "
            f"{p.optimizer.upper()} lr {p.lr} x{p.lr_gamma} every {p.lr_step} epochs, {p.epochs} epochs, lambda "
            f"{p.fusion_lambda}, {selection(p)}). Default: a --config file's recipe:, else {TrainConfig.recipe}; "
            f"the defaults shown below are the {TrainConfig.recipe} recipe's. [default: {TrainConfig.recipe}]")


def _common_options(f):
    T = default_config()                             # the defaults --help shows: what a run starts from
    step_only = f"schedule=step only (the paper recipe); refused under the default schedule={T.schedule}"
    opts = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="YAML or JSON file of config fields (e.g. a previous run's config.json; may name "
                          "train_cache / eval_cache); its recipe: is the recipe unless --recipe is given (a "
                          "different one is refused); options given on the command line override its fields."),
        click.option("--train-cache", type=click.Path(dir_okay=False), help="Cache of the training split (stage one)."),
        click.option("--eval-cache", type=click.Path(dir_okay=False),
                     help="Evaluation (test) cache, scored once at the end (and every epoch with --select-on-eval)."),
        click.option("--val-cache", type=click.Path(dir_okay=False), hidden=True,
                     help="Old name of --eval-cache (the hold-out, not this cache, is the validation split)."),
        click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None, help=_recipe_help()),
        config_option(T, "epochs", type=int, help="Training epochs."),
        config_option(T, "batch_size", type=int, help="Images per optimiser step."),
        config_option(T, "lr", type=float,
                      help=f"Initial learning rate of the heads (the parts that read x), the start of the "
                           f"{T.schedule} schedule."),
        config_option(T, "weight_decay", type=float, help="Weight decay of the heads."),
        config_option(T, "momentum", type=float, help="SGD momentum."),
        config_option(T, "lr_step", type=int, help=f"Epochs between learning-rate steps: {step_only}."),
        config_option(T, "lr_gamma", type=float,
                      help=f"Factor the learning rate is multiplied by at each step: {step_only}."),
        config_option(T, "grad_clip", type=float, help="Max gradient norm (0 = off)."),
        device_option(T, what="training (model and batches)"),
        config_option(T, "label_embeddings", help="H0: 'cache' (the train cache's) or a .npy (C, E) file."),
        config_option(T, "val_fraction", type=float,
                      help="Label-stratified fraction of the TRAIN cache held out to choose the epoch; 0 = last epoch."),
        config_option(T, "select_on_eval", is_flag=True,
                      help="Choose the epoch on the evaluation cache (the published, optimistic protocol)."),
        config_option(T, "memory_budget_gib", type=float, help="Load features into RAM up to this size (GiB), else stream."),
        config_option(T, "num_threads", "--threads", type=int, help="torch CPU threads (0 = torch's default)."),
        config_option(T, "tensorboard", is_flag=True,
                      help="Also log losses, lr, hold-out mAP and timing per epoch to RUN/tensorboard/ "
                           "(`tensorboard --logdir DIR`; needs the tensorboard package)."),
        config_option(T, "keep_checkpoints", type=click.Choice(["all", "best"]),
                      help="What a finished run keeps: last.pt and best.pt (one file, hard-linked, when the selected "
                           "epoch is the last), or best.pt only (the selected epoch)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Set any TrainConfig field, e.g. --set fusion_lambda=0.7 --set region_reading=region-nodes."),
        click.option("--quiet", is_flag=True,
                     help="No progress bars or per-epoch lines (train still prints its final 'done: ... mAP' line)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


#: the options of _common_options (and train's --seed) that set TrainConfig fields of the same name
_FIELD_OPTIONS = ("epochs", "batch_size", "lr", "weight_decay", "momentum", "lr_step", "lr_gamma", "grad_clip",
                  "device", "label_embeddings", "val_fraction", "select_on_eval", "memory_budget_gib", "num_threads",
                  "tensorboard", "keep_checkpoints", "seed")


def _explicit(options: dict) -> dict:
    """Explicit CLI options -> TrainConfig field values (options not given are left out)."""
    return given(**{k: v for k, v in options.items() if k in _FIELD_OPTIONS})


def _eval_cache_option(eval_cache: str | None, val_cache: str | None) -> str | None:
    """--eval-cache, or its old name --val-cache (both given: they must agree); see :func:`_alias_note`."""
    if val_cache is None:
        return eval_cache
    if eval_cache is not None and Path(eval_cache) != Path(val_cache):
        raise UserError(f"--eval-cache {eval_cache} and --val-cache {val_cache} (its old name) disagree; "
                        f"pass --eval-cache")
    return val_cache


def _alias_note(val_cache: str | None) -> None:
    """The one-line note for --val-cache, after the command succeeded (a refusal stays one error line)."""
    if val_cache is not None:
        click.echo("note: --val-cache is now --eval-cache (the evaluation split; the hold-out is the validation "
                   "split); using it", err=True)


def _config_file(path: str | None):
    from iagcn.configfile import load_config_file

    return load_config_file(path, TrainConfig) if path else None


def _option_name(field: str) -> str:
    """The command-line option of a TrainConfig field (what the user typed)."""
    return TRAIN_OPTIONS.get(field, "--" + field.replace("_", "-"))


def choose_recipe(recipe: str | None, file, config_file: str | None) -> str:
    """``--recipe``, else the file's ``recipe:``, else TrainConfig's default; both given and different: refused."""
    in_file = file.fields.get("recipe") if file is not None else None
    if recipe is not None and in_file is not None and recipe != in_file:
        raise UserError(f"--recipe {recipe} and --config {config_file} (recipe: {in_file}) disagree; drop --recipe to "
                        f"train the file's recipe, or change recipe: in the file (its values were chosen for it)")
    return recipe or in_file or TrainConfig.recipe


def set_keys(sets) -> list[str]:
    """The field names of ``--set key=value`` pairs, as :func:`iagcn.configio.apply_overrides` reads them."""
    return [pair.split("=", 1)[0].strip().replace("-", "_") for pair in sets if "=" in pair]


def resolve_config(preset: str, *, recipe: str, file_fields: dict, options: dict, sets, config_file: str | None = None,
                   base: TrainConfig | None = None) -> tuple[TrainConfig, list[str]]:
    """(the config that trains, warning lines): the one resolution order, lowest first.

    TrainConfig's defaults < PRESETS[preset] < RECIPES[recipe] (``config_for_preset``; or ``base``, a resumed run's
    recorded config) < the file's fields < the options given (``options``: field -> value, only those given) <
    ``--set``. Refused, in one line: ``--set recipe=`` / ``--set preset=`` (they would relabel the run without its
    values), an option and a ``--set`` of one field with different values, and an option or ``--set`` of a field the
    resolved config does not use (:func:`iagcn.train.config.unused_fields`); a file's value for such a field that
    differs from the preset + recipe's is a warning line (a run's config.json lists every field).
    """
    import dataclasses

    from iagcn.configfile import apply_file
    from iagcn.configio import apply_overrides
    from iagcn.train.config import config_for_preset, unused_fields

    keys = set_keys(sets)
    for key in ("recipe", "preset"):
        if key in keys:
            raise UserError(f"--set {key}=...: the {key} selects values, --set would only relabel the run; "
                            f"pass --{key} instead")
    start = base if base is not None else config_for_preset(preset, recipe=recipe)
    cfg = apply_file(start, file_fields)
    cfg = dataclasses.replace(cfg, **options)
    cfg = apply_overrides(cfg, sets)
    for key in keys:
        if key in options and getattr(cfg, key) != options[key]:
            raise UserError(f"{_option_name(key)} {options[key]} and --set {key}={getattr(cfg, key)} set the same "
                            f"field; pass one of them")
    unused = unused_fields(cfg)
    warnings = []
    for key, why in unused.items():
        if key in keys:
            raise UserError(f"--set {key}={getattr(cfg, key)}: {why}; drop it")
        if key in options:
            raise UserError(f"{_option_name(key)} {options[key]}: {why}; drop it")
        if key in file_fields and file_fields[key] != getattr(start, key):
            warnings.append(f"warning: --config {config_file}: {key}: {file_fields[key]} is not used: {why}")
    return cfg, warnings


def _open_data(path: str | None, option: str, budget: float, cfg):
    from iagcn.train.data import CacheData

    if not path:
        raise UserError(f"{option} is required (a cache written by `iagcn extract`; or name it in --config)")
    return CacheData(path, memory_budget_gib=budget, block_rows=cfg.stream_block_rows,
                     shuffle_buffer_blocks=cfg.shuffle_buffer_blocks, num_rois=cfg.num_rois)


@click.command("train")
@_common_options
@config_option(TrainConfig, "preset", help=" | ".join(PRESETS) + ".")
@config_option(TrainConfig, "seed", type=int, help="Seed of parameters, shuffling, noise and the holdout split.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the killed run in this directory (its config.json gives the config and caches); "
                   "execution options (--device, --threads, --memory-budget-gib, --set eval_batch_size=...) may "
                   "differ, any other change is refused.")
def train_cmd(config_file, train_cache, eval_cache, val_cache, recipe, sets, quiet, preset, out, resume_dir,
              **options) -> None:
    """Train one IA-GCN head (a preset of Tables 3-6) on cached features; write a run directory."""
    from iagcn.configfile import fields_for_preset
    from iagcn.train.config import recorded_config
    from iagcn.train.run import train_run

    eval_cache = _eval_cache_option(eval_cache, val_cache)
    explicit = _explicit(options)
    base, fields, name = None, {}, preset
    if resume_dir:
        from iagcn.train import runfolder

        if config_file:
            raise UserError("--resume takes the config from the run's own config.json; drop --config")
        record = runfolder.read_record(resume_dir, option="--resume")
        cfg = base = recorded_config(record["config"], source=str(Path(resume_dir) / runfolder.CONFIG))
        name = cfg.preset
        if preset and preset != cfg.preset:
            raise UserError(f"--resume {resume_dir}: the run is preset {cfg.preset}, not {preset}; drop --preset")
        if recipe and recipe != cfg.recipe:
            raise UserError(f"--resume {resume_dir}: the run used recipe {cfg.recipe}, not {recipe}; drop --recipe")
        train_cache = train_cache or runfolder.recorded_cache(resume_dir, "train", option="--resume")["path"]
        eval_cache = eval_cache or runfolder.recorded_cache(resume_dir, "eval", option="--resume")["path"]
        if out and Path(out).resolve() != Path(resume_dir).resolve():
            raise UserError("--out and --resume name different folders; pass only --resume DIR")
        out = resume_dir
    else:
        if not out:
            raise UserError("--out DIR is required (the run directory to write)")
        file = _config_file(config_file)
        name = preset or (file.fields.get("preset") if file else None) or TrainConfig.preset
        recipe = choose_recipe(recipe, file, config_file)
        if file is not None:
            fields, dropped = fields_for_preset(file, name, PRESETS)
            if dropped:
                click.echo(f"note: --config {config_file} is preset {file.fields['preset']}; --preset {name} keeps "
                           f"its own structure ({', '.join(d for d in dropped if d != 'preset')} not taken)", err=True)
            train_cache = train_cache or file.train_cache
            eval_cache = eval_cache or file.eval_cache
    cfg, warnings = resolve_config(name, recipe=recipe, file_fields=fields, options=explicit, sets=sets,
                                   config_file=config_file, base=base)
    for line in warnings:
        click.echo(line, err=True)
    resolve_device(cfg.device)                       # refuse a bad --device before opening anything
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    with _open_data(train_cache, "--train-cache", cfg.memory_budget_gib, cfg) as train_data, \
            _open_data(eval_cache, "--eval-cache", cfg.memory_budget_gib, cfg) as eval_data:
        result = train_run(cfg, train_data=train_data, eval_data=eval_data, out_dir=out, resume=bool(resume_dir),
                           progress=not quiet, log=log)
    if quiet:                                        # no progress, but the result: the final line, on stdout
        from iagcn.train.run import done_line

        click.echo(done_line(result))
    _alias_note(val_cache)


@click.command("sweep")
@_common_options
@click.option("--presets", default=",".join(PRESETS), show_default=True,
              help="Comma-separated presets.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Sweep directory (one run folder per preset x seed).")
@click.option("--baseline", default="mlgcn", show_default=True,
              help="Preset every other preset is compared with in table.md (ΔmAP, paired bootstrap 95% CI over "
                   "evaluation images); 'none' = no comparison column. Ignored when the preset is not swept.")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples for the ΔmAP interval.")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Add the linear-probe reference row (LogisticRegression on x, C by 3-fold CV on the train cache).")
@click.option("--grid", "grids", multiple=True, metavar="FIELD=V1,V2",
              help="Also vary a TrainConfig field over these values (repeatable: the cartesian product x presets x "
                   "seeds), e.g. --grid fusion_lambda=0.5,0.8 --grid epochs=20,40; a tuple field's values are "
                   "separated by ';' (gcn_widths=512,1024;1024). Each varied field is a column of the results.")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Train this many runs at once in worker processes (the threads are split between them; the "
                   "results equal one-by-one runs'). [default: 1, or one per --devices entry]")
@click.option("--devices", default=None, metavar="DEV,DEV",
              help="Comma-separated devices for the parallel runs, e.g. cuda:0,cuda:1: worker k trains on the "
                   "k-th (round-robin); instead of --device.")
@click.option("--wide-probe/--no-wide-probe", default=False, show_default=True,
              help="Add the wide-probe reference row: the same probe on [x, max over valid ROIs of X] (what the "
                   "region branch reads).")
def sweep_cmd(config_file, train_cache, eval_cache, val_cache, recipe, sets, quiet, presets, seeds, out, baseline,
              n_resamples, probe, grids, jobs, devices, wide_probe, **options) -> None:
    """Train every preset x grid point x seed on caches loaded once; write results.csv, table.md (paper layout),
    report.html."""
    from iagcn.configfile import preset_fields
    from iagcn.evaluate.ablation import write_sweep_table
    from iagcn.train.sweep import parse_grid, parse_list, run_names, run_sweep, sweep_configs

    eval_cache = _eval_cache_option(eval_cache, val_cache)
    explicit = _explicit(options)
    names = parse_list(presets, what="presets")
    seed_list = parse_list(seeds, what="seeds", cast=int)
    grid = parse_grid(grids, fixed={**{k: _option_name(k) for k in explicit}, **{k: "--set" for k in set_keys(sets)}})
    device_list = [d.strip() for d in (devices or "").split(",") if d.strip()]
    if devices is not None and not device_list:
        raise UserError("--devices is empty; give a comma-separated list, e.g. --devices cuda:0,cuda:1")
    if device_list and "device" in explicit:
        raise UserError("--device and --devices both given; pass --devices alone for parallel runs")
    for dev in device_list:
        resolve_device(dev)                          # a bad entry is refused before anything is opened
    jobs = jobs or max(1, len(device_list))
    fields: dict = {}
    file = _config_file(config_file)
    if file is not None:                             # the recipe; each preset keeps its structure, --seeds the seeds
        structural = preset_fields(PRESETS) | {"seed"}
        fields = {k: v for k, v in file.fields.items() if k not in structural}
        skipped = sorted(k for k in file.fields if k in structural)
        if skipped:
            click.echo(f"note: --config {config_file}: {', '.join(skipped)} not taken (each preset sets its own "
                       f"structure; --seeds sets the seeds)", err=True)
        train_cache = train_cache or file.train_cache
        eval_cache = eval_cache or file.eval_cache
    base_recipe = choose_recipe(recipe, file, config_file)
    warnings: list[str] = []

    def resolved(preset: str) -> TrainConfig:     # the seeds and grid values go on top (sweep_configs)
        cfg, lines = resolve_config(preset, recipe=base_recipe, file_fields=fields, options=explicit, sets=sets,
                                    config_file=config_file)
        warnings.extend(line for line in lines if line not in warnings)
        return cfg

    configs = sweep_configs(resolved, names, seed_list, grid)
    run_names(configs, list(grid))                   # two runs sharing a folder: refused before anything is opened
    for line in warnings:
        click.echo(line, err=True)
    cfg0 = configs[0]
    resolve_device(cfg0.device)                      # refuse a bad --device before opening anything
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    with _open_data(train_cache, "--train-cache", cfg0.memory_budget_gib, cfg0) as train_data, \
            _open_data(eval_cache, "--eval-cache", cfg0.memory_budget_gib, cfg0) as eval_data:
        run_sweep(configs, train_data=train_data, eval_data=eval_data, out_dir=out, progress=not quiet, log=log,
                  on_results=write_sweep_table, probe=probe, varied=list(grid), jobs=jobs, devices=device_list,
                  wide_probe=wide_probe)
    if baseline != "none" and baseline in names and len(names) > 1:
        # ΔmAP vs the baseline from the runs' saved evaluation scores (no retraining): table.md, ablation.json/.md
        from iagcn.evaluate.ablation import ablate_sweep
        from iagcn.evaluate.evaluation import EvalConfig
        from iagcn.train.probe import PROBE_NAME, WIDE_PROBE_NAME

        ablate_sweep(out, baseline=baseline, cache_path=eval_cache, config=EvalConfig(n_resamples=n_resamples, seed=0),
                     log=log, run_dirs=run_names(configs, list(grid)) + ([f"{PROBE_NAME}-s0"] if probe else [])
                     + ([f"{WIDE_PROBE_NAME}-s0"] if wide_probe else []))
    from iagcn.evaluate.sweep_report import write_sweep_report

    report = write_sweep_report(out, cache_path=eval_cache)
    click.echo((Path(out) / "table.md").read_text())
    written = [n for n in ("results.csv", "table.md", "ablation.json", "ablation.md") if (Path(out) / n).exists()]
    click.echo(f"wrote {out}/: {', '.join(written + [report.name])} (report.html: the table, every run, per-class AP, "
               f"training and PR curves overlaid, self-contained)")
    _alias_note(val_cache)


COMMANDS: list = [train_cmd, sweep_cmd]
