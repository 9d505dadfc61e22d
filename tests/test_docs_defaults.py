"""Defaults quoted in README.md, docs/training.md and the Makefile are the code's (issue 21): read and compared."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from iagcn.cli import main
from iagcn.train.config import PRESETS, TrainConfig, config_for_preset

from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
TRAINING = (REPO_ROOT / "docs" / "training.md").read_text()
FROZEN = config_for_preset(TrainConfig.preset, recipe="frozen")
PAPER = config_for_preset(TrainConfig.preset, recipe="paper")
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def _row(text: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r}")


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(NUMBER, cell)]


def test_preset_tables_quote_each_recipes_lambda():
    frozen, paper = config_for_preset("iagcn", recipe="frozen"), config_for_preset("iagcn", recipe="paper")
    readme = _row(README, "`iagcn`")[-1]
    assert re.search(rf"lambda = {frozen.fusion_lambda:g} under the default \({TrainConfig.recipe}\) recipe", readme)
    assert f"`--recipe paper`: lambda = {paper.fusion_lambda:g}" in readme
    training = _row(TRAINING, "`iagcn`")[-1]
    assert f"lambda {frozen.fusion_lambda:g} under the frozen recipe, {paper.fusion_lambda:g} under `paper`" in training
    assert f"`fusion_lambda` {TrainConfig.fusion_lambda:g}, the frozen recipe {frozen.fusion_lambda:g}" in TRAINING


@pytest.mark.parametrize("first_cell,fields", [
    ("`fusion_lambda` (Eq. 11)", ["fusion_lambda"]),
    ("`val_fraction`", ["val_fraction"]),
    ("`vi_lr_scale`", ["vi_lr_scale"]),
    ("`f_cnn_weight_decay`", ["f_cnn_weight_decay"]),
])
def test_recipe_table_numbers_are_the_recipes(first_cell, fields):
    _, frozen_cell, paper_cell = _row(TRAINING, first_cell)[:3]
    for cfg, cell in ((FROZEN, frozen_cell), (PAPER, paper_cell)):
        values = [getattr(cfg, f) for f in fields]
        if values == [None]:
            assert cell.startswith("null"), cell
        else:
            assert _numbers(cell)[:len(values)] == pytest.approx(values), (first_cell, cell)


def test_recipe_table_schedule_epochs_and_optimizer_are_the_recipes():
    _, frozen_cell, paper_cell = _row(TRAINING, "`schedule`, `epochs`")[:3]
    assert frozen_cell == f"{FROZEN.schedule}, {FROZEN.epochs}"
    assert paper_cell == f"{PAPER.schedule} (/{1 / PAPER.lr_gamma:g} every {PAPER.lr_step}), {PAPER.epochs}"
    _, frozen_cell, paper_cell = _row(TRAINING, "`optimizer`, `lr`, `weight_decay`, `momentum`")[:3]
    for cfg, cell in ((FROZEN, frozen_cell), (PAPER, paper_cell)):
        assert cell.startswith(cfg.optimizer.upper() + ", ")
        assert _numbers(cell.replace("L2", ""))[:3] == pytest.approx([cfg.lr, cfg.weight_decay, cfg.momentum]), cell


def test_readme_recipe_paragraph_quotes_the_recipes():
    text = " ".join(README.split())
    assert (f"lambda {FROZEN.fusion_lambda:g} (the paper: {PAPER.fusion_lambda:g}) plus a loss on each branch, "
            f"{FROZEN.schedule} schedule, {FROZEN.epochs} epochs, the last epoch") in text
    assert FROZEN.val_fraction == 0
    assert (f"lr {PAPER.lr:g} /{1 / PAPER.lr_gamma:g} every {PAPER.lr_step} epochs, {PAPER.epochs} epochs, "
            f"grad-norm clip {PAPER.grad_clip:g}, the epoch chosen on a {PAPER.val_fraction:.0%} label-stratified") \
        in text


def test_training_md_quotes_the_selection_defaults():
    assert (f"`--val-fraction F` (frozen recipe: {FROZEN.val_fraction:g}, the last epoch; paper recipe: "
            f"{PAPER.val_fraction:g}") in TRAINING
    # no statement of another default for make train / make sweep
    assert "VAL_FRACTION=0.1)" not in TRAINING and "default 0.1, also in `make train`" not in TRAINING


def _make_dry(target: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    p = subprocess.run(["make", "-s", "-n", "-C", str(REPO_ROOT), "-o", ".venv/.installed", target, "IAGCN=iagcn"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_make_passes_no_default_of_its_own():
    """`make train` / `make sweep` with no variables give the CLI's defaults: the CLI, not the Makefile, decides."""
    sweep = _make_dry("sweep")
    assert "--presets" not in sweep and "--recipe" not in sweep and "--val-fraction" not in sweep, sweep
    train = _make_dry("train")
    assert "--recipe" not in train and "--val-fraction" not in train and "--epochs" not in train, train
    presets = next(p for p in main.commands["sweep"].params if p.name == "presets")
    assert presets.default == ",".join(PRESETS)
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^PRESETS \?=\s*$", makefile, re.M) and re.search(r"^RECIPE \?=\s*$", makefile, re.M)
