"""The ``detectron2`` proposer: a Faster R-CNN RPN from Detectron2 (optional dependency; docs/detectron2.md).

Apart from :mod:`iagcn.extract.proposers` because Detectron2 is optional and its adapter (import diagnosis, strict
weight loading, the per-image RPN) is a job of its own; :func:`iagcn.extract.proposers.build_proposer` imports it
only when ``--proposer detectron2`` is chosen. This module imports only :mod:`iagcn.extract.proposal_common` (never
``proposers``), so the dependency is one way.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from iagcn.errors import UserError
from iagcn.extract.proposal_common import DETECTRON2_DEFAULT_CONFIG, Proposals, rpn_max_size, top_n_with_padding
from iagcn.fsutil import sha256_file


# -- detectron2 RPN ---------------------------------------------------------------------------------------
DETECTRON2_HINT = ("install Detectron2 from source: pip install --no-build-isolation "
                   "'git+https://github.com/facebookresearch/detectron2.git' (see docs/detectron2.md)")


def detectron2_import_problem(e: BaseException) -> str:
    """One line naming why ``import detectron2...`` failed: not installed, or the real cause and its fix."""
    text = " ".join(str(e).split())
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "detectron2" and \
            (e.name == "detectron2" or "detectron2" not in sys.modules):
        return f"--proposer detectron2: Detectron2 is not installed; {DETECTRON2_HINT}"
    if isinstance(e, AttributeError) and "LINEAR" in text:
        fix = ("Pillow >= 10 removed Image.LINEAR, which this Detectron2 release uses: install a newer Detectron2 "
               "or 'pillow<10' (see docs/detectron2.md)")
    elif isinstance(e, (ImportError, OSError)) and ("_C" in text or "undefined symbol" in text or ".so" in text):
        fix = ("its compiled extension does not load (built against another torch?): rebuild Detectron2 in this "
               "environment (see docs/detectron2.md)")
    else:
        fix = "see docs/detectron2.md"
    return f"--proposer detectron2: Detectron2 is installed but importing it failed ({type(e).__name__}: {text}); {fix}"


# -- the packaged model zoo, read without importing detectron2.model_zoo ----------------------------------
# detectron2.model_zoo imports pkg_resources (only to find its own YAML files), which setuptools >= 81 no longer
# ships: the adapter finds the package folder through importlib instead and reads the zoo's URL table from
# model_zoo.py as data (ast.literal_eval), without running that module.
def detectron2_zoo_dir() -> Path:
    """The folder of the installed ``detectron2.model_zoo`` package (its ``configs/`` and ``model_zoo.py``)."""
    import importlib.util

    spec = importlib.util.find_spec("detectron2.model_zoo")  # imports the detectron2 package, not model_zoo
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--proposer detectron2: this Detectron2 has no model_zoo package; give --detectron2-config "
                        "a YAML path (see docs/detectron2.md)")
    return Path(list(spec.submodule_search_locations)[0])


def zoo_config_file(config: str) -> Path:
    """The packaged YAML of model-zoo config ``config`` (``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``)."""
    path = detectron2_zoo_dir() / "configs" / config
    if not path.is_file():
        raise UserError(f"--detectron2-config {config}: not in Detectron2's model zoo and not a file; "
                        f"give a zoo name such as {DETECTRON2_DEFAULT_CONFIG} or a YAML path")
    return path


def zoo_checkpoint_url(config: str) -> str:
    """The URL of the trained checkpoint of model-zoo config ``config``, from the table in ``model_zoo.py``:
    ``S3_PREFIX + <config without .yaml> + "/" + <model id>/model_final_<hash>.pkl``."""
    import ast

    source = detectron2_zoo_dir() / "model_zoo.py"
    table: dict[str, object] = {}
    try:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == "_ModelZooUrls":
                for item in node.body:
                    if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
                        if item.targets[0].id in ("S3_PREFIX", "CONFIG_PATH_TO_URL_SUFFIX"):
                            table[item.targets[0].id] = ast.literal_eval(item.value)
    except (OSError, SyntaxError, ValueError) as e:
        raise UserError(f"--proposer-weights zoo: cannot read Detectron2's model-zoo table in {source} "
                        f"({type(e).__name__}); pass --proposer-weights PATH") from e
    prefix, suffixes = table.get("S3_PREFIX"), table.get("CONFIG_PATH_TO_URL_SUFFIX")
    if not isinstance(prefix, str) or not isinstance(suffixes, dict):
        raise UserError(f"--proposer-weights zoo: no model-zoo URL table in {source} (another Detectron2 layout?); "
                        f"pass --proposer-weights PATH")
    name = config.replace(".yaml", "").replace(".py", "")
    if name not in suffixes:
        raise UserError(f"--proposer-weights zoo: Detectron2's model zoo has no trained checkpoint for {config}; "
                        f"pass --proposer-weights PATH")
    return f"{prefix}{name}/{suffixes[name]}"


def check_strict_load(incompatible, *, model_keys: Sequence[str], source: str,
                      given_keys: set[str] | None = None) -> None:
    """Refuse a checkpoint that does not fill every weight of the parts used (backbone + RPN).

    ``incompatible``: Detectron2's (fvcore's) ``_IncompatibleKeys`` of the load (``missing_keys``,
    ``unexpected_keys``, ``incorrect_shapes``); ``model_keys``: the model's state-dict keys; ``given_keys``: the
    keys of the state dict the checkpointer handed to ``load_state_dict`` (None: trust ``missing_keys``). The
    given keys decide, because Detectron2's ``FrozenBatchNorm2d`` fills absent ``running_mean``/``running_var``
    with zeros/ones without reporting them missing (measured: a torchvision state dict "matched" 106 of 287
    weights that way). Unexpected keys are fine (a full Faster R-CNN checkpoint carries ROI heads the RPN does
    not use).
    """
    missing = list(getattr(incompatible, "missing_keys", []) or [])
    if given_keys is not None:
        missing = [k for k in model_keys if k not in given_keys]
    shapes = list(getattr(incompatible, "incorrect_shapes", []) or [])  # (key, shape in the file, shape in the model)
    shaped = {k for k, *_ in shapes}
    missing = [k for k in missing if k not in shaped]  # fvcore drops a wrong-shaped weight, then reports it missing too
    if not missing and not shapes:
        return
    loaded = len(model_keys) - len(missing) - len(shapes)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(model_keys)} weights of the backbone and RPN are missing "
                        f"(e.g. {missing[0]})")
    if shapes:
        key, *sizes = shapes[0]
        got = f": {tuple(sizes[0])} in the file, {tuple(sizes[1])} in the model" if len(sizes) == 2 else ""
        problems.append(f"{len(shapes)} of {len(model_keys)} weights have the wrong shape (e.g. {key}{got})")
    what = ", ".join(problems)
    raise UserError(f"--proposer-weights {source}: not a checkpoint of this Detectron2 model: {what}, "
                    f"{max(loaded, 0)} matched; give a checkpoint of the config's architecture "
                    f"(--detectron2-config), 'zoo' or 'none'")


class Detectron2RPNProposer:
    """The RPN of a Detectron2 Faster R-CNN (``proposal_generator``), built without the ROI heads.

    Built as Detectron2's RPN-only ``ProposalNetwork`` (``MODEL.META_ARCHITECTURE``) from a model-zoo config
    name (its packaged YAML, found without ``detectron2.model_zoo``: :func:`zoo_config_file`) or a local YAML file,
    so the weights loaded are exactly the parts used; the load is strict for them (:func:`check_strict_load`).
    Each image alone (batch independence, see :class:`TorchvisionRPNProposer`): the test-time resize of
    ``ResizeShortestEdge`` (shorter side ``--proposer-image-size``, default the config's ``INPUT.MIN_SIZE_TEST``),
    normalisation by ``pixel_mean``/``pixel_std``, ``ImageList.from_tensors`` (padding to the backbone's size
    divisibility), ``model.backbone``, ``model.proposal_generator``; boxes scaled back to original pixels.
    ``tests/test_detectron2.py`` checks the result bit for bit against Detectron2's own ``DefaultPredictor`` with
    the same ``ProposalNetwork`` config and checkpoint (``make test-detectron2``).

    Args:
        num_rois: N. config: model-zoo config name (``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``) or a YAML path.
        weights: ``zoo`` (the zoo checkpoint of ``config``, or a local YAML's ``MODEL.WEIGHTS``), a checkpoint
        path, or ``none`` (random, seeded: tests). min_size: shorter side (None: the config's). device: where it runs.
    """

    name = "detectron2"
    runs_in_loader = False

    def __init__(self, *, num_rois: int = 40, config: str = DETECTRON2_DEFAULT_CONFIG, weights: str = "zoo",
                 min_size: int | None = None, device: str = "cpu") -> None:
        try:
            import detectron2  # noqa: F401 -- first, so that "not installed" is told apart from a broken submodule
            from detectron2.checkpoint import DetectionCheckpointer
            from detectron2.config import get_cfg
            from detectron2.data import transforms as T
            from detectron2.modeling import build_model
            from detectron2.structures import ImageList
        except Exception as e:  # noqa: BLE001 -- ImportError, and AttributeError (Pillow) raised by its modules
            raise UserError(detectron2_import_problem(e)) from e
        from iagcn.extract.backbones import seeded_init

        self.num_rois = num_rois
        cfg = get_cfg()
        local = Path(config)
        if local.suffix in (".yaml", ".yml") and local.is_file():
            try:
                cfg.merge_from_file(str(local))
            except Exception as e:  # noqa: BLE001
                raise UserError(f"--detectron2-config {local}: not a readable Detectron2 config "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:160]}); check the file") from e
        else:
            if local.suffix in (".yaml", ".yml") and (local.is_absolute() or local.exists() or config.startswith(".")):
                raise UserError(f"--detectron2-config {config}: no such file; give a YAML path or a model-zoo name "
                                f"such as {DETECTRON2_DEFAULT_CONFIG}")
            cfg.merge_from_file(str(zoo_config_file(config)))
        cfg.MODEL.META_ARCHITECTURE = "ProposalNetwork"  # backbone + RPN only: the parts used, loaded strictly
        cfg.MODEL.DEVICE = device
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = max(cfg.MODEL.RPN.POST_NMS_TOPK_TEST, num_rois)
        if min_size is not None:
            cfg.INPUT.MIN_SIZE_TEST = min_size
            cfg.INPUT.MAX_SIZE_TEST = rpn_max_size(min_size)
        with seeded_init():  # weights "none": the same random RPN in every run
            self.model = build_model(cfg).eval()
        if weights == "none":
            self.weights_sha256 = "none"
        else:
            if weights == "zoo":
                source = cfg.MODEL.WEIGHTS if local.is_file() else zoo_checkpoint_url(config)
                if not source:
                    raise UserError(f"--proposer-weights zoo: the config {config} names no MODEL.WEIGHTS; "
                                    f"pass --proposer-weights PATH or none")
                self.weights_sha256 = f"zoo:{config}" if not local.is_file() else f"config:{source}"
            else:
                path = Path(weights)
                if not path.is_file():
                    raise UserError(f"--proposer-weights {path}: no such file; give a Detectron2 checkpoint, 'zoo' or 'none'")
                source = str(path)
                self.weights_sha256 = sha256_file(path)
            self._load_strict(DetectionCheckpointer, source, option_value=weights if weights != "zoo" else source)
        self.min_size, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self._transforms, self._image_list = T, ImageList

    def _load_strict(self, checkpointer_cls, source: str, *, option_value: str) -> None:
        """Load with Detectron2's checkpointer (zoo URLs, .pkl conversion), recording the incompatible keys it reports
        and the keys of the state dict it hands to ``load_state_dict``; then :func:`check_strict_load`."""

        class _Recording(checkpointer_cls):  # the checkpointer reports incompatible keys through this hook
            incompatible = None

            def _log_incompatible_keys(self, incompatible) -> None:  # noqa: D401
                type(self).incompatible = incompatible

        given: list[set[str]] = []
        load_state_dict = self.model.load_state_dict

        def recording_load_state_dict(state_dict, *args, **kwargs):  # the keys the file provides, before defaults
            given.append(set(state_dict))
            return load_state_dict(state_dict, *args, **kwargs)

        remote = "://" in source
        self.model.load_state_dict = recording_load_state_dict
        try:
            _Recording(self.model).load(source)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 -- unreadable file, offline download: the user's to fix
            text = " ".join(str(e).split())[:160]
            if remote:
                raise UserError(f"--proposer-weights zoo: could not download {source} ({type(e).__name__}: {text}); "
                                f"go online once (Detectron2 caches it) or pass --proposer-weights PATH") from e
            raise UserError(f"--proposer-weights {option_value}: not a readable Detectron2 checkpoint "
                            f"({type(e).__name__}: {text}); check the file") from e
        finally:
            del self.model.load_state_dict  # the instance attribute: back to the class's method
        check_strict_load(_Recording.incompatible, model_keys=list(self.model.state_dict()), source=option_value,
                          given_keys=given[-1] if given else set())

    def resize(self, height: int, width: int):
        """The test-time resize of an image of ``height`` x ``width``: Detectron2's ``ResizeShortestEdge`` output
        shape (shorter side ``min_size``, longer side at most ``max_size``), bilinear as its default; built directly,
        so no random draw (``ResizeShortestEdge.get_transform`` samples its size from NumPy's global RNG)."""
        from PIL import Image

        T = self._transforms
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, self.min_size, self.max_size)
        return T.ResizeTransform(height, width, new_h, new_w, Image.BILINEAR)

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        return [self._propose_one(im) for im in images]  # one at a time: independent of the batch

    @torch.inference_mode()
    def _propose_one(self, image: np.ndarray) -> Proposals:
        h, w = image.shape[:2]
        arr = np.ascontiguousarray(image[:, :, ::-1] if self.bgr else image)  # (H, W, 3) in the model's channel order
        resized = self.resize(h, w).apply_image(arr)  # (H', W', 3) uint8
        rh, rw = resized.shape[:2]
        x = torch.from_numpy(resized.transpose(2, 0, 1).copy()).to(self.model.device).float()  # (3, H', W')
        x = (x - self.model.pixel_mean) / self.model.pixel_std  # normalised as ProposalNetwork.forward does
        batch = self._image_list.from_tensors([x], self.model.backbone.size_divisibility,
                                              padding_constraints=self.model.backbone.padding_constraints)  # (1, 3, H'', W'')
        features = self.model.backbone(batch.tensor)  # dict of FPN levels
        (inst,), _ = self.model.proposal_generator(batch, features, None)  # Instances(proposal_boxes, objectness_logits)
        scale = np.array([w / rw, h / rh, w / rw, h / rh], dtype=np.float32)  # resized -> original pixels
        boxes = inst.proposal_boxes.tensor.float().cpu().numpy() * scale  # (M, 4)
        return top_n_with_padding(boxes, inst.objectness_logits.float().cpu().numpy(), num=self.num_rois, height=h, width=w)
