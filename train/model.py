"""The IA-GCN head on cached features: branches wired per HeadConfig (TrainConfig.head()), fusion (Eq. 11) and losses (Eq. 12-14).

    x (B, D) global feature, X (B, N, D) region features, valid (B, N)
      -> [frozen recipe] standardised with the train part's statistics (train/standardize.py)
      -> [Var_Inf] z (Eq. 7-9) -> A_I^w, a_I, A_I (Eq. 2-4) -> A_F = A_S ⊙ A_I (Eq. 1), normalised
      -> y_w = label GCN on Â (Eq. 5-6)   (or a linear classifier on x: the ResNet-101 row)
      -> y_r = region GCN + FC (Eq. 10)
      -> y_f = lambda y_w + (1 - lambda) y_r (Eq. 11)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from iagcn.train.config import HeadConfig
from iagcn.train.image_lcm import ImageDependentLCM, fused_lcm, region_max_logit
from iagcn.train.label_gcn import LabelGCN
from iagcn.train.lcm import normalize_adjacency
from iagcn.train.region_branch import RegionBranch
from iagcn.train.variational import VariationalRegionWeighting, kl_loss
from iagcn.train.standardize import FeatureStandardizer


@dataclass
class HeadOutput:
    logits: torch.Tensor                      # (B, C) y_f
    y_w: torch.Tensor | None = None           # (B, C) global branch
    y_r: torch.Tensor | None = None           # (B, C) region branch
    z: torch.Tensor | None = None             # (B, N) region weights used
    z_mu: torch.Tensor | None = None          # (B, N)
    z_logvar: torch.Tensor | None = None      # (B, N)
    scores: torch.Tensor | None = None        # (B, N, C) A_I^w logits
    a_I: torch.Tensor | None = None           # (B, C)
    a_I_logits: torch.Tensor | None = None    # (B, C) max over valid regions of A_I^w (a_I = sigmoid of it)
    A_I: torch.Tensor | None = None           # (B, C, C)
    A_F: torch.Tensor | None = None           # (B, C, C) before normalisation
    classifier_sq_norm: torch.Tensor | None = None  # () ||M||_F^2 of the label GCN's classifiers (decay on M)


class IAGCNHead(nn.Module):
    """Every row of Tables 3-6 as one module; which parts run is decided by the HeadConfig (see PRESETS).

    Buffers (saved in every checkpoint): ``A_S`` (C, C) statistical LCM, ``A_S_hat`` its normalisation,
    ``label_embeddings`` H0 (C, E).
    """

    def __init__(self, *, config: HeadConfig, num_classes: int, feature_dim: int, num_rois: int,
                 label_embeddings: np.ndarray | torch.Tensor, A_S: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        if not isinstance(config, HeadConfig):
            raise TypeError(f"IAGCNHead(config=...) takes a HeadConfig (TrainConfig.head()), not {type(config).__name__}")
        cfg = self.config = config
        C, D = num_classes, feature_dim
        H0 = torch.as_tensor(np.asarray(label_embeddings), dtype=torch.float32)          # (C, E)
        A = torch.as_tensor(np.asarray(A_S), dtype=torch.float32)                        # (C, C)
        self.register_buffer("label_embeddings", H0)
        self.register_buffer("A_S", A)
        self.register_buffer("A_S_hat", normalize_adjacency(A, eps=cfg.adjacency_eps))     # (C, C)
        self.standardizer = FeatureStandardizer(feature_dim=D, center=cfg.standardize == "center") \
            if cfg.standardize != "none" else None
        self.variational = VariationalRegionWeighting(feature_dim=D) if cfg.variational else None
        self.image_lcm = ImageDependentLCM(feature_dim=D, num_classes=C) if cfg.uses_image_lcm else None
        self.linear = nn.Linear(D, C) if cfg.global_branch == "linear" else None
        self.label_gcn = LabelGCN(embedding_dim=H0.shape[1], widths=tuple(cfg.gcn_widths), feature_dim=D,
                                  activation=cfg.gcn_activation, leaky_slope=cfg.leaky_slope) \
            if cfg.global_branch == "gcn" else None
        self.gcn_bias = nn.Parameter(torch.zeros(C)) if (cfg.global_branch == "gcn" and cfg.gcn_bias) else None  # (C,)
        if cfg.global_branch != "none" and cfg.region_branch and cfg.fusion_scale == "matched":
            # running std of y_w and y_r over training batches (detached, like BatchNorm's statistics; saved in
            # every checkpoint): fusion_scale = matched fuses y_r at y_w's scale (Eq. 11 on a common scale)
            self.register_buffer("branch_std", torch.ones(2))                          # (2,) [std y_w, std y_r]
            self.register_buffer("branch_std_seen", torch.zeros((), dtype=torch.bool))  # () any batch seen yet
        self.region = RegionBranch(num_rois=num_rois, num_classes=C, feature_dim=D, widths=tuple(cfg.region_widths),
                                   reading=cfg.region_reading, relu_after_last=cfg.region_relu_after_last,
                                   init=cfg.region_init, pool=cfg.region_pool,
                                   adjacency_eps=cfg.adjacency_eps) if cfg.region_branch else None

    @property
    def uses_regions(self) -> bool:
        """Whether forward reads X (resnet and mlgcn read only x, so their batches can skip it)."""
        return self.variational is not None or self.image_lcm is not None or self.region is not None

    def forward(self, x: torch.Tensor, X: torch.Tensor | None, valid: torch.Tensor, *, naive: bool = False) -> HeadOutput:
        """x (B, D), X (B, N, D) (None allowed when not uses_regions), valid (B, N) bool -> HeadOutput."""
        B, D = x.shape
        cfg, out = self.config, HeadOutput(logits=x.new_zeros(0))
        if self.standardizer is not None:
            x, X = self.standardizer(x, X)                                             # (B, D), (B, N, D)
        valid = regions_or_padding(valid)                                              # (B, N)
        if self.variational is not None:
            out.z, out.z_mu, out.z_logvar = self.variational(X)                       # (B, N) x3, Eq. 7-9
        A_hat_F = A_hat_I = None
        if self.image_lcm is not None:
            z = F.softplus(out.z) if (out.z is not None and cfg.vi_positive) else out.z  # (B, N) option: z >= 0
            out.scores, out.a_I, out.A_I = self.image_lcm(X, valid, z)                 # (B, N, C), (B, C), (B, C, C)
            out.a_I_logits = region_max_logit(out.scores, valid)                       # (B, C)
            out.A_F = fused_lcm(self.A_S, out.A_I)                                     # (B, C, C) Eq. 1
            A_hat_F = normalize_adjacency(out.A_F, eps=cfg.adjacency_eps)             # (B, C, C) per image
            if cfg.region_branch and cfg.region_adjacency == "individual":
                A_I = out.A_I + torch.eye(out.A_I.shape[-1], device=x.device) if cfg.region_self_loops else out.A_I
                A_hat_I = normalize_adjacency(A_I, eps=cfg.adjacency_eps)             # (B, C, C)
        if self.linear is not None:
            out.y_w = self.linear(x)                                                   # (B, C) ResNet-101 row
        elif self.label_gcn is not None:
            A_hat = self.A_S_hat if cfg.global_adjacency == "static" else A_hat_F      # (C, C) or (B, C, C)
            if naive:
                out.y_w = self.label_gcn.forward_naive(x, self.label_embeddings, A_hat)  # (B, C) Eq. 5-6 literal
            else:
                out.y_w, out.classifier_sq_norm = self.label_gcn.scores_and_norm(
                    x, self.label_embeddings, A_hat, norm=self.training and cfg.decay_on == "classifiers")  # (B, C), ()
            if self.gcn_bias is not None:
                out.y_w = out.y_w + self.gcn_bias                                      # (B, C) M x + b
        if self.region is not None:
            A_hat = A_hat_F if cfg.region_adjacency == "fused" else A_hat_I            # (B, C, C)
            out.y_r = self.region(out.scores, valid, A_hat)                            # (B, C) Eq. 10
        if out.y_w is not None and out.y_r is not None:
            y_r = self.matched_region_scores(out.y_w, out.y_r) if cfg.fusion_scale == "matched" else out.y_r  # (B, C)
            out.logits = cfg.fusion_lambda * out.y_w + (1 - cfg.fusion_lambda) * y_r  # (B, C) Eq. 11
        else:
            out.logits = out.y_w if out.y_w is not None else out.y_r                   # (B, C)
        return out

    def matched_region_scores(self, y_w: torch.Tensor, y_r: torch.Tensor, *, momentum: float = 0.1) -> torch.Tensor:
        """y_r (B, C) rescaled to y_w's scale: y_r * std(y_w) / std(y_r), with running stds (updated in training).

        Under AdamW the region branch's logits grow ~10-20x larger than the L2-regularised y_w's, so Eq. 11 would
        weigh y_r most whatever lambda says (the paper's 0.8 included; docs/real-data.md). The factor is detached: it sets the scale
        at which y_r enters the fusion, not what either branch learns.
        """
        if self.training and y_w.shape[0] > 1:
            with torch.no_grad():
                batch = torch.stack([y_w.detach().std(), y_r.detach().std()]).clamp_min(1e-6)  # (2,)
                if bool(self.branch_std_seen):
                    self.branch_std.mul_(1 - momentum).add_(momentum * batch)          # (2,) running std
                else:
                    self.branch_std.copy_(batch)                                       # (2,) first batch
                    self.branch_std_seen.fill_(True)
        return y_r * (self.branch_std[0] / self.branch_std[1])                         # (B, C)


def regions_or_padding(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, N) bool -> (B, N): an image with no valid proposal is read through its padding boxes.

    Stage one pads every image to N boxes with whole-image boxes marked invalid. With no valid box at all, a_I
    would be sigmoid(-inf) = 0, so A_F = 0 and y_w = 0 (idlcm, iagcn), and the region-nodes max would run over an
    empty set (NaN logits). Reading such an image through its whole-image boxes keeps every equation defined.
    """
    none = ~valid.any(dim=1, keepdim=True)                                             # (B, 1) no valid region
    return valid | none                                                                # (B, N)


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, *, difficult: str = "ignore") -> torch.Tensor:
    """Eq. 13: BCE with logits, mean over labels and batch; targets (B, C) in {1, 0, -1}.

    ``difficult``: "ignore" masks target -1 out, "positive" / "negative" count it as 1 / 0.
    """
    t = targets.to(logits.dtype)                                                       # (B, C)
    if difficult == "ignore":
        keep = (t >= 0).to(logits.dtype)                                               # (B, C)
        bce = F.binary_cross_entropy_with_logits(logits, t.clamp_min(0), reduction="none")  # (B, C)
        return (bce * keep).sum() / keep.sum().clamp_min(1.0)                          # ()
    t = torch.where(t < 0, torch.full_like(t, 1.0 if difficult == "positive" else 0.0), t)  # (B, C)
    return F.binary_cross_entropy_with_logits(logits, t)                               # ()


