"""Each plot writes a non-empty PNG (signature, plausible size); Fig. 1/3 data files hold what was drawn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iagcn.evaluate.figures import plot_lcm_pair, plot_roi_weights
from iagcn.evaluate.plots import (plot_per_class_ap, plot_pr_curves, plot_pr_curves_overlay, plot_training_curves,
                                  plot_training_curves_overlay, training_curve_panels)
from iagcn.classes import VOC_CLASSES
from iagcn.errors import UserError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, *, min_bytes=2000, min_side=100):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) >= min_bytes
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= min_side
    assert not list(path.parent.glob(f".{path.name}.tmp-*"))  # no temporary left behind


def test_training_curves_from_csv_and_dataframe(tmp_path):
    df = pd.DataFrame({"epoch": np.arange(1, 9), "train_loss": np.linspace(1, 0.2, 8),
                       "val_loss": np.linspace(1.1, 0.4, 8), "val_mAP": np.linspace(40, 80, 8),
                       "lr": [0.01] * 4 + [0.001] * 4, "epoch_time_s": np.ones(8)})
    csv = tmp_path / "log.csv"
    df.to_csv(csv, index=False)
    assert_png(plot_training_curves(csv, tmp_path / "curves.png"))
    assert_png(plot_training_curves(df[["epoch", "train_loss"]], tmp_path / "curves2.png"))
    csv.write_text("epoch,train_loss\n")
    with pytest.raises(UserError, match="log.csv"):
        plot_training_curves(csv, tmp_path / "empty.png")


def test_training_curve_panels_separate_units_and_drop_flat_zero_columns(tmp_path):
    from iagcn.train.runfolder import LOG_FIELDS

    n = 6
    log = pd.DataFrame({"epoch": np.arange(1, n + 1), "lr": [0.01] * n, "loss": np.linspace(1, 0.5, n),
                        "loss_ml": np.linspace(1, 0.5, n), "loss_kl": np.zeros(n), "loss_y_w": np.zeros(n),
                        "loss_y_r": np.zeros(n), "loss_a_I": np.zeros(n), "loss_l2": np.zeros(n),
                        "select_mAP": np.linspace(30, 60, n),
                        "seconds": np.full(n, 2.5), "samples_per_s": np.full(n, 400.0)})
    assert list(log.columns) == list(LOG_FIELDS)        # the columns train writes
    x, panels = training_curve_panels(log)
    assert x == "epoch"
    assert panels == [("loss", ["loss", "loss_ml"]), ("hold-out mAP (%)", ["select_mAP"]),
                      ("seconds per epoch", ["seconds"]), ("throughput (images/s)", ["samples_per_s"]),
                      ("learning rate", ["lr"])]
    log["loss_kl"] = np.linspace(0.3, 0.1, n)           # a Var_Inf preset: loss_kl is drawn
    assert training_curve_panels(log)[1][0] == ("loss", ["loss", "loss_ml", "loss_kl"])
    assert_png(plot_training_curves(log, tmp_path / "c.png"))
    other = log.assign(select_mAP=np.linspace(20, 70, n), loss=np.linspace(2, 1, n))
    assert_png(plot_training_curves_overlay({"a": log, "b": other}, tmp_path / "o.png"))


def test_pr_curves_of_several_runs_overlaid(tmp_path):
    rng = np.random.default_rng(4)
    targets = (rng.random((80, 3)) < 0.4).astype(np.int8)
    runs = {"good": (rng.normal(size=(80, 3)) + 2 * targets, targets), "weak": (rng.normal(size=(80, 3)), targets)}
    assert_png(plot_pr_curves_overlay(runs, ["a", "b", "c"], ["a", "c"], tmp_path / "pr.png"))
    with pytest.raises(UserError, match="score columns"):
        plot_pr_curves_overlay({"x": (np.zeros((80, 2)), targets[:, :2])}, ["a", "b", "c"], ["a"], tmp_path / "x.png")


def test_per_class_ap_several_runs(tmp_path):
    rng = np.random.default_rng(0)
    runs = {"base": rng.uniform(50, 100, 20), "ia-gcn": rng.uniform(50, 100, 20)}
    runs["base"][3] = np.nan
    assert_png(plot_per_class_ap(runs, VOC_CLASSES, tmp_path / "ap.png"))
    with pytest.raises(UserError, match="20 classes"):
        plot_per_class_ap({"x": np.ones(5)}, VOC_CLASSES, tmp_path / "bad.png")


def test_pr_curves(tmp_path):
    rng = np.random.default_rng(1)
    targets = (rng.random((100, 4)) < 0.3).astype(np.int8)
    targets[:, 3] = 0
    scores = rng.normal(size=(100, 4)) + targets
    names = ["circle", "square", "triangle", "star"]
    assert_png(plot_pr_curves(scores, targets, names, ["circle", 1, "star"], tmp_path / "pr.png"))
    with pytest.raises(UserError, match="unknown class"):
        plot_pr_curves(scores, targets, names, ["hexagon"], tmp_path / "pr2.png")


def test_lcm_pair_and_its_data(tmp_path):
    rng = np.random.default_rng(2)
    a_f, a_s = rng.random((20, 20)), rng.random((20, 20))
    out = plot_lcm_pair(a_f, a_s, VOC_CLASSES, tmp_path / "fig1.png")
    assert_png(out)
    with np.load(str(out) + ".npz") as data:
        np.testing.assert_array_equal(data["A_F"], a_f)
        np.testing.assert_array_equal(data["A_S"], a_s)
        assert list(data["class_names"]) == list(VOC_CLASSES)
        # one colour scale for both panels, set by the off-diagonal entries only (the diagonal is masked)
        off = ~np.eye(20, dtype=bool)
        np.testing.assert_allclose(data["colour_range"], [min(a_f[off].min(), a_s[off].min()),
                                                          max(a_f[off].max(), a_s[off].max())])
    # a dominant diagonal does not set the scale
    with np.load(str(plot_lcm_pair(a_f + 50 * np.eye(20), a_s, VOC_CLASSES, tmp_path / "d.png")) + ".npz") as data:
        assert data["colour_range"][1] < 1.0
    with pytest.raises(UserError, match="A_S"):
        plot_lcm_pair(a_f, a_s[:5, :5], VOC_CLASSES, tmp_path / "bad.png")


@pytest.mark.parametrize("as_pil", [False, True])
def test_roi_weights(tmp_path, as_pil):
    rng = np.random.default_rng(3)
    img = (rng.random((120, 160, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(img) if as_pil else img
    xy = rng.uniform(0, 100, size=(10, 2))
    boxes = np.c_[xy, xy + rng.uniform(10, 50, size=(10, 2))]
    z = rng.normal(size=10)
    valid = np.arange(10) < 8
    out = plot_roi_weights(image, boxes, z, valid, tmp_path / "fig3.png", caption="labels: cat\npredicted: cat 0.90")
    assert_png(out)
    with np.load(str(out) + ".npz") as data:
        np.testing.assert_array_equal(data["weights"], z)
        assert str(data["caption"]) == "labels: cat\npredicted: cat 0.90"
    with pytest.raises(UserError, match="must be"):
        plot_roi_weights(image, boxes[:, :3], z, valid, tmp_path / "bad.png")


def test_roi_weights_top_k_draws_the_boxes_of_largest_weight(tmp_path, monkeypatch):
    """Fig. 3 with top_k: exactly the top_k valid boxes of largest z are drawn (read back from the figure)."""
    from matplotlib.patches import Rectangle

    import iagcn.evaluate.figures as figures

    drawn_figs = []
    real_save = figures.save_png
    monkeypatch.setattr(figures, "save_png", lambda fig, out: (drawn_figs.append(fig), real_save(fig, out))[1])
    img = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[i * 10, i * 5, i * 10 + 8, i * 5 + 9] for i in range(6)], dtype=float)
    z = np.array([0.1, 0.9, 0.5, 2.0, 0.7, 0.3])
    valid = np.array([True, True, True, False, True, True])        # the largest z is padding: never drawn
    out = plot_roi_weights(img, boxes, z, valid, tmp_path / "fig3.png", top_k=2)
    assert_png(out)
    rects = [p for p in drawn_figs[-1].axes[0].patches if isinstance(p, Rectangle)]
    assert sorted(tuple(r.get_xy()) for r in rects) == [(10.0, 5.0), (40.0, 20.0)]   # boxes 1 (z 0.9) and 4 (z 0.7)
    with np.load(str(out) + ".npz") as data:
        assert data["drawn"].tolist() == [1, 4]
    plot_roi_weights(img, boxes, z, valid, tmp_path / "all.png")
    assert len([p for p in drawn_figs[-1].axes[0].patches if isinstance(p, Rectangle)]) == 5
    with pytest.raises(UserError, match="top_k"):
        plot_roi_weights(img, boxes, z, valid, tmp_path / "bad.png", top_k=0)
