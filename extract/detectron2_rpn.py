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
    if isinstance(e, ModuleNotFoundError) and e.name == "pkg_resources":
        fix = ("setuptools >= 81 no longer provides pkg_resources, which detectron2.model_zoo imports: "
               "pip install 'setuptools<81' (see docs/detectron2.md)")
    elif isinstance(e, AttributeError) and "LINEAR" in text:
        fix = ("Pillow >= 10 removed Image.LINEAR, which this Detectron2 release uses: install a newer Detectron2 "
               "or 'pillow<10' (see docs/detectron2.md)")
    elif isinstance(e, (ImportError, OSError)) and ("_C" in text or "undefined symbol" in text or ".so" in text):
        fix = ("its compiled extension does not load (built against another torch?): rebuild Detectron2 in this "
               "environment (see docs/detectron2.md)")
    else:
        fix = "see docs/detectron2.md"
    return f"--proposer detectron2: Detectron2 is installed but importing it failed ({type(e).__name__}: {text}); {fix}"


def check_strict_load(incompatible, *, model_keys: Sequence[str], source: str) -> None:
    """Refuse a checkpoint that does not fill every weight of the parts used (backbone + RPN).

    ``incompatible``: Detectron2's (fvcore's) ``_IncompatibleKeys`` of the load (``missing_keys``,
    ``unexpected_keys``, ``incorrect_shapes``); ``model_keys``: the model's state-dict keys. Unexpected keys are
    fine (a full Faster R-CNN checkpoint carries ROI heads that the RPN does not use).
    """
    missing = list(getattr(incompatible, "missing_keys", []) or [])
    shapes = list(getattr(incompatible, "incorrect_shapes", []) or [])
    if not missing and not shapes:
        return
    loaded = len(model_keys) - len(set(missing) | {k for k, *_ in shapes})
    what = (f"{len(missing)} of {len(model_keys)} weights of the backbone and RPN are missing (e.g. {missing[0]})"
            if missing else f"{len(shapes)} weights have the wrong shape (e.g. {shapes[0][0]})")
    raise UserError(f"--proposer-weights {source}: not a checkpoint of this Detectron2 model: {what}, "
                    f"{max(loaded, 0)} matched; give a checkpoint of the config's architecture "
                    f"(--detectron2-config), 'zoo' or 'none'")


class Detectron2RPNProposer:
    """The RPN of a Detectron2 Faster R-CNN (``proposal_generator``), built without the ROI heads.

    Built as Detectron2's RPN-only ``ProposalNetwork`` (``MODEL.META_ARCHITECTURE``) from a model-zoo config
    name or a local YAML file, so the weights loaded are exactly the parts used; the load is strict for them
    (:func:`check_strict_load`). Each image alone (batch independence, see :class:`TorchvisionRPNProposer`):
    the config's test-time ``ResizeShortestEdge`` (shorter side ``--proposer-image-size``, default the config's
    ``INPUT.MIN_SIZE_TEST``), normalisation by ``pixel_mean``/``pixel_std``, ``ImageList.from_tensors`` (padding
    to the backbone's size divisibility), ``model.backbone``, ``model.proposal_generator``;
    boxes scaled back to original pixels. Written against Detectron2's documented API; see docs/detectron2.md
    for what was and was not run.

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
            from detectron2 import model_zoo
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
            try:
                cfg.merge_from_file(model_zoo.get_config_file(config))
            except RuntimeError as e:
                raise UserError(f"--detectron2-config {config}: not in Detectron2's model zoo and not a file; "
                                f"give a zoo name such as {DETECTRON2_DEFAULT_CONFIG} or a YAML path") from e
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
                source = cfg.MODEL.WEIGHTS if local.is_file() else model_zoo.get_checkpoint_url(config)
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
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.min_size, self.max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self.bgr = cfg.INPUT.FORMAT == "BGR"
        self._image_list = ImageList

    def _load_strict(self, checkpointer_cls, source: str, *, option_value: str) -> None:
        """Load with Detectron2's checkpointer (zoo URLs, .pkl conversion) and keep the incompatible keys it reports."""

        class _Recording(checkpointer_cls):  # the checkpointer reports incompatible keys through this hook
            incompatible = None

            def _log_incompatible_keys(self, incompatible) -> None:  # noqa: D401
                type(self).incompatible = incompatible

        remote = "://" in source
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
        check_strict_load(_Recording.incompatible, model_keys=list(self.model.state_dict()), source=option_value)

    def propose(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        return [self._propose_one(im) for im in images]  # one at a time: independent of the batch

    @torch.inference_mode()
    def _propose_one(self, image: np.ndarray) -> Proposals:
        h, w = image.shape[:2]
        arr = image[:, :, ::-1] if self.bgr else image  # (H, W, 3) in the model's channel order
        resized = self.resize.get_transform(arr).apply_image(np.ascontiguousarray(arr))  # (H', W', 3)
        rh, rw = resized.shape[:2]
        x = torch.as_tensor(np.ascontiguousarray(resized).transpose(2, 0, 1)).to(self.model.device).float()  # (3, H', W')
        x = (x - self.model.pixel_mean) / self.model.pixel_std  # normalised as ProposalNetwork.forward does
        batch = self._image_list.from_tensors([x], self.model.backbone.size_divisibility)  # (1, 3, H'', W'') padded
        features = self.model.backbone(batch.tensor)  # dict of FPN levels
        (inst,), _ = self.model.proposal_generator(batch, features, None)  # Instances(proposal_boxes, objectness_logits)
        scale = np.array([w / rw, h / rh, w / rw, h / rh], dtype=np.float32)  # resized -> original pixels
        boxes = inst.proposal_boxes.tensor.float().cpu().numpy() * scale  # (M, 4)
        return top_n_with_padding(boxes, inst.objectness_logits.float().cpu().numpy(), num=self.num_rois, height=h, width=w)
