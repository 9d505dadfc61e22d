"""Graph convolution on labels (Eq. 5-6): label embeddings H0 -> classifiers M, scores y_w = M x."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LabelGCN(nn.Module):
    """H^(l+1) = f(Â H^(l) W^(l)) (Eq. 5) over C label nodes; y_w = M x (Eq. 6) with M = H^(L).

    Widths E -> widths... -> D, ``activation`` between layers and none after the last (M is a linear
    classifier). No Python loop over images:
      * H0 W0 does not depend on the image and is computed once per forward;
      * with a per-image Â (B, C, C) the last layer re-associates, y_w = Â (H_{L-1} (W_{L-1} x)),
        so M (B, C, D) is never materialised (``forward_naive`` materialises it, for the tests);
      * with a static Â (C, C) (ML-GCN) M (C, D) is image-independent and computed once.
    """

    def __init__(self, *, embedding_dim: int, widths: tuple[int, ...], feature_dim: int,
                 activation: str = "relu", leaky_slope: float = 0.2) -> None:
        super().__init__()
        dims = [embedding_dim, *widths, feature_dim]
        self.weights = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))  # W^(l)
        self.act = nn.LeakyReLU(leaky_slope) if activation == "leaky_relu" else nn.ReLU()

    def hidden(self, H0: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        """Layers 1..L-1: H0 (C, E), Â (C, C) or (B, C, C) -> H_{L-1} (C, w) or (B, C, w)."""
        h = self.weights[0](H0)                                   # (C, w0) H0 W0: image-independent, once
        h = self.act(A_hat @ h)                                   # (B, C, w0) or (C, w0) Eq. 5
        for W in self.weights[1:-1]:
            h = self.act(A_hat @ W(h))                            # (B, C, w_l) Eq. 5
        return h

    def forward(self, x: torch.Tensor, H0: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        """x (B, D), H0 (C, E), Â (C, C) or (B, C, C) -> y_w (B, C)."""
        return self.scores_and_norm(x, H0, A_hat, norm=False)[0]

    def scores_and_norm(self, x: torch.Tensor, H0: torch.Tensor, A_hat: torch.Tensor, *,
                        norm: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """y_w (B, C) and, with ``norm``, ||M||_F^2 of the classifiers M (Eq. 5's last layer), averaged over the
        batch's images when Â is per image (for the L2 penalty on M of ``decay_on=classifiers``, train/model.py)."""
        B, D = x.shape
        h = self.hidden(H0, A_hat)                                # (B, C, w) or (C, w)
        W_last = self.weights[-1].weight                          # (D, w) = W_{L-1}^T
        if A_hat.dim() == 2:
            M = A_hat @ (h @ W_last.t())                          # (C, D) static classifiers, once
            sq = M.pow(2).sum() if norm else None                 # () ||M||_F^2
            return x @ M.t(), sq                                  # (B, C) Eq. 6
        if norm:                                                  # the norm needs M itself: score with it too
            M = (A_hat @ h) @ W_last.t()                          # (B, C, D) per-image classifiers
            y = (M @ x.unsqueeze(-1)).squeeze(-1)                 # (B, C) Eq. 6
            return y, M.pow(2).sum(dim=(1, 2)).mean()             # (B, C), () mean_b ||M_b||_F^2
        u = x @ W_last                                            # (B, w) W_{L-1} x
        v = (h @ u.unsqueeze(-1))                                 # (B, C, 1) H_{L-1} (W_{L-1} x)
        return (A_hat @ v).squeeze(-1), None                      # (B, C) Eq. 6 re-associated: Â (H (W x))

    def forward_naive(self, x: torch.Tensor, H0: torch.Tensor, A_hat: torch.Tensor) -> torch.Tensor:
        """The literal Eq. 5-6: materialise M = Â H_{L-1} W_{L-1} (B, C, D), then y_w = M x."""
        B, D = x.shape
        h = self.hidden(H0, A_hat)                                # (B, C, w) or (C, w)
        M = A_hat @ F.linear(h, self.weights[-1].weight)          # (B, C, D) or (C, D) Eq. 5, last layer
        M = M.expand(B, *M.shape[-2:])                            # (B, C, D)
        return (M @ x.unsqueeze(-1)).squeeze(-1)                  # (B, C) Eq. 6
