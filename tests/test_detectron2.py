"""The ``detectron2`` proposer against the real Detectron2 library (``make test-detectron2``; docs/detectron2.md).

Detectron2 is not on the package registry, so ``make test`` has it only where a user installed it; without it this
module is skipped, unless ``IAGCN_REQUIRE_DETECTRON2=1`` (``make test-detectron2`` and CI set it): then a missing
Detectron2 is an error, not a skip. Real photos come from ``$IAGCN_SHARED`` (default ``../shared`` next to the
repository); their tests skip only where that folder is absent.

Weights: no download. The checkpoints are written here from the real model's own ``state_dict()``: a Faster
R-CNN (``GeneralizedRCNN``, ROI heads included) saved as a model-zoo ``.pkl``, its backbone + RPN as a ``.pth``.
They are random (seeded), with the box regressor's weights scaled by 0.01: a random RPN regresses every box to
the whole image (a ResNet with frozen BN and random weights has huge activations), which would leave one valid
box per image and nothing to compare.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iagcn.errors import UserError
from iagcn.extract.proposal_common import DETECTRON2_DEFAULT_CONFIG, rpn_max_size, top_n_with_padding
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.extract_helpers import kill_then_resume

pytestmark = pytest.mark.detectron2

if os.environ.get("IAGCN_REQUIRE_DETECTRON2"):
    import detectron2  # noqa: F401 -- make test-detectron2: a missing Detectron2 fails here, loudly
else:
    pytest.importorskip("detectron2", reason="Detectron2 is not installed (make test-detectron2 installs it)")

SHARED = Path(os.environ.get("IAGCN_SHARED") or REPO_ROOT.parent / "shared")
VOC_REAL = SHARED / "data" / "voc2007-real" / "VOCdevkit" / "VOC2007"
REAL_IDS = ("000007", "000009", "000012")  # a landscape, a portrait-ish and a wide photo (longer side 320)
SIZE = 160      # the RPN's shorter side in these tests (--proposer-image-size): small, so fast on a CPU
N = 60          # proposals kept per image


def _scene(h: int, w: int, seed: int) -> np.ndarray:
    """A synthetic RGB photo-like image: noise plus a few flat rectangles."""
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 60 + 80).astype(np.uint8)
    for _ in range(4):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y:y + int(rng.integers(10, h // 2)), x:x + int(rng.integers(10, w // 2))] = rng.integers(0, 255, 3)
    return img


def _zoo_yaml(config: str = DETECTRON2_DEFAULT_CONFIG) -> Path:
    """The packaged YAML, located here from the installed package's files (not by the adapter's code)."""
    import detectron2

    return Path(detectron2.__file__).parent / "model_zoo" / "configs" / config


def _cfg(meta: str, *, weights: str = "", size: int = SIZE):
    """Detectron2's own config for the zoo's R50-FPN Faster R-CNN, built here independently of the adapter."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(str(_zoo_yaml()))
    cfg.MODEL.META_ARCHITECTURE = meta
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = size, rpn_max_size(size)
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A model-zoo ``.pkl`` of a whole Faster R-CNN and a ``.pth`` of its backbone + RPN, from the real model."""
    from detectron2.modeling import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)  # not the adapter's seed 0 for weights "none": a load must change the weights
        model = build_model(_cfg("GeneralizedRCNN")).eval()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["proposal_generator.rpn_head.anchor_deltas.weight"] *= 0.01   # see the module docstring
    assert any(k.startswith("roi_heads.") for k in sd)
    folder = tmp_path_factory.mktemp("d2-weights")
    pkl, pth = folder / "model_final.pkl", folder / "rpn.pth"
    with open(pkl, "wb") as f:   # the zoo's layout: numpy arrays under "model", an "__author__"
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    rpn = {k: v for k, v in sd.items() if k.startswith(("backbone.", "proposal_generator."))}
    torch.save(rpn, pth)
    return {"pkl": pkl, "pth": pth, "rpn": rpn, "folder": folder}


@pytest.fixture(scope="module")
def proposer(checkpoints):
    from iagcn.extract.proposers import build_proposer

    return build_proposer("detectron2", num_rois=N, weights=str(checkpoints["pth"]), image_size=SIZE, device="cpu")


@pytest.fixture(scope="module")
def predictor(checkpoints):
    """Detectron2's own end-to-end inference: DefaultPredictor with the RPN-only ProposalNetwork, same weights."""
    from detectron2.engine.defaults import DefaultPredictor

    cfg = _cfg("ProposalNetwork", weights=str(checkpoints["pth"]))
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = max(cfg.MODEL.RPN.POST_NMS_TOPK_TEST, N)
    return DefaultPredictor(cfg)


