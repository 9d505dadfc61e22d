"""`iagcn` subcommands of the `train` stage: `iagcn train` and `iagcn sweep`. Each module lists its commands in COMMANDS."""
from __future__ import annotations

from pathlib import Path

import click

from iagcn.device import resolve_device
from iagcn.errors import UserError
from iagcn.options import config_option, device_option, given
from iagcn.train.config import PRESETS, RECIPES, TrainConfig


def _common_options(f):
    T = TrainConfig
    opts = [
        click.option("--train-cache", type=click.Path(dir_okay=False), help="Cache of the training split (stage one)."),
        click.option("--val-cache", type=click.Path(dir_okay=False),
                     help="Evaluation cache, scored once at the end (and every epoch with --select-on-eval)."),
        click.option("--recipe", type=click.Choice(sorted(RECIPES)), default=None,
                     help="Optimisation recipe the fields start from: frozen (standardised features; SGD lr 0.03 + L2 "
                          "1e-2 for the global branch, AdamW 1e-3 for the region side; cosine; 20 epochs; last epoch; "
                          "chosen on real photos) or paper (section 4.3: SGD lr 0.01 /10 every 30 epochs, 120 epochs, "
                          "10% hold-out selection). The defaults shown below are the frozen recipe's. [default: frozen]"),
        config_option(T, "epochs", type=int, help="Training epochs."),
        config_option(T, "batch_size", type=int, help="Images per SGD step."),
        config_option(T, "lr", type=float, help="Initial learning rate, times lr_gamma every lr_step epochs."),
        device_option(T, what="training (model and batches)"),
        config_option(T, "label_embeddings", help="H0: 'cache' (the train cache's) or a .npy (C, E) file."),
        config_option(T, "val_fraction", type=float,
                      help="Label-stratified fraction of the TRAIN cache held out to choose the epoch; 0 = last epoch."),
        config_option(T, "select_on_eval", is_flag=True,
                      help="Choose the epoch on the evaluation cache (the published, optimistic protocol)."),
        config_option(T, "memory_budget_gib", type=float, help="Load features into RAM up to this size (GiB), else stream."),
        config_option(T, "num_threads", "--threads", type=int, help="torch CPU threads (0 = torch's default)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Set any TrainConfig field, e.g. --set fusion_lambda=0.7 --set region_reading=region-nodes."),
        click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


#: the options of _common_options (and train's --seed) that set TrainConfig fields of the same name
_FIELD_OPTIONS = ("epochs", "batch_size", "lr", "device", "label_embeddings", "val_fraction", "select_on_eval",
                  "memory_budget_gib", "num_threads", "seed")


def _explicit(**kw) -> dict:
    """Explicit CLI options -> TrainConfig field values (options not given are left out)."""
    return given(**{k: v for k, v in kw.items() if k in _FIELD_OPTIONS})


def _open_data(path: str | None, option: str, budget: float, cfg):
    from iagcn.train.data import CacheData

    if not path:
        raise UserError(f"{option} is required (a cache written by `iagcn extract`)")
    return CacheData(path, memory_budget_gib=budget, block_rows=cfg.stream_block_rows,
                     shuffle_buffer_blocks=cfg.shuffle_buffer_blocks)


@click.command("train")
@_common_options
@config_option(TrainConfig, "preset", help=" | ".join(PRESETS) + ".")
@config_option(TrainConfig, "seed", type=int, help="Seed of parameters, shuffling, noise and the holdout split.")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the killed run in this directory (its config.json gives the config and caches); "
                   "execution options (--device, --threads, --memory-budget-gib, --set eval_batch_size=...) may "
                   "differ, any other change is refused.")
