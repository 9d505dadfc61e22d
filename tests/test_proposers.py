"""Proposers: exactly N boxes, padding marked invalid, deterministic, inside the image."""
from __future__ import annotations

import numpy as np
import pytest

from iagcn.extract.proposers import build_proposer, top_n_with_padding


def _scene(h: int = 80, w: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 40 + 100).astype(np.uint8)
    img[10:40, 12:50] = (220, 30, 30)
    img[45:75, 55:90] = (30, 30, 220)
    return img


def test_top_n_pads_with_invalid_whole_image_boxes_and_applies_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 40], [5, 5, 5, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.5, 0.99], np.float32)  # box 1 overlaps box 0 (IoU 0.81); box 3 is empty
    p = top_n_with_padding(boxes, scores, num=5, height=50, width=60)
    assert p.boxes.shape == (5, 4) and p.scores.shape == (5,) and p.valid.shape == (5,)
    assert p.valid.tolist() == [True, True, False, False, False]
    np.testing.assert_array_equal(p.boxes[:2], boxes[[0, 2]])
    np.testing.assert_array_equal(p.boxes[2:], np.tile([0, 0, 60, 50], (3, 1)))
    assert (p.scores[2:] == 0).all()
    few = top_n_with_padding(boxes, scores, num=1, height=50, width=60)
    assert few.valid.tolist() == [True] and few.boxes[0].tolist() == [0, 0, 10, 10]


def test_selective_search_exactly_n_deterministic_and_inside():
    img = _scene()
    p = build_proposer("selective-search", num_rois=12)
    a, b = p.propose([img, img])
    assert a.boxes.shape == (12, 4)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    v = a.boxes[a.valid]
    assert len(v) >= 1
    assert (v[:, 0] >= 0).all() and (v[:, 2] <= 96).all() and (v[:, 1] >= 0).all() and (v[:, 3] <= 80).all()
    assert (v[:, 2] > v[:, 0]).all() and (v[:, 3] > v[:, 1]).all()
    assert np.all(np.diff(a.scores[a.valid]) <= 0)
    # a box close to the red square is among the proposals (IoU > 0.5)
    gt = np.array([12, 10, 50, 40], np.float32)
    x1, y1 = np.maximum(v[:, 0], gt[0]), np.maximum(v[:, 1], gt[1])
    x2, y2 = np.minimum(v[:, 2], gt[2]), np.minimum(v[:, 3], gt[3])
    inter = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    iou = inter / ((v[:, 2] - v[:, 0]) * (v[:, 3] - v[:, 1]) + (gt[2] - gt[0]) * (gt[3] - gt[1]) - inter)
    assert iou.max() > 0.5


def test_many_rois_pad_a_flat_image():
    flat = np.full((64, 64, 3), 128, np.uint8)
    (p,) = build_proposer("selective-search", num_rois=300).propose([flat])
    assert p.boxes.shape == (300, 4)
    assert 1 <= p.valid.sum() < 300
    np.testing.assert_array_equal(p.boxes[~p.valid], np.tile([0, 0, 64, 64], ((~p.valid).sum(), 1)))


def test_torchvision_rpn_random_weights_exactly_n_in_original_pixels():
    import torch

    torch.manual_seed(0)
    p = build_proposer("torchvision", num_rois=10, weights="none", image_size=64)
    imgs = [_scene(80, 96), _scene(50, 120, seed=1)]
    out = p.propose(imgs)
    for im, r in zip(imgs, out):
        h, w = im.shape[:2]
        assert r.boxes.shape == (10, 4) and r.valid.dtype == bool
        v = r.boxes[r.valid]
        assert (v[:, 2] <= w + 1e-3).all() and (v[:, 3] <= h + 1e-3).all() and (v >= 0).all()


def test_detectron2_missing_is_one_line_user_error():
    pytest.importorskip("torch")
    try:
        import detectron2  # noqa: F401
        pytest.skip("detectron2 is installed here")
    except ImportError:
        pass
    from iagcn.errors import UserError

    with pytest.raises(UserError, match="install Detectron2") as e:
        build_proposer("detectron2", num_rois=5)
    assert "\n" not in str(e.value)
