"""Paper-layout tables: parse what was rendered and compare with the numbers that went in."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from iagcn.metrics import multilabel_metrics
from iagcn.classes import VOC_CLASSES
from iagcn.evaluate.report import (ablation_table, fmt_delta_ci, group_by_preset, metrics_table,
                             per_class_table)
from iagcn.evaluate.stats import paired_bootstrap

PAPER_TABLE2_HEADER = ("Methods aero bike bird boat bottle bus car cat chair cow table dog horse motor person plant "
                       "sheep sofa train tv mAP").split()


def parse_markdown(block: str) -> list[list[str]]:
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    assert re.fullmatch(r"\|:-+(\|-+:)+\|", lines[1]), lines[1]  # alignment row
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in [lines[0], *lines[2:]]]


def parse_text(block: str) -> list[list[str]]:
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert set(lines[1].replace(" ", "")) == {"-"}
    return [re.split(r"\s{2,}", ln.strip()) for ln in [lines[0], *lines[2:]]]


@pytest.fixture
def two_methods():
    rng = np.random.default_rng(0)
    targets = (rng.random((80, 4)) < 0.3).astype(np.int8)
    targets[0] = 1
    base = multilabel_metrics(rng.normal(size=(80, 4)) + targets, targets, scores_are="logits")
    ours = multilabel_metrics(rng.normal(size=(80, 4)) + 2 * targets, targets, scores_are="logits")
    return {"Base": base, "IA-GCN": ours}


def test_metrics_table_markdown_matches_the_inputs(two_methods):
    text = metrics_table(two_methods, fmt="markdown")
    main, top = text.split("**Top-3**")
    rows = parse_markdown(main)
    assert rows[0] == ["Methods", "mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    for row, (name, m) in zip(rows[1:], two_methods.items()):
        assert row[0] == name
        assert [float(x) for x in row[1:]] == [round(m[k], 1) for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")]
    top_rows = parse_markdown(top)
    assert top_rows[0] == ["Methods", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    assert float(top_rows[2][3]) == round(two_methods["IA-GCN"]["CF1_top3"], 1)


def test_metrics_table_text_and_missing_values(two_methods):
    two_methods["Base"]["mAP"] = math.nan
    text = metrics_table(list(two_methods.items()), fmt="text", top_k=None)
    rows = parse_text(text.split("\n", 1)[1])  # skip the title line
    assert rows[1][0] == "Base" and rows[1][1] == "-"
    assert float(rows[2][1]) == round(two_methods["IA-GCN"]["mAP"], 1)
    assert "Top-3" not in text


def test_per_class_table_uses_the_papers_voc_headers_and_mean():
    rng = np.random.default_rng(1)
    ap = rng.uniform(50, 100, size=20)
    ap[4] = math.nan
    rows = parse_markdown(per_class_table({"IA-GCN": ap}, VOC_CLASSES))
    assert rows[0] == PAPER_TABLE2_HEADER
    assert rows[1][5] == "-"
    assert float(rows[1][-1]) == round(float(np.mean(np.delete(ap, 4))), 1)
    assert [float(x) for i, x in enumerate(rows[1][1:-1]) if i != 4] == [round(v, 1) for v in np.delete(ap, 4)]


def test_per_class_table_keeps_other_names_and_checks_lengths():
    rows = parse_text(per_class_table([("run", [10.0, 20.0])], ["circle", "square"], fmt="text"))
    assert rows[0] == ["Methods", "circle", "square", "mAP"] and rows[1] == ["run", "10.0", "20.0", "15.0"]
    with pytest.raises(ValueError, match="3 classes"):
        per_class_table({"run": [1.0, 2.0]}, ["a", "b", "c"])


def runs_for_ablation():
    rng = np.random.default_rng(2)
    runs = []
    for preset, level in (("base", 80.0), ("base+id_lcm", 81.0), ("full", 80.2)):
        for seed in range(3):
            runs.append({"preset": preset, "seed": seed,
                         "metrics": {k: level + rng.normal() for k in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")}})
    return runs


def test_ablation_table_mean_std_and_delta_column():
    runs = runs_for_ablation()
    deltas = {"base+id_lcm": {"diff": 1.04, "low": 0.31, "high": 1.77},
              "full": {"diff": 0.2, "low": -0.5, "high": 0.9}}
    text = ablation_table(runs, baseline="base", deltas=deltas, metrics=("mAP", "CF1"))
    rows = parse_markdown(text)
    assert rows[0] == ["Preset", "seeds", "mAP", "CF1", "ΔmAP vs base [95% CI]"]
    assert [r[0] for r in rows[1:]] == ["base", "base+id_lcm", "full"]
    vals = np.array([r["metrics"]["mAP"] for r in runs if r["preset"] == "full"])
    assert rows[3][2] == f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}"
    assert rows[1][-1] == "baseline"
    assert rows[2][-1] == "+1.0 [+0.3, +1.8] *"
    assert rows[3][-1] == "+0.2 [-0.5, +0.9]"
    assert "excludes zero" in text


def test_group_by_preset_single_seed_and_delta_formatting():
    g = group_by_preset([{"preset": "a", "mAP": 50.0}], metrics=("mAP",))
    assert g["a"]["n"] == 1 and g["a"]["mAP"]["mean"] == 50.0 and math.isnan(g["a"]["mAP"]["std"])
    assert "±" not in ablation_table([{"preset": "a", "mAP": 50.0}], metrics=("mAP",))
    assert fmt_delta_ci({"diff": -1.0, "low": -1.5, "high": -0.2}).endswith("*")
    assert fmt_delta_ci({"diff": 0.0, "low": 0.0, "high": 0.0}) == "+0.0 [+0.0, +0.0]"


def test_ablation_table_accepts_bootstrap_results_and_seed_tests():
    rng = np.random.default_rng(3)
    targets = (rng.random((200, 3)) < 0.3).astype(np.int8)
    a = rng.normal(size=(200, 3)) + targets
    b = rng.normal(size=(200, 3)) + 3 * targets
    boot = paired_bootstrap(a, b, targets, scores_are="logits", n_resamples=200, seed=0)
    runs = [{"preset": "A", "metrics": multilabel_metrics(a, targets, scores_are="logits")},
            {"preset": "B", "metrics": multilabel_metrics(b, targets, scores_are="logits")}]
    rows = parse_text(ablation_table(runs, baseline="A", deltas={"B": boot}, fmt="text",
                                     seed_tests={"B": {"p_t": 0.0123}}))
    assert rows[2][-2].endswith("*") and rows[2][-2].startswith(f"{boot['metrics']['mAP']['diff']:+.1f}")
    # one seed per row: a p-value ACROSS seeds would be meaningless, so none is printed (issue 11)
    assert rows[2][-1] == "-" and rows[1][-1] == "-"
    rows = parse_text(ablation_table(runs + runs, baseline="A", deltas={"B": boot}, fmt="text",
                                     seed_tests={"B": {"p_t": 0.0123}}))
    assert rows[2][1] == "2" and rows[2][-1] == "0.012" and rows[1][-1] == "-"
