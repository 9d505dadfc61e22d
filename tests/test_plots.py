"""Each plot writes a non-empty PNG (signature, plausible size); Fig. 1/3 data files hold what was drawn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from iagcn.evaluate.plots import plot_lcm_pair, plot_per_class_ap, plot_pr_curves, plot_roi_weights, plot_training_curves
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
    out = plot_roi_weights(image, boxes, z, valid, tmp_path / "fig3.png")
    assert_png(out)
    with np.load(str(out) + ".npz") as data:
        np.testing.assert_array_equal(data["weights"], z)
    with pytest.raises(UserError, match="must be"):
        plot_roi_weights(image, boxes[:, :3], z, valid, tmp_path / "bad.png")