def train_cmd(train_cache, val_cache, recipe, epochs, batch_size, lr, device, label_embeddings, val_fraction, select_on_eval,
              memory_budget_gib, num_threads, sets, quiet, preset, seed, out, resume_dir) -> None:
    """Train one IA-GCN head (a preset of Tables 3-6) on cached features; write a run directory."""
    import dataclasses

    from iagcn.configio import apply_overrides, config_from_dict
    from iagcn.train.config import config_for_preset
    from iagcn.train.run import train_run

    explicit = _explicit(epochs=epochs, batch_size=batch_size, lr=lr, device=device, label_embeddings=label_embeddings,
                         val_fraction=val_fraction, select_on_eval=select_on_eval,
                         memory_budget_gib=memory_budget_gib, num_threads=num_threads, seed=seed)
    if resume_dir:
        from iagcn.train import runfolder

        record = runfolder.read_record(resume_dir, option="--resume")
        cfg = config_from_dict(TrainConfig, record["config"], source=str(Path(resume_dir) / runfolder.CONFIG))
        if recipe and recipe != cfg.recipe:
            raise UserError(f"--resume {resume_dir}: the run used recipe {cfg.recipe}, not {recipe}; drop --recipe")
        if preset and preset != cfg.preset:
            raise UserError(f"--resume {resume_dir}: the run is preset {cfg.preset}, not {preset}; drop --preset")
        train_cache = train_cache or runfolder.recorded_cache(resume_dir, "train", option="--resume")["path"]
        val_cache = val_cache or runfolder.recorded_cache(resume_dir, "eval", option="--resume")["path"]
        if out and Path(out).resolve() != Path(resume_dir).resolve():
            raise UserError("--out and --resume name different folders; pass only --resume DIR")
        out = resume_dir
    else:
        if not out:
            raise UserError("--out DIR is required (the run directory to write)")
        cfg = config_for_preset(preset or TrainConfig.preset, recipe=recipe or "frozen")
    cfg = dataclasses.replace(cfg, **explicit)
    cfg = apply_overrides(cfg, sets)
    resolve_device(cfg.device)                       # refuse a bad --device before opening anything
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    with _open_data(train_cache, "--train-cache", cfg.memory_budget_gib, cfg) as train_data, \
            _open_data(val_cache, "--val-cache", cfg.memory_budget_gib, cfg) as eval_data:
        train_run(cfg, train_data=train_data, eval_data=eval_data, out_dir=out, resume=bool(resume_dir),
                  progress=not quiet, log=log)


@click.command("sweep")
@_common_options
@click.option("--presets", default=",".join(PRESETS), show_default=True,
              help="Comma-separated presets.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds.")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Sweep directory (one run folder per preset x seed).")
@click.option("--baseline", default="mlgcn", show_default=True,
              help="Preset every other preset is compared with in table.md (ΔmAP, paired bootstrap 95% CI over "
                   "evaluation images); 'none' = no comparison column. Ignored when the preset is not swept.")
@click.option("--probe/--no-probe", default=True, show_default=True,
              help="Add the linear-probe reference row (LogisticRegression on x, C by 3-fold CV on the train cache).")
@click.option("--bootstrap", "n_resamples", type=click.IntRange(min=100), default=1000, show_default=True,
              help="Bootstrap resamples for the ΔmAP interval.")
def sweep_cmd(train_cache, val_cache, recipe, epochs, batch_size, lr, device, label_embeddings, val_fraction, select_on_eval,
              memory_budget_gib, num_threads, sets, quiet, presets, seeds, out, probe, baseline, n_resamples) -> None:
    """Train every preset x seed on caches loaded once; write results.csv and table.md (paper layout)."""
    import dataclasses

    from iagcn.configio import apply_overrides
    from iagcn.train.config import config_for_preset
    from iagcn.evaluate.ablation import write_sweep_table
    from iagcn.train.sweep import parse_list, run_sweep

    explicit = _explicit(epochs=epochs, batch_size=batch_size, lr=lr, device=device, label_embeddings=label_embeddings,
                         val_fraction=val_fraction, select_on_eval=select_on_eval,
                         memory_budget_gib=memory_budget_gib, num_threads=num_threads)
    names = parse_list(presets, what="presets")
    seed_list = parse_list(seeds, what="seeds", cast=int)
    configs = [apply_overrides(dataclasses.replace(config_for_preset(p, recipe=recipe or "frozen"), seed=s, **explicit),
                               sets)
               for p in names for s in seed_list]
    cfg0 = configs[0]
    resolve_device(cfg0.device)                      # refuse a bad --device before opening anything
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    with _open_data(train_cache, "--train-cache", cfg0.memory_budget_gib, cfg0) as train_data, \
            _open_data(val_cache, "--val-cache", cfg0.memory_budget_gib, cfg0) as eval_data:
        run_sweep(configs, train_data=train_data, eval_data=eval_data, out_dir=out, progress=not quiet, log=log,
                  on_results=write_sweep_table, probe=probe)
    if baseline != "none" and baseline in names and len(names) > 1:
        # ΔmAP vs the baseline from the runs' saved evaluation scores (no retraining): table.md, ablation.json/.md
        from iagcn.evaluate.ablation import ablate_sweep
        from iagcn.evaluate.evaluation import EvalConfig
        from iagcn.train.probe import PROBE_NAME

        ablate_sweep(out, baseline=baseline, cache_path=val_cache, config=EvalConfig(n_resamples=n_resamples, seed=0),
                     log=log, members=[(c.preset, c.seed) for c in configs] + ([(PROBE_NAME, 0)] if probe else []))
    click.echo((Path(out) / "table.md").read_text())


COMMANDS: list = [train_cmd, sweep_cmd]
