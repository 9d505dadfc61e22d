"""CLI defaults come from the config dataclasses, never repeated (issue 10), and one --device vocabulary."""
from __future__ import annotations

import dataclasses

import click
import pytest
from click.testing import CliRunner

from iagcn.cli import main
from iagcn.evaluate.evaluation import EvalConfig
from iagcn.extract.config import ExtractConfig
from iagcn.options import default_text
from iagcn.train.config import TrainConfig

#: command -> the config dataclass its options set
COMMANDS = {"extract": ExtractConfig, "train": TrainConfig, "sweep": TrainConfig, "eval": EvalConfig,
            "compare": EvalConfig, "explain": EvalConfig, "predict": EvalConfig}


#: options named like a field that deliberately have no dataclass default on the command line
NOT_DEFAULTED = {("eval", "scores_are"),      # required with --scores: no silent guess between logits/probabilities
                 ("eval", "pr_classes"),      # the CLI picks the 3 most frequent classes; EvalConfig's () = none
                 ("predict", "top_k")}        # predict's own cap on labels per image, not EvalConfig's top-k block


def _field_options(name):
    cmd = main.commands[name]
    fields = {f.name: f for f in dataclasses.fields(COMMANDS[name])}
    return [(p, fields[p.name]) for p in cmd.params
            if isinstance(p, click.Option) and p.name in fields and not p.required
            and (name, p.name) not in NOT_DEFAULTED]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_field_options_take_their_default_from_the_dataclass(name):
    pairs = _field_options(name)
    assert pairs, name
    for opt, field in pairs:
        # no default of its own: "not given" leaves the dataclass's (or the resumed run's / preset's) value
        assert opt.default is None and not opt.show_default, (name, opt.name)
        if field.default is not None:
            assert f"[default: {default_text(field.default)}]" in opt.help, (name, opt.name, opt.help)
        else:
            assert "[default: " in opt.help, (name, opt.name)


def test_the_options_cover_the_fields_each_command_exposes():
    assert {o.name for o, _ in _field_options("extract")} == {f.name for f in dataclasses.fields(ExtractConfig)} - {
        "dataset", "root", "split", "roi_output_size", "roi_sampling_ratio"}      # required / --set only
    assert {o.name for o, _ in _field_options("train")} >= {"epochs", "batch_size", "lr", "device", "num_threads",
                                                             "memory_budget_gib", "seed", "preset"}
    assert {o.name for o, _ in _field_options("predict")} == {"threshold", "which", "device"}


def test_help_shows_the_dataclass_default(monkeypatch):
    """Change a dataclass default and --help follows: the default is written in one place."""
    field = next(f for f in dataclasses.fields(ExtractConfig) if f.name == "num_rois")
    assert field.default == 40
    out = CliRunner().invoke(main, ["extract", "--help"], terminal_width=200).output
    assert "Proposals per image (N). [default: 40]" in out
    out = CliRunner().invoke(main, ["train", "--help"], terminal_width=200).output
    assert f"[default: {TrainConfig.epochs}]" in out and f"[default: {TrainConfig.device}]" in out


@pytest.mark.parametrize("args", [
    ["extract", "--dataset", "csv", "--root", "nowhere", "--split", "s"],
    ["train", "--train-cache", "a.h5", "--eval-cache", "b.h5", "--out", "r"],
    ["sweep", "--train-cache", "a.h5", "--eval-cache", "b.h5", "--out", "r"],
    ["eval", "--run", "nowhere"],
    ["explain", "--run", "nowhere", "--image-id", "x", "--out", "o"],
    ["predict", "--run", "nowhere", "x.jpg"],
])
def test_every_command_speaks_one_device_vocabulary(args, tmp_path, monkeypatch):
    """A malformed --device is refused by the one resolver, first, with the same line, by every command."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [*args, "--device", "gpu"])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == "error: --device gpu: unknown device; use auto | cpu | cuda[:k]"


# -- help that matches behaviour (issue 18) ----------------------------------------------------------------------

def _train_option_helps(name):
    return {p.name: p.help for p in main.commands[name].params if isinstance(p, click.Option)}


@pytest.mark.parametrize("name", ["train", "sweep"])
def test_train_help_names_the_default_a_run_really_starts_from(name):
    """The default shown is the default preset under the default recipe, not a bare dataclass default."""
    from iagcn.train.config import config_for_preset

    real = config_for_preset(TrainConfig.preset, recipe=TrainConfig.recipe)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    helps = _train_option_helps(name)
    checked = [k for k in helps if k in fields]
    assert {"epochs", "lr", "batch_size", "lr_step", "lr_gamma", "momentum"} <= set(checked)
    for key in checked:
        assert helps[key].endswith(f"[default: {default_text(getattr(real, key))}]"), (key, helps[key])
    assert helps["recipe"].endswith(f"[default: {TrainConfig.recipe}]")


@pytest.mark.parametrize("name", ["train", "sweep"])
def test_no_help_describes_a_schedule_the_default_does_not_run(name):
    from iagcn.train.config import config_for_preset, unused_fields

    real = config_for_preset(TrainConfig.preset, recipe=TrainConfig.recipe)
    helps = _train_option_helps(name)
    assert real.schedule == "cosine" and {"lr_step", "lr_gamma"} <= set(unused_fields(real))
    for key in ("lr", "batch_size", "weight_decay", "momentum", "epochs"):
        assert "lr_step" not in helps[key] and "every" not in helps[key] and "SGD step" not in helps[key], helps[key]
    assert f"the start of the {real.schedule} schedule" in helps["lr"]
    for key in unused_fields(real):                     # an option the default does not read says so
        if key in helps:
            assert f"refused under the default schedule={real.schedule}" in helps[key], (key, helps[key])
    # --recipe's numbers are the recipes'
    frozen, paper = (config_for_preset(TrainConfig.preset, recipe=r) for r in ("frozen", "paper"))
    assert f"lambda {frozen.fusion_lambda}; {frozen.schedule}; {frozen.epochs} epochs" in helps["recipe"]
    assert f"lr {paper.lr} x{paper.lr_gamma} every {paper.lr_step} epochs, {paper.epochs} epochs" in helps["recipe"]


def test_config_option_shows_an_instances_value():
    """config_option(instance, ...) reads the instance: a recipe's value, not the dataclass default, is shown."""
    from iagcn.options import config_option

    cfg = dataclasses.replace(TrainConfig(), epochs=7)

    @click.command()
    @config_option(cfg, "epochs", type=int, help="Epochs.")
    def cmd(epochs):
        pass

    assert cmd.params[0].help == "Epochs. [default: 7]" and cmd.params[0].default is None
