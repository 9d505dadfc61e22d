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
            return _ScoresAndNorm.apply(A_hat @ h, W_last, x)     # (B, C) Eq. 6, () mean_b ||M_b||_F^2
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


class _ScoresAndNorm(torch.autograd.Function):
    """y_b = M_b x_b (Eq. 6) and mean_b ||M_b||_F^2 with M_b = Q_b W^T (Eq. 5's last layer), M built once.

    With a per-image Â the hidden layers H_{L-1} are per image too, so ||M||^2 has no image-independent closed form:
    it needs M (B C w D multiply-adds) or the (w, w) Gram W^T W (D w^2, more while B C < D w / (1.5 D - w), i.e.
    B C < 1024 at w 1024, D 2048). This builds M once for both outputs, takes the norm as one dot product, and
    in the backward forms dM = g_y x^T + (2 g / B) M in one pass, then dQ = dM W and dW = dM^T Q: the three
    (B C, w, D) products of the floor (bench/floor.py) and no (B, C, D) temporaries beyond M and dM.
    """

    @staticmethod
    def forward(ctx, Q: torch.Tensor, W: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q (B, C, w), W (D, w), x (B, D) -> y (B, C), () mean_b ||Q_b W^T||_F^2."""
        B, C, w = Q.shape
        M = (Q.reshape(B * C, w) @ W.t()).view(B, C, -1)       # (B, C, D) per-image classifiers
        y = torch.bmm(M, x.unsqueeze(-1)).squeeze(-1)          # (B, C) Eq. 6
        flat = M.view(-1)
        sq = torch.dot(flat, flat) / B                         # () mean_b ||M_b||_F^2
        ctx.save_for_backward(Q, W, x, M)
        return y, sq

    @staticmethod
    def backward(ctx, g_y: torch.Tensor, g_sq: torch.Tensor):
        Q, W, x, M = ctx.saved_tensors
        B, C, w = Q.shape
        # dM (B, C, D) = g_y x^T + (2 g_sq / B) M, one batched rank-one update of M
        dM = torch.baddbmm(M, g_y.unsqueeze(-1), x.unsqueeze(1), beta=2.0 * float(g_sq) / B)
        dM2 = dM.view(B * C, -1)                               # (B C, D)
        dQ = (dM2 @ W).view(B, C, w) if ctx.needs_input_grad[0] else None   # (B, C, w)
        dW = dM2.t() @ Q.reshape(B * C, w) if ctx.needs_input_grad[1] else None  # (D, w)
        dx = torch.bmm(M.transpose(1, 2), g_y.unsqueeze(-1)).squeeze(-1) if ctx.needs_input_grad[2] else None  # (B, D)
        return dQ, dW, dx
