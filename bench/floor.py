"""The arithmetic floor of one training step of a head: its essential matrix products, nothing else.

A preset's head (paper-decisions.md, "IA-GCN head", "Ablation presets") is, per batch of B images with
N regions of dimension D, C labels and label embeddings of width E, a short list of matrix products.
The *floor* of a training step is the time of exactly those products and of their backward products,
run as raw ``torch.matmul(..., out=...)`` calls on preallocated tensors: no autograd, no activations,
no normalisation, no loss, no optimizer, no data loading. An epoch's floor is the step floor times the
number of steps. A training epoch divided by its floor says how much of the time goes to anything but
the arithmetic the model cannot avoid.

Each product ``out = left @ right`` ((batch..., m, k) @ (batch..., k, n)) costs 2 * batch * m * k * n
FLOPs forward; its backward costs the same again for the gradient of each operand that needs one:
``d_left = d_out @ right^T`` (only when ``left`` depends on parameters: not for the cached features x, X
or the label embeddings H0) and ``d_right = left^T @ d_out`` (only when ``right`` depends on parameters:
not for the static adjacency Â_S of ML-GCN). Products are listed in the associations the model uses
(the label GCN's last layer re-associated, y_w = Â (H (W x)); see train/label_gcn.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Product:
    """One matrix product ``(*batch, m, k) @ (*batch, k, n)`` and which operand gradients its backward needs."""

    name: str
    batch: tuple[int, ...]
    m: int
    k: int
    n: int
    left_grad: bool = True
    right_grad: bool = True

    @property
    def forward_flops(self) -> int:
        b = 1
        for s in self.batch:
            b *= s
        return 2 * b * self.m * self.k * self.n

    @property
    def flops(self) -> int:
        """Forward plus backward FLOPs (one multiply-add = 2 FLOPs)."""
        return self.forward_flops * (1 + int(self.left_grad) + int(self.right_grad))


def head_products(*, global_branch: str = "gcn", global_adjacency: str = "fused", variational: bool = True,
                  region_branch: bool = True, region_adjacency: str = "fused", region_reading: str = "label-nodes",
                  region_relu_after_last: bool = True, gcn_widths: tuple[int, ...] = (512, 1024),
                  region_widths: tuple[int, ...] = (256, 512, 1024), region_pool: str = "features",
                  decay_on: str = "weights", batch: int,
                  num_rois: int, feature_dim: int, num_classes: int, embedding_dim: int) -> list[Product]:
    """The essential products of one forward pass of the head a TrainConfig describes (its fields by name).

    Args:
        global_branch ... region_pool: the TrainConfig fields that decide which parts run.
        decay_on: "classifiers" (the frozen recipe) adds the L2 weight_decay / 2 ||M||^2 on the label GCN's
            classifiers M to the loss; with a per-image Â_F training then builds M (B, C, D) and scores with it
            (train/label_gcn.py), so its products replace the re-associated scores.
        batch: B. num_rois: N. feature_dim: D. num_classes: C. embedding_dim: E.
    """
    B, N, D, C, E = batch, num_rois, feature_dim, num_classes, embedding_dim
    uses_image_lcm = (global_branch == "gcn" and global_adjacency == "fused") or region_branch
    P: list[Product] = []
    if variational:
        # Eq. 8-9: z_mu = X w_mu, z_logvar = X w_logvar: (B*N, D) @ (D, 2)
        P.append(Product("variational X w", (), B * N, D, 2, left_grad=False))
    if uses_image_lcm:
        # Eq. 2: A_I^w = f_CNN(z X) = z (X W^T): (B*N, D) @ (D, C)
        P.append(Product("f_CNN X W", (), B * N, D, C, left_grad=False))
    if global_branch == "linear":
        P.append(Product("linear x W", (), B, D, C, left_grad=False))           # ResNet-101 row: y = x W
    elif global_branch == "gcn":
        dims = [E, *gcn_widths, D]
        static = global_adjacency == "static"
        P.append(Product("label GCN H0 W0", (), C, E, dims[1], left_grad=False))  # (C, E) @ (E, w0), once
        if static:
            # Â_S constant: every layer once per step, M = Â H W (C, D), then y_w = x M^T
            P.append(Product("label GCN Â h0", (), C, C, dims[1], left_grad=False))
            for a, b in zip(dims[1:-2], dims[2:-1]):
                P.append(Product(f"label GCN h W ({a}->{b})", (), C, a, b))
                P.append(Product(f"label GCN Â h ({b})", (), C, C, b, left_grad=False))
            P.append(Product(f"label GCN h W_last ({dims[-2]}->{D})", (), C, dims[-2], D))
            P.append(Product("label GCN Â (h W_last)", (), C, C, D, left_grad=False))
            P.append(Product("y_w = x M^T", (), B, D, C, left_grad=False))
        else:
            # per-image Â_F (B, C, C): hidden layers per image, last layer re-associated (Eq. 5-6)
            P.append(Product("label GCN Â_F h0", (B,), C, C, dims[1]))
            for a, b in zip(dims[1:-2], dims[2:-1]):
                P.append(Product(f"label GCN h W ({a}->{b})", (), B * C, a, b))
                P.append(Product(f"label GCN Â_F h ({b})", (B,), C, C, b))
            if decay_on == "classifiers":
                # the L2 on M needs the classifiers themselves: M = (Â_F h) W_last (B, C, D), then y_w = M x
                P.append(Product(f"Q = Â_F h ({dims[-2]})", (B,), C, C, dims[-2]))
                P.append(Product(f"M = Q W_last ({dims[-2]}->{D})", (), B * C, dims[-2], D))
                P.append(Product("y_w = M x", (B,), C, D, 1, right_grad=False))
            else:
                P.append(Product(f"u = x W_last ({D}->{dims[-2]})", (), B, D, dims[-2], left_grad=False))
                P.append(Product("v = h u", (B,), C, dims[-2], 1))
                P.append(Product("y_w = Â_F v", (B,), C, C, 1))
    if region_branch:
        adjacency_grad = True  # Â_F and Â_I both depend on f_CNN
        if region_reading == "label-nodes":
            dims = [N, *region_widths, D]
            # Eq. 10, label nodes: h (B, C, N); per hidden layer (Â h) W
            for a, b in zip(dims[:-2], dims[1:-1]):
                P.append(Product(f"region Â h ({a})", (B,), C, C, a, left_grad=adjacency_grad))
                P.append(Product(f"region (Â h) W ({a}->{b})", (), B * C, a, b))
            P.append(Product(f"region Â h ({dims[-2]})", (B,), C, C, dims[-2], left_grad=adjacency_grad))
            if region_relu_after_last:
                P.append(Product(f"region R = h W_last ({dims[-2]}->{D})", (), B * C, dims[-2], D))
                P.append(Product("region FC diagonal readout", (C,), B, D, 1))   # y_r[b, c] = R[b, c] . fc_c
            else:
                P.append(Product("region W_last fc^T", (), dims[-2], D, C))
                P.append(Product("region diag(h V)", (C,), B, dims[-2], 1))
        else:
            dims = [C, *region_widths, D]
            P.append(Product("region-nodes s s^T", (B,), N, C, N))
            P.append(Product("region-nodes A_I^w Â", (B,), N, C, C))
            for a, b in zip(dims[:-2], dims[1:-1]):
                P.append(Product(f"region-nodes h W ({a}->{b})", (), B * N, a, b))
                P.append(Product(f"region-nodes Â_R h ({b})", (B,), N, N, b))
            w = dims[-2]
            P.append(Product(f"region-nodes Â_R h ({w})", (B,), N, N, w))       # the 4th layer's Â_R, before W_last
            if region_pool == "features" or region_relu_after_last:
                P.append(Product(f"region-nodes R = h W_last ({w}->{D})", (), B * N, w, D))
                if region_pool == "features":
                    P.append(Product("region-nodes FC (max-pooled R)", (), B, D, C))
                else:
                    P.append(Product("region-nodes FC per region", (), B * N, D, C))
            else:
                # pool = scores, no ReLU after the 4th layer: the FC re-associates, per region Â_R R_3 (W_3 fc^T)
                P.append(Product("region-nodes V = W_last fc^T", (), w, D, C))
                P.append(Product("region-nodes h V", (), B * N, w, C))
    return P


def products_for_config(config: Any, *, batch: int, num_rois: int, feature_dim: int, num_classes: int,
                        embedding_dim: int, training: bool = True) -> list[Product]:
    """:func:`head_products` for a ``train.config.TrainConfig`` (or anything with its field names); with
    ``training=False`` (scoring) the L2 on the classifiers is not computed, so its products are not counted."""
    names = ("global_branch", "global_adjacency", "variational", "region_branch", "region_adjacency",
             "region_reading", "region_relu_after_last", "region_pool", "gcn_widths", "region_widths")
    decay_on = getattr(config, "decay_on", "weights") if training else "weights"
    return head_products(**{k: getattr(config, k) for k in names}, decay_on=decay_on, batch=batch, num_rois=num_rois,
                         feature_dim=feature_dim, num_classes=num_classes, embedding_dim=embedding_dim)


def floor_flops(products: list[Product], *, backward: bool = True) -> int:
    """FLOPs of one step: forward products, plus their backward products when ``backward``."""
    return sum(p.flops if backward else p.forward_flops for p in products)


class FloorStep:
    """The products of one training step on preallocated tensors; ``run()`` executes them once.

    ``run()`` does, for every product, ``out = left @ right`` and (with ``backward``) ``d_left = d_out @ right^T``,
    ``d_right = left^T @ d_out`` as needed, each with ``torch.matmul(..., out=...)``. Values are random and
    meaningless; only shapes matter.
    """

    def __init__(self, products: list[Product], *, backward: bool = True, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.products = products
        self.backward = backward
        self.ops: list[tuple] = []
        for p in products:
            def t(*shape: int) -> torch.Tensor:
                return torch.randn(*shape, generator=g, dtype=dtype).to(device)

            left, right = t(*p.batch, p.m, p.k), t(*p.batch, p.k, p.n)             # (..., m, k), (..., k, n)
            out, d_out = t(*p.batch, p.m, p.n), t(*p.batch, p.m, p.n)             # (..., m, n)
            d_left = t(*p.batch, p.m, p.k) if backward and p.left_grad else None   # (..., m, k)
            d_right = t(*p.batch, p.k, p.n) if backward and p.right_grad else None  # (..., k, n)
            # transposed views made once: the backward products read them as the autograd kernels do
            self.ops.append((left, right, out, d_out, d_left, d_right, right.transpose(-1, -2), left.transpose(-1, -2)))

    def run(self) -> None:
        for left, right, out, d_out, d_left, d_right, right_t, left_t in self.ops:
            torch.matmul(left, right, out=out)                 # (..., m, n) forward
            if d_left is not None:
                torch.matmul(d_out, right_t, out=d_left)       # (..., m, k) = (..., m, n) @ (..., n, k)
            if d_right is not None:
                torch.matmul(left_t, d_out, out=d_right)       # (..., k, n) = (..., k, m) @ (..., m, n)

    @property
    def flops(self) -> int:
        return floor_flops(self.products, backward=self.backward)


def time_floor_step(step: FloorStep, *, iters: int, warmup: int = 1, sync=None) -> float:
    """Seconds per ``step.run()``: ``warmup`` untimed runs, then the mean over ``iters`` timed runs."""
    for _ in range(warmup):
        step.run()
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        step.run()
    if sync is not None:
        sync()
    return (time.perf_counter() - t0) / iters
