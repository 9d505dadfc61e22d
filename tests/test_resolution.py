"""One resolution order for a run's config (issue 21): what trained is what is recorded.

preset < recipe < --config FILE < the options given < --set; the recipe is --recipe, else the file's recipe:;
both given and different, or a --set that only relabels, or an option the resolved config does not use: refused.
Through the real CLI (CliRunner) and through the real Makefile (a subprocess `make train` / `make sweep`).
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from iagcn.cli import main

from conftest import REPO_ROOT, cli_env

#: RECIPES["paper"] as section 4.3 writes it (independent of train/config.py): what a paper run must train with
PAPER = {"schedule": "step", "lr": 0.01, "lr_step": 30, "lr_gamma": 0.1, "standardize": "none", "optimizer": "sgd",
         "region_optimizer": "same", "weight_decay": 1e-4}


@pytest.fixture(scope="module")
def caches(tiny_caches):
    return tiny_caches


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _train(caches, out, *args):
    return CliRunner().invoke(main, ["train", "--train-cache", caches[0], "--eval-cache", caches[1], "--out", str(out),
                                     "--preset", "resnet", "--quiet", "--device", "cpu", *args])


def _record(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _first_lr(run: Path) -> float:
    with open(run / "log.csv") as f:
        return float(next(csv.DictReader(f))["lr"])


# -- the recipe of a config file -------------------------------------------------------------------------------

def test_config_files_recipe_trains_through_iagcn(caches, tmp_path):
    cfg = _write(tmp_path / "paper.yaml", "recipe: paper\nepochs: 1\n")
    r = _train(caches, tmp_path / "run", "--config", cfg)
    assert r.exit_code == 0, r.output
    rec = _record(tmp_path / "run")
    assert rec["recipe"] == rec["config"]["recipe"] == "paper"
    assert {k: rec["config"][k] for k in PAPER} == PAPER
    assert _first_lr(tmp_path / "run") == pytest.approx(0.01)   # what trained: the paper's lr, epoch 1


def test_explicit_recipe_that_contradicts_the_file_is_refused(caches, tmp_path):
    cfg = _write(tmp_path / "paper.yaml", "recipe: paper\nepochs: 1\n")
    r = _train(caches, tmp_path / "run", "--config", cfg, "--recipe", "frozen")
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--recipe frozen" in lines[0] and "recipe: paper" in lines[0], r.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_explicit_recipe_with_a_file_without_recipe_starts_from_it(caches, tmp_path):
    cfg = _write(tmp_path / "mine.yaml", "epochs: 1\nlr: 0.05\n")
    r = _train(caches, tmp_path / "run", "--config", cfg, "--recipe", "paper")
    assert r.exit_code == 0, r.output
    c = _record(tmp_path / "run")["config"]
    assert c["recipe"] == "paper" and c["schedule"] == "step" and c["lr"] == 0.05 and c["epochs"] == 1
    assert _first_lr(tmp_path / "run") == pytest.approx(0.05)


def test_options_override_the_file_and_set_overrides_the_defaults(caches, tmp_path):
    cfg = _write(tmp_path / "mine.yaml", "recipe: paper\nepochs: 3\nlr: 0.05\nbatch_size: 7\n")
    r = _train(caches, tmp_path / "run", "--config", cfg, "--epochs", "1", "--set", "lr=0.02",
               "--set", "momentum=0.5")
    assert r.exit_code == 0, r.output
    c = _record(tmp_path / "run")["config"]
    # option > file; --set > file; file > recipe; recipe > preset (paper: standardize none; preset resnet: linear)
    assert (c["epochs"], c["lr"], c["momentum"], c["batch_size"]) == (1, 0.02, 0.5, 7)
    assert c["standardize"] == "none" and c["global_branch"] == "linear"


@pytest.mark.parametrize("args,needle", [
    (["--set", "recipe=paper"], "--set recipe"),            # would relabel a frozen run "paper"
    (["--set", "preset=mlgcn"], "--set preset"),            # would relabel a resnet run "mlgcn"
    (["--lr", "0.1", "--set", "lr=0.2"], "--lr 0.1"),       # two values for one field
])
def test_relabelling_and_conflicting_sets_are_refused(caches, tmp_path, args, needle):
    r = _train(caches, tmp_path / "run", "--epochs", "1", *args)
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and needle in r.output, r.output


def test_sweep_takes_the_files_recipe_and_refuses_a_contradicting_one(caches, tmp_path):
    cfg = _write(tmp_path / "paper.yaml", "recipe: paper\nepochs: 1\n")
    base = ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "resnet", "--seeds", "0",
            "--quiet", "--no-probe", "--device", "cpu", "--config", cfg]
    r = CliRunner().invoke(main, [*base, "--recipe", "frozen", "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "--recipe frozen" in r.output and len(r.output.strip().splitlines()) == 1, r.output


# -- options the resolved config does not use --------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--lr-step", "1", "--lr-gamma", "0.5"], "--lr-step 1"),
    (["--lr-gamma", "0.5"], "--lr-gamma 0.5"),
    (["--set", "lr_step=1"], "--set lr_step=1"),
])
def test_step_options_under_the_cosine_schedule_are_refused(caches, tmp_path, args, needle):
    r = _train(caches, tmp_path / "run", "--epochs", "1", *args)
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and needle in r.output and "cosine" in r.output, r.output


@pytest.mark.parametrize("args,needle", [
    (["--select-on-eval", "--val-fraction", "0.2"], "--val-fraction 0.2"),          # no hold-out is split off
    (["--set", "early_stop_patience=2"], "--set early_stop_patience=2"),            # last epoch: nothing to stop on
    (["--set", "optimizer=adamw", "--set", "region_optimizer=adamw", "--momentum", "0.5"], "--momentum 0.5"),
])
def test_other_options_the_config_does_not_read_are_refused(caches, tmp_path, args, needle):
    r = _train(caches, tmp_path / "run", "--epochs", "1", *args)
    assert r.exit_code != 0
    assert len(r.output.strip().splitlines()) == 1 and needle in r.output and "drop it" in r.output, r.output


def test_step_options_under_the_step_schedule_are_taken(caches, tmp_path):
    r = _train(caches, tmp_path / "run", "--epochs", "2", "--recipe", "paper", "--lr-step", "1", "--lr-gamma", "0.5")
    assert r.exit_code == 0, r.output
    with open(tmp_path / "run" / "log.csv") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert lrs == pytest.approx([0.01, 0.005])


def test_a_files_unused_value_is_a_warning_line(caches, tmp_path):
    cfg = _write(tmp_path / "mine.yaml", "epochs: 1\nlr_step: 5\n")
    r = _train(caches, tmp_path / "run", "--config", cfg)
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if "lr_step" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --config") and "cosine" in warnings[0]
    # a run's own config.json lists every field (lr_step at the recipe's value): no warning when it is reused
    assert _train(caches, tmp_path / "plain", "--epochs", "1").exit_code == 0
    r = _train(caches, tmp_path / "again", "--config", str(tmp_path / "plain" / "config.json"), "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "warning: --config" not in r.output, r.output


# -- the Makefile ------------------------------------------------------------------------------------------------

def _make(target: str, caches, tmp_path, **variables) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("no make")
    stamp = ".venv/.installed"     # -o: never (re)build the venv from a test
    args = ["make", "-s", "-C", str(REPO_ROOT), "-o", stamp, target, f"IAGCN={sys.executable} -m iagcn",
            f"TRAIN_CACHE={caches[0]}", f"EVAL_CACHE={caches[1]}", "DEVICE=cpu",
            *(f"{k}={v}" for k, v in variables.items())]
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=cli_env(OMP_NUM_THREADS="1"))


def test_make_train_config_trains_the_files_recipe(caches, tmp_path):
    cfg = _write(tmp_path / "paper3.yaml", "preset: resnet\nrecipe: paper\nepochs: 1\n")
    p = _make("train", caches, tmp_path, CONFIG=cfg, RUN=tmp_path / "run", TRAIN_ARGS="--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    rec = _record(tmp_path / "run")
    assert rec["recipe"] == "paper" and {k: rec["config"][k] for k in PAPER} == PAPER
    assert _first_lr(tmp_path / "run") == pytest.approx(0.01)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["recipe"] == "paper"


def test_make_sweep_config_trains_the_files_recipe(caches, tmp_path):
    cfg = _write(tmp_path / "paper3.yaml", "recipe: paper\nepochs: 1\n")
    p = _make("sweep", caches, tmp_path, CONFIG=cfg, SWEEP_OUT=tmp_path / "sweep", PRESETS="resnet", SEEDS="0",
              TRAIN_ARGS="--quiet --no-probe")
    assert p.returncode == 0, p.stdout + p.stderr
    run = tmp_path / "sweep" / "resnet-s0"
    rec = _record(run)
    assert rec["recipe"] == "paper" and {k: rec["config"][k] for k in PAPER} == PAPER
    assert _first_lr(run) == pytest.approx(0.01)


def test_make_recipe_given_is_passed(caches, tmp_path):
    p = _make("train", caches, tmp_path, PRESET="resnet", RECIPE="paper", EPOCHS=1, RUN=tmp_path / "run",
              TRAIN_ARGS="--quiet")
    assert p.returncode == 0, p.stdout + p.stderr
    assert _record(tmp_path / "run")["config"]["schedule"] == "step"