def _theirs(predictor, rgb: np.ndarray):
    """Detectron2's proposals of one RGB image (DefaultPredictor takes BGR), in original pixels, top N kept."""
    inst = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["proposals"]
    h, w = rgb.shape[:2]
    return top_n_with_padding(inst.proposal_boxes.tensor.numpy(), inst.objectness_logits.numpy(), num=N,
                              height=h, width=w)


def _assert_equal_bitwise(ours, ref, *, min_valid: int):
    np.testing.assert_array_equal(ours.valid, ref.valid)
    np.testing.assert_array_equal(ours.boxes, ref.boxes)
    np.testing.assert_array_equal(ours.scores, ref.scores)
    assert ours.valid.sum() >= min_valid, ours.valid.sum()   # a real comparison, not of padding


def _real_photos() -> list[np.ndarray]:
    from iagcn.extract.images import load_image_rgb

    if not SHARED.is_dir():
        pytest.skip(f"no shared data folder {SHARED} (a user's clone has none)")
    return [np.asarray(load_image_rgb(VOC_REAL / "JPEGImages" / f"{i}.jpg"), dtype=np.uint8) for i in REAL_IDS]


# -- the adapter equals Detectron2's own ProposalNetwork ------------------------------------------------------
def test_matches_detectron2s_own_predictor_on_synthetic_images(proposer, predictor):
    """Bit for bit: the adapter's boxes (original pixels), scores and validity equal DefaultPredictor's proposals
    (its resize, normalisation, ProposalNetwork.forward and detector_postprocess) after the same top-N selection."""
    for img in (_scene(90, 130, 0), _scene(150, 70, 1), _scene(64, 64, 2), _scene(97, 301, 3)):
        _assert_equal_bitwise(proposer.propose([img])[0], _theirs(predictor, img), min_valid=N // 2)


def test_matches_detectron2s_own_predictor_on_real_photos(proposer, predictor):
    photos = _real_photos()
    assert {p.shape[:2] for p in photos} and all(max(p.shape[:2]) <= 320 for p in photos)
    for img in photos:
        _assert_equal_bitwise(proposer.propose([img])[0], _theirs(predictor, img), min_valid=N // 2)


def test_needs_no_pkg_resources_nor_detectron2_model_zoo(monkeypatch, checkpoints):
    """setuptools >= 81 has no pkg_resources, which ``detectron2.model_zoo`` imports: the adapter must not need it.
    Blocked here even where an older setuptools still has it."""
    from iagcn.extract.proposers import build_proposer

    monkeypatch.setitem(sys.modules, "pkg_resources", None)   # `import pkg_resources` now raises ImportError
    for name in [n for n in sys.modules if n.startswith("detectron2.model_zoo")]:
        monkeypatch.delitem(sys.modules, name)
    p = build_proposer("detectron2", num_rois=5, weights=str(checkpoints["pth"]), image_size=64)
    assert p.propose([_scene(70, 90, 4)])[0].valid.any()
    assert not [n for n in sys.modules if n.startswith("detectron2.model_zoo")]


def test_zoo_names_resolve_like_detectron2s_model_zoo(monkeypatch):
    """The packaged YAML and the checkpoint URL of every zoo config equal what ``detectron2.model_zoo`` returns
    (imported here with a stand-in pkg_resources that only locates package files, as the real one did)."""
    import importlib
    import types

    from iagcn.extract.detectron2_rpn import zoo_checkpoint_url, zoo_config_file

    assert zoo_checkpoint_url(DETECTRON2_DEFAULT_CONFIG) == ("https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/"
                                                             "faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl")
    assert zoo_config_file(DETECTRON2_DEFAULT_CONFIG) == _zoo_yaml()
    stub = types.ModuleType("pkg_resources")
    stub.resource_filename = lambda package, name: str(Path(importlib.util.find_spec(package).origin).parent / name)
    monkeypatch.setitem(sys.modules, "pkg_resources", stub)
    for name in [n for n in sys.modules if n.startswith("detectron2.model_zoo")]:
        monkeypatch.delitem(sys.modules, name)
    zoo = importlib.import_module("detectron2.model_zoo.model_zoo")
    names = list(zoo._ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX)
    assert len(names) > 50
    for name in names:
        config = name + ".yaml" if not name.startswith("new_baselines") else name + ".py"
        assert zoo_checkpoint_url(config) == zoo.get_checkpoint_url(config), config
        if config.endswith(".yaml"):
            assert zoo_config_file(config) == Path(zoo.get_config_file(config)), config
    for name in [n for n in sys.modules if n.startswith("detectron2.model_zoo")]:
        monkeypatch.delitem(sys.modules, name)   # not left behind with the stand-in
    with pytest.raises(UserError, match="not in Detectron2's model zoo and not a file"):
        zoo_config_file("COCO-Detection/no_such_model.yaml")
    with pytest.raises(UserError, match="has no trained checkpoint for COCO-Detection/no_such_model.yaml"):
        zoo_checkpoint_url("COCO-Detection/no_such_model.yaml")


def test_weights_zoo_loads_the_zoo_url_of_the_config(monkeypatch):
    """``--proposer-weights zoo`` hands Detectron2's checkpointer the zoo URL (not downloaded here: recorded)."""
    from iagcn.extract.detectron2_rpn import Detectron2RPNProposer

    seen = []
    monkeypatch.setattr(Detectron2RPNProposer, "_load_strict",
                        lambda self, cls, source, *, option_value: seen.append((cls.__name__, source, option_value)))
    p = Detectron2RPNProposer(num_rois=5, weights="zoo", min_size=64)
    url = "https://dl.fbaipublicfiles.com/detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
    assert seen == [("DetectionCheckpointer", url, url)] and p.weights_sha256 == f"zoo:{DETECTRON2_DEFAULT_CONFIG}"


# -- strict loading of the backbone + RPN ------------------------------------------------------------------
def test_zoo_pkl_and_pth_load_exactly_the_backbone_and_rpn(checkpoints):
    """Both files fill every weight of the RPN-only model with the checkpoint's values (the ROI heads of the .pkl
    are ignored); a file missing one RPN weight, one with a wrong shape and a torchvision state dict are refused."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from iagcn.extract.proposers import build_proposer

    rpn = checkpoints["rpn"]
    for kind in ("pkl", "pth"):
        p = build_proposer("detectron2", num_rois=5, weights=str(checkpoints[kind]), image_size=64)
        own = p.model.state_dict()
        assert set(own) == set(rpn), kind
        for k, v in rpn.items():
            assert torch.equal(own[k], v), (kind, k)
        assert len(p.weights_sha256) == 64
    folder = checkpoints["folder"]
    bad = {"missing": ({k: v for k, v in rpn.items() if k != "proposal_generator.rpn_head.objectness_logits.bias"},
                       f"1 of {len(rpn)} weights of the backbone and RPN are missing "
                       f"\\(e.g. proposal_generator.rpn_head.objectness_logits.bias\\), {len(rpn) - 1} matched"),
           "shape": ({**rpn, "proposal_generator.rpn_head.conv.weight": torch.zeros(3, 3)},
                     f"1 of {len(rpn)} weights have the wrong shape \\(e.g. proposal_generator.rpn_head.conv.weight: \\(3, 3\\) "
                     f"in the file, \\(256, 256, 3, 3\\) in the model\\), {len(rpn) - 1} matched"),
           "torchvision": (fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict(),
                           f"{len(rpn)} of {len(rpn)} weights of the backbone and RPN are missing .*, 0 matched")}
    for name, (sd, message) in bad.items():
        path = folder / f"{name}.pth"
        torch.save(sd, path)
        with pytest.raises(UserError, match=f"--proposer-weights {path}: not a checkpoint of this Detectron2 model: "
                                            f"{message}") as e:
            build_proposer("detectron2", num_rois=5, weights=str(path), image_size=64)
        assert "\n" not in str(e.value)


def test_a_local_yaml_its_weights_and_unreadable_or_offline_weights(checkpoints, tmp_path, monkeypatch):
    """--detectron2-config PATH: a YAML on top of the zoo's (``_BASE_``), whose MODEL.WEIGHTS ``zoo`` loads; an
    unreadable file and a download while offline are one line each."""
    import urllib.error

    import iopath.common.file_io

    from iagcn.extract.proposers import build_proposer

    yaml = tmp_path / "my_rpn.yaml"
    yaml.write_text(f"_BASE_: {_zoo_yaml()}\nMODEL:\n  WEIGHTS: {checkpoints['pth']}\nINPUT:\n  MIN_SIZE_TEST: 96\n")
    p = build_proposer("detectron2", num_rois=5, detectron2_config=str(yaml))
    assert p.weights_sha256 == f"config:{checkpoints['pth']}" and p.min_size == 96
    assert all(torch.equal(p.model.state_dict()[k], v) for k, v in checkpoints["rpn"].items())
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=f"--proposer-weights {bad}: not a readable Detectron2 checkpoint") as e:
        build_proposer("detectron2", num_rois=5, weights=str(bad), image_size=64)
    assert "\n" not in str(e.value)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))      # never a checkpoint cached by an earlier run
    monkeypatch.setattr(iopath.common.file_io, "download", offline)   # what the download meets on an offline machine
    with pytest.raises(UserError, match="--proposer-weights zoo: could not download https://dl.fbaipublicfiles.com/"
                                        "detectron2/COCO-Detection/faster_rcnn_R_50_FPN_3x/") as e:
        build_proposer("detectron2", num_rois=5, image_size=64)
    assert "\n" not in str(e.value) and "go online once" in str(e.value)


# -- per-image behaviour ------------------------------------------------------------------------------------
def test_proposals_do_not_depend_on_the_batch(proposer):
    """An image alone = the same image inside a batch of images of other sizes, bit for bit; and NumPy's global
    RNG is left alone (Detectron2's ResizeShortestEdge.get_transform draws the size from it)."""
    target = _scene(90, 130, 5)
    before = np.random.get_state()[1].copy()
    alone = proposer.propose([target])[0]
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    batch = proposer.propose([_scene(150, 70, 6), target, _scene(60, 200, 7)])
    np.testing.assert_array_equal(alone.boxes, batch[1].boxes)
    np.testing.assert_array_equal(alone.scores, batch[1].scores)
    np.testing.assert_array_equal(alone.valid, batch[1].valid)
    assert alone.valid.sum() >= N // 2


def test_image_size_is_the_shorter_side_the_rpn_sees(checkpoints):
    """--proposer-image-size S: the RPN's input has shorter side S and longer side at most round(S * 1333 / 800);
    the boxes come back inside the original image."""
    from iagcn.extract.proposers import build_proposer

    img = _scene(100, 400, 8)   # 1:4, so the longer-side cap applies
    for size in (64, 128):
        p = build_proposer("detectron2", num_rois=10, weights=str(checkpoints["pth"]), image_size=size)
        seen = []
        hook = p.model.proposal_generator.register_forward_pre_hook(lambda m, args: seen.append(args[0].image_sizes[0]))
        (r,) = p.propose([img])
        hook.remove()
        assert (p.min_size, p.max_size) == (size, rpn_max_size(size))
        (h, w), = seen
        assert w == rpn_max_size(size) and h == round(rpn_max_size(size) / 4), (size, seen)
        v = r.boxes[r.valid]
        assert (v >= 0).all() and (v[:, 2] <= 400).all() and (v[:, 3] <= 100).all()


def test_the_device_reaches_the_model(checkpoints, fake_gpu):
    """--device cuda:0: Detectron2 builds the model there (MODEL.DEVICE), and the batches follow the model."""
    from iagcn.extract.proposers import build_proposer

    p = build_proposer("detectron2", num_rois=5, weights=str(checkpoints["pth"]), image_size=64, device="cuda:0")
    assert ("module", "ProposalNetwork", torch.device("cuda:0")) in fake_gpu
    assert p.model.device == torch.device("cpu")   # fake_gpu runs everything on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(checkpoints):
    from iagcn.extract.proposers import build_proposer

    img = _scene(90, 130, 9)
    cpu = build_proposer("detectron2", num_rois=N, weights=str(checkpoints["pth"]), image_size=SIZE).propose([img])[0]
    gpu = build_proposer("detectron2", num_rois=N, weights=str(checkpoints["pth"]), image_size=SIZE,
                         device="cuda").propose([img])[0]
    np.testing.assert_allclose(gpu.boxes[:10], cpu.boxes[:10], atol=1.0)


# -- iagcn extract --proposer detectron2, end to end ----------------------------------------------------------
def _check_cache(path: Path, *, n: int, num_rois: int) -> None:
    from iagcn.cache.format import FeatureCache

    with FeatureCache(path) as c:   # validates the format on open
        assert (c.num_images, c.num_rois) == (n, num_rois)
        assert c.attrs["proposer"] == "detectron2"
        boxes, valid, sizes = c.read("boxes"), c.read("box_valid"), c.read("image_sizes")
        assert valid.sum(axis=1).min() >= 1 and valid.mean() > 0.5
        assert (boxes >= 0).all() and (boxes[..., 2] <= sizes[:, None, 1]).all() and (boxes[..., 3] <= sizes[:, None, 0]).all()
        assert np.isfinite(c.read("regions").astype(np.float32)).all()
    info = run_cli(["info", path])
    assert info.returncode == 0 and "detectron2" in info.stdout, info.stdout + info.stderr


def test_cli_extract_with_detectron2_on_a_synthetic_voc_split(checkpoints, tmp_path):
    data = tmp_path / "data"
    run_cli(["synth", "--out", data, "--train", "6", "--test", "2", "--seed", "0", "--quiet"], check=True)
    out = tmp_path / "trainval.h5"
    run_cli(["extract", "--dataset", "voc", "--root", data / "VOCdevkit" / "VOC2007", "--split", "trainval",
             "--out", out, "--weights", "none", "--image-size", "64", "--proposer", "detectron2",
             "--proposer-weights", checkpoints["pkl"], "--proposer-image-size", "96", "--num-rois", "8",
             "--workers", "0", "--device", "cpu"], check=True, env=cli_env(OMP_NUM_THREADS="1"))
    _check_cache(out, n=6, num_rois=8)
    from iagcn.cache.format import FeatureCache

    with FeatureCache(out) as c:
        assert c.attrs["proposer_weights_sha256"] != "none" and len(c.attrs["proposer_weights_sha256"]) == 64


def test_cli_extract_with_detectron2_on_real_photos(checkpoints, tmp_path):
    """A VOC-layout view of three shared real photos (symlinks: nothing copied), extracted through the CLI."""
    _real_photos()
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations"):
        (root / sub).mkdir()
        for i in REAL_IDS:
            ext = ".jpg" if sub == "JPEGImages" else ".xml"
            (root / sub / f"{i}{ext}").symlink_to(VOC_REAL / sub / f"{i}{ext}")
    (root / "ImageSets" / "Main" / "three.txt").write_text("\n".join(REAL_IDS) + "\n")
    out = tmp_path / "real.h5"
    run_cli(["extract", "--dataset", "voc", "--root", root, "--split", "three", "--out", out, "--weights", "none",
             "--image-size", "64", "--proposer", "detectron2", "--proposer-weights", checkpoints["pth"],
             "--proposer-image-size", str(SIZE), "--num-rois", "10", "--workers", "0", "--device", "cpu"],
            check=True, env=cli_env(OMP_NUM_THREADS="1"))
    _check_cache(out, n=3, num_rois=10)


def test_extract_resumes_after_sigkill_like_every_proposer(checkpoints, tmp_path):
    """SIGKILL mid-run, rerun: it resumes from the committed blocks and equals an uninterrupted run."""
    from iagcn.cache.format import FeatureCache
    from iagcn.extract.config import ExtractConfig

    cfg = ExtractConfig(dataset="csv", root="tiny", split="test", weights="none", image_size=64, num_rois=6,
                        batch_size=1, block_rows=2, workers=0, device="cpu", threads=1, proposer="detectron2",
                        proposer_weights=str(checkpoints["pth"]), proposer_image_size=96)
    conf = json.dumps(dataclasses.asdict(cfg))
    helper = str(REPO_ROOT / "tests" / "extract_helpers.py")
    whole = tmp_path / "whole.h5"
    subprocess.run([sys.executable, helper, str(tmp_path / "imgs-a"), str(whole), conf], env=cli_env(OMP_NUM_THREADS="1"),
                   cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    out = tmp_path / "killed.h5"
    kill_then_resume([sys.executable, helper, str(tmp_path / "imgs"), str(out), conf], out, blocks=6, wait_s=240)
    with FeatureCache(whole) as a, FeatureCache(out) as b:
        for f in ("boxes", "box_scores", "box_valid", "regions", "global"):
            np.testing.assert_array_equal(a.read(f), b.read(f), err_msg=f)
        assert a.attrs["proposer"] == "detectron2"
