"""The training floor (bench/floor.py): runs on tiny shapes, and its FLOP formula matches independent counts."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.floor import FloorStep, Product, floor_flops, head_products, products_for_config

SHAPES = dict(batch=3, num_rois=5, feature_dim=16, num_classes=4, embedding_dim=6)

#: the seven presets' deciding fields (paper-decisions.md, "Ablation presets"), written out independently of train/
PRESET_FIELDS = {
    "resnet": dict(global_branch="linear", variational=False, region_branch=False),
    "mlgcn": dict(global_branch="gcn", global_adjacency="static", gcn_widths=(8,), variational=False,
                  region_branch=False),
    "idlcm": dict(global_branch="gcn", global_adjacency="fused", variational=False, region_branch=False),
    "idlcm-vi": dict(global_branch="gcn", global_adjacency="fused", variational=True, region_branch=False),
    "iagcn": dict(global_branch="gcn", global_adjacency="fused", variational=True, region_branch=True),
    "comsco": dict(global_branch="none", variational=False, region_branch=True, region_adjacency="individual"),
    "mlgcn-comsco": dict(global_branch="gcn", global_adjacency="static", gcn_widths=(8,), variational=False,
                         region_branch=True, region_adjacency="individual"),
    "iagcn-no-last-relu": dict(region_relu_after_last=False),
    "iagcn-region-nodes": dict(region_reading="region-nodes"),
}
SMALL_WIDTHS = dict(gcn_widths=(7, 9), region_widths=(3, 5, 6))


def _products(fields):
    return head_products(**{**SMALL_WIDTHS, **fields}, **SHAPES)


@pytest.mark.parametrize("name", sorted(PRESET_FIELDS))
def test_floor_step_runs_and_flops_match_torch_flop_counter(name):
    products = _products(PRESET_FIELDS[name])
    assert products, name
    step = FloorStep(products)
    with FlopCounterMode(display=False) as counter:
        step.run()
    assert counter.get_total_flops() == floor_flops(products) == step.flops
    fwd = FloorStep(products, backward=False)
    with FlopCounterMode(display=False) as counter:
        fwd.run()
    assert counter.get_total_flops() == floor_flops(products, backward=False)
    assert floor_flops(products, backward=False) < floor_flops(products)


def test_resnet_floor_is_two_products_by_hand():
    B, D, C = SHAPES["batch"], SHAPES["feature_dim"], SHAPES["num_classes"]
    products = _products(PRESET_FIELDS["resnet"])
    # forward x W (B x D x C multiply-adds) + the weight gradient x^T dY (same); x is data: no input gradient
    assert floor_flops(products) == 2 * (2 * B * D * C)


def test_static_label_gcn_floor_by_hand():
    B, D, C, E = SHAPES["batch"], SHAPES["feature_dim"], SHAPES["num_classes"], SHAPES["embedding_dim"]
    w = 8
    products = _products(PRESET_FIELDS["mlgcn"])
    mac = {
        "H0 W0": (C * E * w, 1),           # data H0: weight gradient only
        "Â h0": (C * C * w, 1),           # constant Â_S: gradient of h0 only
        "h W1": (C * w * D, 2),           # both operands need gradients
        "Â (h W1)": (C * C * D, 1),
        "x M^T": (B * D * C, 1),          # data x: gradient of M only
    }
    assert floor_flops(products) == sum(2 * m * (1 + g) for m, g in mac.values())


def test_product_flops_formula():
    p = Product("p", (2, 3), 4, 5, 6, left_grad=True, right_grad=False)
    assert p.forward_flops == 2 * 6 * 4 * 5 * 6
    assert p.flops == 2 * p.forward_flops


def test_iagcn_floor_dominated_by_region_last_layer():
    """With ReLU after the region GCN's 4th layer, the (B C, 1024) x (1024, D) product dominates (paper-decisions.md)."""
    products = head_products(batch=32, num_rois=40, feature_dim=2048, num_classes=20, embedding_dim=300)
    top = max(products, key=lambda p: p.flops)
    assert top.name.startswith("region R = h W_last")
    no_relu = head_products(region_relu_after_last=False, batch=32, num_rois=40, feature_dim=2048, num_classes=20,
                            embedding_dim=300)
    assert floor_flops(no_relu) < floor_flops(products) / 2


def test_products_for_real_presets_when_train_is_present():
    config = pytest.importorskip("iagcn.train.config")
    for name in config.PRESETS:
        cfg = config.config_for_preset(name)
        products = products_for_config(cfg, **SHAPES)
        step = FloorStep(products)
        with FlopCounterMode(display=False) as counter:
            step.run()
        assert counter.get_total_flops() == floor_flops(products), name
    # the preset's parts decide the floor: the full IA-GCN costs more than any of its ablations
    costs = {n: floor_flops(products_for_config(config.config_for_preset(n), **SHAPES)) for n in config.PRESETS}
    assert costs["iagcn"] == max(costs[n] for n in ("resnet", "mlgcn", "idlcm", "idlcm-vi", "iagcn"))
    assert costs["resnet"] == min(costs.values())
