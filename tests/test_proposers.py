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


def test_torchvision_rpn_proposals_do_not_depend_on_the_batch():
    """An image's proposals alone equal its proposals inside a batch of images of other sizes (no padding effect).

    Before the fix the batch was padded to its largest image and boxes moved (up to 173 px at 800 px)."""
    p = build_proposer("torchvision", num_rois=20, weights="none", image_size=96)
    target = _scene(80, 96)
    alone = p.propose([target])[0]
    batch = p.propose([_scene(120, 60, seed=1), target, _scene(50, 150, seed=2), _scene(140, 140, seed=3)])
    np.testing.assert_array_equal(alone.boxes, batch[1].boxes)
    np.testing.assert_array_equal(alone.scores, batch[1].scores)
    np.testing.assert_array_equal(alone.valid, batch[1].valid)
    assert alone.valid.sum() >= 5


def test_torchvision_rpn_honours_the_image_size():
    """--proposer-image-size is the shorter side the RPN sees: other sizes give other proposals."""
    import torch

    img = _scene(80, 96)
    seen = {}
    for size in (64, 128):
        p = build_proposer("torchvision", num_rois=10, weights="none", image_size=size)
        hook = p.backbone.register_forward_hook(lambda m, i, o: seen.__setitem__(size, tuple(i[0].shape[-2:])))
        p.propose([img])
        hook.remove()
        assert p.transform.min_size == (size,) and p.transform.max_size == round(size * 1333 / 800)
    assert min(seen[64]) == 64 and min(seen[128]) == 128, seen   # (H', W') before padding to 32: 64x77, 128x154
    del torch


def test_detectron2_missing_is_one_line_user_error(monkeypatch):
    import sys

    from iagcn.errors import UserError

    monkeypatch.setitem(sys.modules, "detectron2", None)   # what `import detectron2` does when it is absent
    with pytest.raises(UserError, match="Detectron2 is not installed; install Detectron2") as e:
        build_proposer("detectron2", num_rois=5)
    assert "\n" not in str(e.value)


# -- Detectron2 adapter logic with a stand-in `detectron2` package: what `make test` checks without Detectron2 --
# (tests/test_detectron2.py runs the adapter against the real library: `make test-detectron2`)
def _fake_detectron2(monkeypatch, tmp_path, *, load_error=None):
    """A stand-in detectron2 (its API as the real one has it, no network, no weights): its checkpointer loads
    non-strictly and reports the incompatible keys (fvcore's _IncompatibleKeys fields) through
    ``_log_incompatible_keys``, as the real one does, or raises ``load_error``. Returns a local YAML config to build
    it from (the stand-in has no packaged model zoo)."""
    import sys
    import types
    from collections import namedtuple

    import torch

    pkg = types.ModuleType("detectron2")
    pkg.__path__ = []
    mods = {name: types.ModuleType(f"detectron2.{name}") for name in
            ("model_zoo", "checkpoint", "config", "data", "data.transforms", "modeling", "structures")}
    Incompatible = namedtuple("Incompatible", "missing_keys unexpected_keys incorrect_shapes")

    class Node(dict):
        __getattr__ = dict.__getitem__

        def __setattr__(self, k, v):
            self[k] = v

    def get_cfg():
        return Node(MODEL=Node(META_ARCHITECTURE="GeneralizedRCNN", DEVICE="cpu", WEIGHTS="",
                               RPN=Node(POST_NMS_TOPK_TEST=1000)),
                    INPUT=Node(MIN_SIZE_TEST=800, MAX_SIZE_TEST=1333, FORMAT="BGR"),
                    merge_from_file=lambda path: None)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3)
            self.proposal_generator = torch.nn.Conv2d(4, 3, 1)

    class Checkpointer:
        def __init__(self, model):
            self.model = model

        def load(self, path):   # fvcore's Checkpointer.load: read, load non-strictly, report incompatible keys
            if load_error is not None:
                raise load_error
            sd = torch.load(path, map_location="cpu", weights_only=True)
            own = self.model.state_dict()
            shapes = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if k in sd and sd[k].shape != v.shape]
            self.model.load_state_dict({k: sd[k] for k in own if k in sd and sd[k].shape == own[k].shape}, strict=False)
            self._log_incompatible_keys(Incompatible([k for k in own if k not in sd], [k for k in sd if k not in own],
                                                     shapes))

    mods["checkpoint"].DetectionCheckpointer = Checkpointer
    mods["config"].get_cfg = get_cfg
    mods["data.transforms"].ResizeShortestEdge = lambda sizes, max_size: ("resize", sizes, max_size)
    mods["data"].transforms = mods["data.transforms"]
    mods["modeling"].build_model = lambda cfg: Model()
    mods["structures"].ImageList = object
    monkeypatch.setitem(sys.modules, "detectron2", pkg)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, f"detectron2.{name}", mod)
        setattr(pkg, name.split(".")[0], mods[name.split(".")[0]])
    yaml = tmp_path / "stand_in_rpn.yaml"
    yaml.write_text("MODEL:\n  META_ARCHITECTURE: ProposalNetwork\n")
    return str(yaml)


