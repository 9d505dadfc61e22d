"""Issue 13: the frozen-feature recipe (default) vs the paper's (--recipe paper), standardisation statistics from
the training part stored in the checkpoint, the cosine schedule, and the linear-probe reference."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from iagcn.cache.fake import write_fake_cache
from iagcn.errors import UserError
from iagcn.train.config import RECIPES, TrainConfig, config_for_preset
from iagcn.train.data import CacheData
from iagcn.train.loop import learning_rate
from iagcn.train.inference import load_run
from iagcn.train.run import split_train, train_run
from iagcn.train.standardize import feature_statistics

from conftest import write_cache_pair

SMALL = {"gcn_widths": (16, 32), "region_widths": (16, 16, 32), "num_threads": 1}


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return write_cache_pair(tmp_path_factory.mktemp("caches"), n_train=240, n_eval=120, num_rois=8, dim=32,
                            num_classes=6, embedding_dim=10, prototypes_seed=3)


def test_paper_recipe_is_section_4_3_and_frozen_is_the_default():
    paper = config_for_preset("iagcn", recipe="paper")
    assert (paper.optimizer, paper.lr, paper.momentum, paper.weight_decay, paper.schedule, paper.lr_step,
            paper.lr_gamma, paper.epochs, paper.standardize, paper.val_fraction) == \
        ("sgd", 0.01, 0.9, 1e-4, "step", 30, 0.1, 120, "none", 0.1)
    assert paper.recipe == "paper"
    frozen = config_for_preset("iagcn")
    assert frozen.recipe == "frozen" and frozen == config_for_preset("iagcn", recipe="frozen")
    assert frozen.standardize != "none" and frozen.optimizer == TrainConfig().optimizer
    # an explicit override wins over the recipe
    assert config_for_preset("mlgcn", recipe="paper", lr=0.5).lr == 0.5
    with pytest.raises(UserError, match="unknown recipe"):
        config_for_preset("iagcn", recipe="fast")
    with pytest.raises(UserError, match="recipe must be one of"):
        TrainConfig(recipe="fast")
    assert set(RECIPES) == {"frozen", "paper"}


def test_cosine_schedule_values():
    lrs = [learning_rate(e, base_lr=1.0, step=30, gamma=0.1, schedule="cosine", epochs=4) for e in range(4)]
    np.testing.assert_allclose(lrs, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2])
    assert learning_rate(31, base_lr=1.0, step=30, gamma=0.1) == pytest.approx(0.1)
    with pytest.raises(UserError):
        TrainConfig(schedule="linear")


def test_standardisation_uses_the_training_part_only_and_travels_with_the_checkpoint(caches, tmp_path):
    train, test = caches
    tr, te = CacheData(train), CacheData(test)
    cfg = config_for_preset("idlcm", epochs=2, val_fraction=0.2, seed=3, **SMALL)
    train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "run", progress=False, log=lambda *_: None)
    train_idx, hold_idx = split_train(tr.labels, cfg)
    want = feature_statistics(tr, train_idx)
    everything = feature_statistics(tr, np.arange(tr.n))
    run = load_run(tmp_path / "run")
    got = {k: getattr(run.model.standardizer, k).numpy() for k in want}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["x_mean"], everything["x_mean"])            # the hold-out rows did not count
    # by hand: x's mean over the training rows
    g = tr.cache.read("global").astype(np.float64)[train_idx]
    np.testing.assert_allclose(got["x_mean"], g.mean(0), rtol=1e-4, atol=1e-5)
    # the recipe is recorded in every results file
    assert json.loads((tmp_path / "run" / "config.json").read_text())["recipe"] == "frozen"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["recipe"] == "frozen"


def test_paper_recipe_has_no_standardiser_and_records_its_name(caches, tmp_path):
    train, test = caches
    cfg = config_for_preset("mlgcn", recipe="paper", epochs=2, **SMALL)
    result = train_run(cfg, train_data=CacheData(train), eval_data=CacheData(test), out_dir=tmp_path / "p",
                       progress=False, log=lambda *_: None)
    assert result["recipe"] == "paper" and result["protocol"] == "holdout-0.1"
    assert load_run(tmp_path / "p").model.standardizer is None


def test_linear_probe_learns_and_chooses_C_on_the_training_cache_only(caches, tmp_path):
    from iagcn.train.probe import ProbeConfig, run_probe

    train, test = caches
    cfg = ProbeConfig(Cs=(1e-3, 1e-1), folds=3)
    r = run_probe(CacheData(train), CacheData(test), tmp_path / "probe", config=cfg, log=lambda *_: None)
    assert r["metrics"]["mAP"] > 60, r["metrics"]                          # chance on these caches ~25
    assert r["C"] in cfg.Cs and set(r["cv_mAP"]) == {"0.001", "0.1"}
    scores = np.load(tmp_path / "probe" / "scores.npz")["scores"]
    assert scores.shape == (120, 6) and np.isfinite(scores).all()
    # the choice of C never looks at the evaluation cache: a different evaluation cache, the same C and CV
    other = write_fake_cache(tmp_path / "other.h5", n=50, seed=9, split="test", num_rois=8, dim=32, num_classes=6,
                             embedding_dim=10, prototypes_seed=3)
    r2 = run_probe(CacheData(train), CacheData(other), tmp_path / "probe2", config=cfg, log=lambda *_: None)
    assert r2["C"] == r["C"] and r2["cv_mAP"] == r["cv_mAP"]


def test_sweep_table_has_a_linear_probe_row_and_the_recipe(caches, tmp_path):
    from iagcn.evaluate.ablation import write_sweep_table
    from iagcn.train.sweep import run_sweep

    train, test = caches
    cfgs = [config_for_preset(p, epochs=1, seed=0, **SMALL) for p in ("resnet", "mlgcn")]
    run_sweep(cfgs, train_data=CacheData(train), eval_data=CacheData(test), out_dir=tmp_path / "sw", progress=False,
              log=lambda *_: None, on_results=write_sweep_table)
    rows = list(csv.DictReader(open(tmp_path / "sw" / "results.csv")))
    assert [r["preset"] for r in rows] == ["linear-probe", "resnet", "mlgcn"]
    table = (tmp_path / "sw" / "table.md").read_text()
    assert "| linear-probe |" in table and "Recipe: frozen" in table
    assert float(rows[0]["mAP"]) > 60
