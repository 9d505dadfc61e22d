"""Optimisers of the heads: SGD (paper 4.3), AdamW, or the frozen recipe's split of the two.

The frozen recipe (docs/real-data.md) trains the parts that read the global feature x -- the linear classifier
and the label GCN, whose y_w is linear in x -- with SGD and an L2 penalty (like a regularised logistic
regression on standardised features), and the region side -- f_CNN (Eq. 2), the variational weights (Eq. 8-9)
and the region GCN (Eq. 10), four bias-free layers deep -- with AdamW: on real photos SGD at the global
branch's learning rate left the region branch at chance (hold-out mAP 15.9) while AdamW trained it (74.5).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


class SplitOptimizer:
    """Two optimisers stepped together, presented as one (param_groups, zero_grad, step, state_dict)."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.parts for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.parts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.parts:
            o.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [o.state_dict() for o in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for o, s in zip(self.parts, state["parts"]):
            o.load_state_dict(s)


def _groups(params: list[nn.Parameter], vi: list[nn.Parameter], scale: float, vi_scale: float,
            undecayed: set[int] = frozenset()) -> list[dict]:
    decayed = [p for p in params if id(p) not in undecayed]
    free = [p for p in params if id(p) in undecayed]
    groups = [{"params": decayed, "lr_scale": scale}] if decayed else []
    if free:
        groups.append({"params": free, "lr_scale": scale, "weight_decay": 0.0})
    if vi:
        # w_mu, w_logvar (Eq. 8-9): under L_KL their curvature is ~ mean ||X_r||^2, so the heads' lr would make them
        # oscillate; config.vi_lr_scale keeps lr * curvature < 2 (docs/training.md)
        groups.append({"params": vi, "lr_scale": scale * vi_scale})
    return groups


def make_optimizer(model: nn.Module, config) -> torch.optim.Optimizer | SplitOptimizer:
    """The optimiser of ``config`` for ``model`` (an IAGCNHead); every group carries ``lr_scale`` (x schedule lr).

    Fused kernels: measured here (2 threads, the IA-GCN head's weights) the default per-tensor SGD loop took
    149 ms/step, foreach 41 ms, fused 29 ms.
    """
    vi = list(model.variational.parameters()) if model.variational is not None else []
    # f_CNN (Eq. 2) is a linear classifier per region: with f_cnn_optimizer = heads it is trained like the heads'
    # linear classifiers (SGD + L2), otherwise with the region side's optimiser
    f_cnn = list(model.image_lcm.parameters()) if (model.image_lcm is not None and
                                                   config.f_cnn_optimizer == "region") else []  # Eq. 2
    region = list(model.region.parameters()) if model.region is not None else []        # Eq. 10
    taken = {id(p) for p in vi + f_cnn + region}
    rest = [p for p in model.parameters() if id(p) not in taken]
    # decay_on = classifiers: the label GCN's W^(l) get no weight decay; the loss penalises the classifiers M they
    # produce instead (train/model.py total_loss)
    undecayed = {id(p) for p in model.label_gcn.parameters()} \
        if (config.decay_on == "classifiers" and model.label_gcn is not None) else set()

    def sgd(groups):
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                               fused=True)

    def adamw(groups, wd):
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=wd, fused=True)

    if config.region_optimizer in ("adamw", "sgd") and (region or vi or f_cnn):
        heads = _own_f_cnn_decay(model, config, _groups(rest, [], 1.0, 1.0, undecayed))
        region_groups = _groups(f_cnn + region, vi, config.region_lr / config.lr, config.vi_lr_scale)
        if config.region_optimizer == "sgd":
            # SGD with momentum at region_lr and its own L2 (region_weight_decay), in the heads' SGD when they use one
            for g in region_groups:
                g["weight_decay"] = config.region_weight_decay
            if config.optimizer == "sgd":
                return sgd(heads + region_groups)
        parts = []
        if rest:
            parts.append(sgd(heads) if config.optimizer == "sgd" else adamw(heads, config.weight_decay))
        parts.append(sgd(region_groups) if config.region_optimizer == "sgd" else
                     adamw(region_groups, config.region_weight_decay))
        return SplitOptimizer(parts)
    groups = _own_f_cnn_decay(model, config, _groups(rest + f_cnn + region, vi, 1.0, config.vi_lr_scale, undecayed))
    return adamw(groups, config.weight_decay) if config.optimizer == "adamw" else sgd(groups)


def _own_f_cnn_decay(model: nn.Module, config, groups: list[dict]) -> list[dict]:
    """With f_cnn_optimizer = heads and f_cnn_weight_decay set, f_CNN (Eq. 2) leaves ``groups`` for a group of its own
    at the heads' lr with that weight decay: its a_I, never supervised (Eq. 12-14), shapes the per-image adjacency Â_F,
    and the L2 that suits a linear classifier on x lets it overfit the training images (docs/real-data.md)."""
    if config.f_cnn_optimizer != "heads" or config.f_cnn_weight_decay is None or model.image_lcm is None:
        return groups
    own = {id(p) for p in model.image_lcm.parameters()}
    kept = []
    for g in groups:
        rest = [p for p in g["params"] if id(p) not in own]
        if rest:
            kept.append({**g, "params": rest})
    return kept + [{"params": list(model.image_lcm.parameters()), "lr_scale": 1.0,
                    "weight_decay": config.f_cnn_weight_decay}]
