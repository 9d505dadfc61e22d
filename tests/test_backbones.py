"""Backbones: the bundled EfficientNet-Lite0 weights load through our key mapping and classify a real photo."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iagcn.extract.backbones import (LITE0_STAGE_DEPTHS, build_backbone, bundled_lite0_weights, lukemelas_to_timm_keys)


def test_key_mapping_covers_every_bundled_key_and_every_timm_key():
    import timm

    sd = torch.load(bundled_lite0_weights(), map_location="cpu", weights_only=True)
    names = lukemelas_to_timm_keys(list(sd))
    timm_keys = set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert len(set(names.values())) == len(sd) == len(timm_keys)
    assert set(names.values()) == timm_keys
    # shapes agree too (a wrong stage split would pair tensors of different widths)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert all(sd[k].shape == ref[v].shape for k, v in names.items())
    assert sum(LITE0_STAGE_DEPTHS) == 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))


def test_grace_hopper_is_a_military_uniform():
    from matplotlib import cbook
    from PIL import Image

    torch.manual_seed(0)
    b = build_backbone("efficientnet-lite0", weights="imagenet")
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        img = Image.open(fh).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]  # (1, 3, 224, 224) uint8
    with torch.inference_mode():
        probs = b.forward_logits(b.normalize(x)).softmax(-1)[0]  # (1000,)
    top5 = probs.topk(5).indices.tolist()
    assert 652 in top5  # ImageNet 652 "military uniform"
    # and the random network does not get there: the weights matter
    r = build_backbone("efficientnet-lite0", weights="none")
    with torch.inference_mode():
        assert r.forward_logits(r.normalize(x)).softmax(-1)[0, 652] < probs[652]


@pytest.mark.parametrize("name,size,dim", [("efficientnet-lite0", 96, 1280), ("resnet101", 64, 2048)])
def test_last_map_shape_follows_input_size(name, size, dim):
    b = build_backbone(name, weights="none")
    assert b.feature_dim == dim
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        fmap = b.forward_features(b.normalize(x))
    assert fmap.shape == (2, dim, size // 32, size // 32)
    assert torch.isfinite(fmap).all()


def test_weights_path_records_sha256_and_bad_files_are_user_errors(tmp_path):
    import hashlib

    from iagcn.errors import UserError

    src = bundled_lite0_weights()
    b = build_backbone("efficientnet-lite0", weights=str(src))
    assert b.weights_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="bad.pth"):
        build_backbone("efficientnet-lite0", weights=str(bad))
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(UserError, match="wrong.pth"):
        build_backbone("resnet101", weights=str(tmp_path / "wrong.pth"))
    with pytest.raises(UserError, match="--backbone"):
        build_backbone("vgg", weights="none")
