"""`iagcn` subcommands of the `train` stage: `iagcn train` and `iagcn sweep`. Each module lists its commands in COMMANDS."""
from __future__ import annotations

import json
from pathlib import Path

import click

from iagcn.errors import UserError


def _common_options(f):
    opts = [
        click.option("--train-cache", type=click.Path(dir_okay=False), help="Cache of the training split (stage one)."),
        click.option("--val-cache", type=click.Path(dir_okay=False),
                     help="Evaluation cache, scored once at the end (and every epoch with --select-on-eval)."),
        click.option("--recipe", type=click.Choice(["frozen", "paper"]), default=None,
                     help="Optimisation recipe the fields start from: frozen (standardised features, SGD lr 0.03 with "
                          "L2 1e-2, cosine, 20 epochs, last epoch; chosen on real photos) or paper (section 4.3: SGD lr 0.01 /10 every 30 "
                          "epochs, 120 epochs, 10% hold-out selection) [frozen]."),
        click.option("--epochs", type=int, help="Training epochs [recipe: frozen 20, paper 120]."),
        click.option("--batch-size", type=int, help="Images per optimiser step [32]."),
        click.option("--lr", type=float, help="Initial learning rate [recipe: frozen 0.03, paper 0.01]."),
        click.option("--device", help="auto | cpu | cuda[:k] [auto]."),
        click.option("--label-embeddings", help="H0: 'cache' (the train cache's) or a .npy (C, E) file [cache]."),
        click.option("--val-fraction", type=float,
                     help="Label-stratified fraction of the TRAIN cache held out to choose the epoch "
                          "[recipe: frozen 0 = the last epoch, paper 0.1]."),
        click.option("--select-on-eval", is_flag=True, default=None,
                     help="Choose the epoch on the evaluation cache (the published, optimistic protocol)."),
        click.option("--memory-budget-gib", type=float, help="Load features into RAM up to this size, else stream [4]."),
        click.option("--threads", type=int, help="torch CPU threads (0 = torch default)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Set any TrainConfig field, e.g. --set fusion_lambda=0.7 --set region_reading=region-nodes."),
        click.option("--quiet", is_flag=True, help="No progress bars or per-epoch lines."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _explicit(**kw) -> dict:
    """Explicit CLI options -> TrainConfig field values (None = not given)."""
    names = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "device": "device",
             "label_embeddings": "label_embeddings", "val_fraction": "val_fraction",
             "select_on_eval": "select_on_eval", "memory_budget_gib": "memory_budget_gib", "threads": "num_threads",
             "seed": "seed"}
    return {names[k]: v for k, v in kw.items() if k in names and v is not None}


def _open_data(path: str | None, option: str, budget: float, cfg):
    from iagcn.train.data import CacheData

    if not path:
        raise UserError(f"{option} is required (a cache written by `iagcn extract`)")
    return CacheData(path, memory_budget_gib=budget, block_rows=cfg.stream_block_rows,
                     shuffle_buffer_blocks=cfg.shuffle_buffer_blocks)


@click.command("train")
@_common_options
@click.option("--preset", help="resnet | mlgcn | idlcm | idlcm-vi | iagcn | comsco | mlgcn-comsco [iagcn].")
@click.option("--seed", type=int, help="Seed of parameters, shuffling, noise and the holdout split [0].")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the killed run in this directory (its config.json gives the config and caches).")
def train_cmd(train_cache, val_cache, recipe, epochs, batch_size, lr, device, label_embeddings, val_fraction, select_on_eval,
              memory_budget_gib, threads, sets, quiet, preset, seed, out, resume_dir) -> None:
    """Train one IA-GCN head (a preset of Tables 3-6) on cached features; write a run directory."""
    import dataclasses

    from iagcn.configio import apply_overrides, config_from_dict
    from iagcn.train.config import TrainConfig, config_for_preset
    from iagcn.train.run import train_run

    explicit = _explicit(epochs=epochs, batch_size=batch_size, lr=lr, device=device, label_embeddings=label_embeddings,
                         val_fraction=val_fraction, select_on_eval=select_on_eval,
                         memory_budget_gib=memory_budget_gib, threads=threads, seed=seed)
    if resume_dir:
        record_path = Path(resume_dir) / "config.json"
        if not record_path.exists():
            raise UserError(f"--resume {resume_dir}: no config.json there; is it an `iagcn train --out` folder?")
        record = json.loads(record_path.read_text())
        cfg = config_from_dict(TrainConfig, record["config"], source=str(record_path))
        if recipe and recipe != cfg.recipe:
            raise UserError(f"--resume {resume_dir}: the run used recipe {cfg.recipe}, not {recipe}; drop --recipe")
        if preset and preset != cfg.preset:
            raise UserError(f"--resume {resume_dir}: the run is preset {cfg.preset}, not {preset}; drop --preset")
        train_cache = train_cache or record["train_cache"]["path"]
        val_cache = val_cache or record["eval_cache"]["path"]
        if out and Path(out).resolve() != Path(resume_dir).resolve():
            raise UserError("--out and --resume name different folders; pass only --resume DIR")
        out = resume_dir
    else:
        if not out:
            raise UserError("--out DIR is required (the run directory to write)")
        cfg = config_for_preset(preset or "iagcn", recipe=recipe or "frozen")
    cfg = dataclasses.replace(cfg, **explicit)
    cfg = apply_overrides(cfg, sets)
    train_data = _open_data(train_cache, "--train-cache", cfg.memory_budget_gib, cfg)
    eval_data = _open_data(val_cache, "--val-cache", cfg.memory_budget_gib, cfg)
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    train_run(cfg, train_data=train_data, eval_data=eval_data, out_dir=out, resume=bool(resume_dir),
              progress=not quiet, log=log)


@click.command("sweep")
@_common_options
@click.option("--presets", default="resnet,mlgcn,idlcm,idlcm-vi,iagcn,comsco,mlgcn-comsco", show_default=True,
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
              memory_budget_gib, threads, sets, quiet, presets, seeds, out, probe, baseline, n_resamples) -> None:
    """Train every preset x seed on caches loaded once; write results.csv and table.md (paper layout)."""
    import dataclasses

    from iagcn.configio import apply_overrides
    from iagcn.train.config import config_for_preset
    from iagcn.train.sweep import parse_list, run_sweep

    explicit = _explicit(epochs=epochs, batch_size=batch_size, lr=lr, device=device, label_embeddings=label_embeddings,
                         val_fraction=val_fraction, select_on_eval=select_on_eval,
                         memory_budget_gib=memory_budget_gib, threads=threads)
    names = parse_list(presets, what="presets")
    seed_list = parse_list(seeds, what="seeds", cast=int)
    configs = [apply_overrides(dataclasses.replace(config_for_preset(p, recipe=recipe or "frozen"), seed=s, **explicit), sets)
               for p in names for s in seed_list]
    cfg0 = configs[0]
    train_data = _open_data(train_cache, "--train-cache", cfg0.memory_budget_gib, cfg0)
    eval_data = _open_data(val_cache, "--val-cache", cfg0.memory_budget_gib, cfg0)
    log = (lambda *_: None) if quiet else (lambda m: click.echo(m, err=True))
    run_sweep(configs, train_data=train_data, eval_data=eval_data, out_dir=out, progress=not quiet, log=log,
              probe=probe)
    if baseline != "none" and baseline in names and len(names) > 1:
        from iagcn.train.sweep import write_ablation

        write_ablation(out, baseline=baseline, cache_path=val_cache, n_resamples=n_resamples, log=log)
    click.echo((Path(out) / "table.md").read_text())


COMMANDS: list = [train_cmd, sweep_cmd]