def total_loss(out: HeadOutput, targets: torch.Tensor, valid: torch.Tensor, *, beta: float, difficult: str,
               a_I_loss_weight: float = 0.0, classifier_decay: float = 0.0,
               branch_loss_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 12: L = L_ML + beta L_KL (L_KL only with Var_Inf). Returns the loss and its parts as floats.

    With ``a_I_loss_weight`` > 0 (an option beyond the paper) a BCE on a_I's logits is added. With
    ``classifier_decay`` > 0 and ``out.classifier_sq_norm`` computed (the frozen recipe's ``decay_on=classifiers``)
    the L2 penalty classifier_decay / 2 ||M||_F^2 on the label GCN's classifiers is added: what SGD's weight decay
    adds for the linear classifier of the ResNet-101 row, whatever the GCN's depth. With ``branch_loss_weight`` > 0
    and both branches present, L_ML of y_w and of y_r are added with that weight (each branch must classify on its
    own; Eq. 11's fusion of the two is unchanged).
    """
    l_ml = multilabel_loss(out.logits, targets, difficult=difficult)                   # () Eq. 13
    loss = l_ml
    # every part, unweighted (log.csv): loss = ml + beta kl + branch_loss_weight (y_w + y_r) + a_I_weight a_I + l2
    parts = {"loss_ml": float(l_ml.detach()), "loss_kl": 0.0, "loss_y_w": 0.0, "loss_y_r": 0.0, "loss_a_I": 0.0,
             "loss_l2": 0.0}
    if out.z_mu is not None:
        l_kl = kl_loss(out.z_mu, out.z_logvar, regions_or_padding(valid))              # () Eq. 14, the regions read
        loss = loss + beta * l_kl                                                      # () Eq. 12
        parts["loss_kl"] = float(l_kl.detach())
    if branch_loss_weight > 0 and out.y_w is not None and out.y_r is not None:
        l_w = multilabel_loss(out.y_w, targets, difficult=difficult)                   # () L_ML(y_w)
        l_r = multilabel_loss(out.y_r, targets, difficult=difficult)                   # () L_ML(y_r)
        loss = loss + branch_loss_weight * (l_w + l_r)                                 # ()
        parts.update(loss_y_w=float(l_w.detach()), loss_y_r=float(l_r.detach()))
    if a_I_loss_weight > 0 and out.a_I_logits is not None:
        l_a = multilabel_loss(out.a_I_logits, targets, difficult=difficult)            # () option: supervise a_I
        loss = loss + a_I_loss_weight * l_a                                            # ()
        parts["loss_a_I"] = float(l_a.detach())
    if classifier_decay > 0 and out.classifier_sq_norm is not None:
        l_2 = 0.5 * classifier_decay * out.classifier_sq_norm                          # () L2 on M
        loss = loss + l_2
        parts["loss_l2"] = float(l_2.detach())
    return loss, {"loss": float(loss.detach()), **parts}