def test_detectron2_import_failure_names_the_real_cause(monkeypatch, tmp_path):
    """A stand-in detectron2 package whose data.transforms uses ``Image.LINEAR`` as Detectron2 v0.5's does (gone with
    Pillow >= 10; where this environment still has it, the failure is raised by hand with the same exception)."""
    import sys

    from iagcn.errors import UserError

    cases = {
        "pillow": ("data/transforms", "from PIL import Image\nLINEAR = Image.LINEAR\n"
                   "raise AttributeError(\"module 'PIL.Image' has no attribute 'LINEAR'\")\n",
                   "has no attribute 'LINEAR'", "Pillow >= 10 removed Image.LINEAR"),
    }
    for case, (module, body, cause, fix) in cases.items():
        root = tmp_path / case / "detectron2"
        names = {"model_zoo": "", "checkpoint": "DetectionCheckpointer = None\n", "config": "get_cfg = None\n",
                 "data": "", "data/transforms": "ResizeShortestEdge = None\n", "modeling": "build_model = None\n",
                 "structures": "ImageList = None\n"}
        for sub, text in names.items():
            (root / sub).mkdir(parents=True)
            (root / sub / "__init__.py").write_text(body if sub == module else text)
        (root / "__init__.py").write_text("")
        with monkeypatch.context() as m:
            for name in [n for n in sys.modules if n == "detectron2" or n.startswith("detectron2.")]:
                m.delitem(sys.modules, name)
            m.syspath_prepend(str(root.parent))
            with pytest.raises(UserError) as e:
                build_proposer("detectron2", num_rois=5)
            for name in [n for n in sys.modules if n == "detectron2" or n.startswith("detectron2.")]:
                del sys.modules[name]   # the stand-in's modules (monkeypatch would put them back)
        msg = str(e.value)
        assert "not installed" not in msg and "\n" not in msg
        assert "Detectron2 is installed but importing it failed" in msg and cause in msg and fix in msg, msg


def test_detectron2_refuses_a_checkpoint_that_does_not_fill_the_rpn(monkeypatch, tmp_path):
    """A torchvision Faster R-CNN state dict has none of the Detectron2 model's key names: refused, one line (the
    real checkpointer only logs missing keys, and the extraction ran on a random RPN). A checkpoint missing one
    weight is refused too; a complete one loads."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from iagcn.errors import UserError

    yaml = _fake_detectron2(monkeypatch, tmp_path)
    keys = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict().keys()
    torchvision_sd = tmp_path / "torchvision_frcnn.pth"
    torch.save({k: torch.zeros(1) for k in keys}, torchvision_sd)   # the names are what matter
    with pytest.raises(UserError) as e:
        build_proposer("detectron2", num_rois=5, weights=str(torchvision_sd), detectron2_config=yaml)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--proposer-weights {torchvision_sd}: not a checkpoint of this Detectron2")
    assert "4 of 4 weights of the backbone and RPN are missing" in msg and "0 matched" in msg, msg

    own = build_proposer("detectron2", num_rois=5, weights="none", detectron2_config=yaml).model.state_dict()
    complete, partial = tmp_path / "complete.pth", tmp_path / "partial.pth"
    torch.save({**own, "roi_heads.box_predictor.weight": torch.zeros(3)}, complete)   # unused extras are fine
    torch.save({k: v for k, v in own.items() if k != "proposal_generator.bias"}, partial)
    assert build_proposer("detectron2", num_rois=5, weights=str(complete), detectron2_config=yaml).weights_sha256 != "none"
    with pytest.raises(UserError, match="1 of 4 weights of the backbone and RPN are missing .e.g. proposal_generator.bias"):
        build_proposer("detectron2", num_rois=5, weights=str(partial), detectron2_config=yaml)


def test_detectron2_adapter_options(monkeypatch, tmp_path):
    """Weights 'none' (documented) build a seeded random RPN without loading; the image size reaches the
    config; a local YAML path is accepted, a missing one refused; an unreadable checkpoint is one line (the real
    library: tests/test_detectron2.py also checks a zoo name, a YAML's MODEL.WEIGHTS and an offline download)."""
    from iagcn.errors import UserError
    from iagcn.extract.detectron2_rpn import Detectron2RPNProposer

    yaml = _fake_detectron2(monkeypatch, tmp_path)
    p = build_proposer("detectron2", num_rois=5, weights="none", image_size=600, detectron2_config=yaml)
    assert p.weights_sha256 == "none" and (p.min_size, p.max_size) == (600, 1000)
    assert build_proposer("detectron2", num_rois=5, weights="none", detectron2_config=yaml).min_size == 800
    assert Detectron2RPNProposer(num_rois=5, config=yaml, weights="none").weights_sha256 == "none"
    with pytest.raises(UserError, match="no such file"):
        build_proposer("detectron2", num_rois=5, weights="none", detectron2_config=str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="names no MODEL.WEIGHTS"):   # weights zoo = a local YAML's MODEL.WEIGHTS
        build_proposer("detectron2", num_rois=5, detectron2_config=yaml)
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"--proposer-weights {bad}: not a readable Detectron2 checkpoint"):
        build_proposer("detectron2", num_rois=5, weights=str(bad), detectron2_config=yaml)
