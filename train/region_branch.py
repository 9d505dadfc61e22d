"""Region-based branch (Eq. 10): a GCN on the region label scores A_I^w, then a fully connected layer.

Two readings of Eq. 10 (paper-decisions.md), chosen by ``reading``:
  * ``label-nodes`` (default): the C labels are the nodes, node c's input is column c of A_I^w (its
    scores over the N regions): H_r0 = (A_I^w)^T (B, C, N); four GCN layers N -> ... -> D on Â;
    an FC D -> C on every node, node c's c-th output read out as y_r[c] (the diagonal).
  * ``region-nodes``: the N regions are the nodes with inputs (Â (A_I^w)^T)^T = A_I^w Â^T (B, N, C) -- each
    region's label scores propagated along Â in the label GCN's direction (Â H) -- and a region adjacency
    from normalised sigmoid(A_I^w) sigmoid(A_I^w)^T; the same widths. ``pool`` says where the regions are
    pooled: "features" = max over valid regions of the D-wide GCN output, then FC D -> C; "scores" = FC on every
    region, then the max over valid regions per label, as Eq. 3 pools A_I^w (without a ReLU after the 4th
    layer the FC then re-associates, diag-free: Â_R R_3 (W_3 fc^T), and the (N w x D) product disappears).

``init``: the bias-free GCN layers start from torch's default U(+-1/sqrt(fan_in)) ("default"), whose gain
1/sqrt(3) per layer shrinks the signal four times over (at init y_r varied by 3e-3 across images), or from
He fan-in normal ("he", std sqrt(2 / fan_in)), which keeps its scale through ReLU layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from iagcn.train.lcm import normalize_adjacency


class RegionBranch(nn.Module):
    def __init__(self, *, num_rois: int, num_classes: int, feature_dim: int, widths: tuple[int, ...],
                 reading: str = "label-nodes", relu_after_last: bool = True, init: str = "he",
                 pool: str = "features", adjacency_eps: float = 1e-8) -> None:
        super().__init__()
        if pool not in ("features", "scores"):
            raise ValueError(f"RegionBranch: pool={pool!r}; use 'features' or 'scores'")
        self.reading = reading
        self.pool = pool
        self.relu_after_last = relu_after_last
        self.eps = adjacency_eps
        in_dim = num_rois if reading == "label-nodes" else num_classes
        dims = [in_dim, *widths, feature_dim]
        self.weights = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))  # W_I, W^(l)
        self.fc = nn.Linear(feature_dim, num_classes)                                   # f_FC: D -> C
        if init == "he":
            for W in self.weights:
                nn.init.kaiming_normal_(W.weight, mode="fan_in", nonlinearity="relu")   # std sqrt(2 / fan_in)
        elif init != "default":
            raise ValueError(f"RegionBranch: init={init!r}; use 'default' or 'he'")

    def forward(self, scores: torch.Tensor, valid: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        """scores A_I^w (B, N, C) logits, valid (B, N) bool, Â (B, C, C) or (C, C) -> y_r (B, C)."""
        if self.reading == "label-nodes":
            return self.forward_label_nodes(scores, valid, A_hat)
        return self.forward_region_nodes(scores, valid, A_hat)

    def forward_label_nodes(self, scores: torch.Tensor, valid: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        B, N, C = scores.shape
        h = (scores * valid.unsqueeze(-1)).transpose(1, 2)          # (B, C, N) H_r0 = (A_I^w)^T, padded regions -> 0
        for W in self.weights[:-1]:
            h = torch.relu(W(A_hat @ h))                            # (B, C, w_l) Eq. 10: f(Â H W), (Â H) W is cheaper
        h = A_hat @ h                                               # (B, C, w) Â R_3 of the last layer
        if self.relu_after_last:
            R = torch.relu(self.weights[-1](h))                     # (B, C, D) the dominant (w x D) product per label
            return (R * self.fc.weight).sum(-1) + self.fc.bias      # (B, C) f_FC, diagonal readout: y_r[c] = fc_c . R[c]
        V = self.weights[-1].weight.t() @ self.fc.weight.t()        # (w, C) W_3 fc^T (no ReLU: the FC re-associates)
        return torch.einsum("bcw,wc->bc", h, V) + self.fc.bias     # (B, C) diag(Â R_3 W_3 fc^T)

    def forward_region_nodes(self, scores: torch.Tensor, valid: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        B, N, C = scores.shape
        vmask = valid.unsqueeze(-1).to(scores.dtype)                # (B, N, 1)
        s = torch.sigmoid(scores) * vmask                           # (B, N, C) padded regions get no edges
        A_R = normalize_adjacency(s @ s.transpose(1, 2), eps=self.eps)  # (B, N, N) regions that agree on labels
        h = region_node_inputs(scores, valid, A_hat)                # (B, N, C) node inputs (Â (A_I^w)^T)^T
        for W in self.weights[:-1]:
            h = torch.relu(A_R @ W(h))                              # (B, N, w_l) Eq. 10: f(Â_R H W)
        h = A_R @ h                                                 # (B, N, w) Â_R R_3 of the last layer
        W_last = self.weights[-1]
        if self.pool == "features":                                 # max over regions of R_4, then f_FC
            R = W_last(h)                                           # (B, N, D)
            R = torch.relu(R) if self.relu_after_last else R        # (B, N, D)
            R = R.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, D) max over valid regions
            return self.fc(R)                                       # (B, C) f_FC
        # pool = "scores": f_FC on every region, then max over valid regions per label (as Eq. 3 pools A_I^w)
        if self.relu_after_last:
            per_region = self.fc(torch.relu(W_last(h)))             # (B, N, C) the (N w x D) product per image
        else:
            V = W_last.weight.t() @ self.fc.weight.t()              # (w, C) W_3 fc^T: the FC re-associates
            per_region = h @ V + self.fc.bias                       # (B, N, C) Â_R R_3 W_3 fc^T + b
        return per_region.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, C)

def region_node_inputs(scores: torch.Tensor, valid: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
    """Region-nodes reading of Eq. 10's Â_F A_I^w: each region's label scores propagated along Â as in Eq. 5.

    With H = (A_I^w)^T (C, N) the label-node matrix, Â H gathers label c from Â[c, j] H[j]; the region nodes'
    inputs are its transpose, (Â (A_I^w)^T)^T = A_I^w Â^T. scores (B, N, C), valid (B, N), Â (B, C, C) or (C, C)
    -> (B, N, C); padded regions get 0.
    """
    vmask = valid.unsqueeze(-1).to(scores.dtype)                    # (B, N, 1)
    return (scores * vmask) @ A_hat.transpose(-1, -2)              # (B, N, C) = (Â (A_I^w)^T)^T
