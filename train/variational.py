"""Variational region weighting (Eq. 7-9) and its KL term (Eq. 14), in a range where float32 cannot overflow."""
from __future__ import annotations

import torch
import torch.nn as nn

#: The log-variance z_logvar is read, in the forward pass, at most LOGVAR_MAX (variance <= e^20, std <= 2.2e4).
#: z_logvar = X w_logvar is a dot product over D dimensions, so one optimiser step moves it by
#: up to ~||X|| ||dw|| (~45 x the step for standardised 2048-dim regions): a few large steps took it past 88.7,
#: where exp overflows float32, and L_KL became inf (docs/training.md, "Numerics of the variational part"). Trained
#: runs stay far below (|z_logvar| < 4 on the synthetic caches under both recipes), where nothing changes. There is no
#: lower bound: exp(z_logvar) -> 0 is safe, and with a small beta a deterministic z (z_logvar -> -inf) is legitimate.
LOGVAR_MAX = 20.0


class _ClampStraightThrough(torch.autograd.Function):
    """min(v, m) in the forward pass; the gradient passes through unchanged (also above m), so a log-variance
    above the bound is still pulled back, by L_KL's gradient at the bound."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, m: float) -> torch.Tensor:
        return v.clamp(max=m)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def safe_logvar(z_logvar: torch.Tensor) -> torch.Tensor:
    """z_logvar (B, N) read as min(z_logvar, LOGVAR_MAX) (the identity, values and gradients, below the bound)."""
    return _ClampStraightThrough.apply(z_logvar, LOGVAR_MAX)


class VariationalRegionWeighting(nn.Module):
    """z ~ N(z_mu, exp(z_logvar)) per region, z_mu = X w_mu (Eq. 8), z_logvar = X w_logvar (Eq. 9).

    The paper's z_sigma2 = X w_sigma2 can be negative, so the log-variance is predicted instead, and read at most
    LOGVAR_MAX (:func:`safe_logvar`). Training samples z with the reparameterisation trick; evaluation uses z = z_mu.
    """

    def __init__(self, *, feature_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(feature_dim, 2, bias=False)          # rows w_mu, w_logvar in R^D (Eq. 8-9): X read once

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """X (B, N, D) -> z, z_mu, z_logvar, each (B, N); z_logvar <= LOGVAR_MAX."""
        B, N, D = X.shape
        z_mu, z_logvar = self.w(X).unbind(-1)                    # (B, N) x2  Eq. 8 and Eq. 9 (log-variance)
        z_logvar = safe_logvar(z_logvar)                         # (B, N) exp(z_logvar) <= e^20: finite in float32
        if self.training:
            eps = torch.randn_like(z_mu)                         # (B, N)  eps ~ N(0, 1)
            z = z_mu + torch.exp(0.5 * z_logvar) * eps           # (B, N)  reparameterisation, std <= e^10
        else:
            z = z_mu                                             # (B, N)  the mean at evaluation
        return z, z_mu, z_logvar


def kl_loss(z_mu: torch.Tensor, z_logvar: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 14: mean over valid regions (and the batch) of KL(N(z_mu, exp(z_logvar)) || N(0, 1)).

    z_logvar is read at most LOGVAR_MAX (:func:`safe_logvar`, a no-op on the module's own output), so exp cannot
    overflow. Args: z_mu, z_logvar (B, N); valid (B, N) bool. Returns a scalar.
    """
    z_logvar = safe_logvar(z_logvar)                              # (B, N)
    kl = 0.5 * (z_mu.pow(2) + z_logvar.exp() - z_logvar - 1.0)   # (B, N) closed-form Gaussian KL
    w = valid.to(kl.dtype)                                        # (B, N)
    return (kl * w).sum() / w.sum().clamp_min(1.0)                # ()
