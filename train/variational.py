"""Variational region weighting (Eq. 7-9) and its KL term (Eq. 14)."""
from __future__ import annotations

import torch
import torch.nn as nn


class VariationalRegionWeighting(nn.Module):
    """z ~ N(z_mu, exp(z_logvar)) per region, z_mu = X w_mu (Eq. 8), z_logvar = X w_logvar (Eq. 9).

    The paper's z_sigma2 = X w_sigma2 can be negative, so the log-variance is predicted instead.
    Training samples z with the reparameterisation trick; evaluation uses z = z_mu.
    """

    def __init__(self, *, feature_dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(feature_dim, 2, bias=False)          # rows w_mu, w_logvar in R^D (Eq. 8-9): X read once

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """X (B, N, D) -> z, z_mu, z_logvar, each (B, N)."""
        B, N, D = X.shape
        z_mu, z_logvar = self.w(X).unbind(-1)                    # (B, N) x2  Eq. 8 and Eq. 9 (log-variance)
        if self.training:
            eps = torch.randn_like(z_mu)                         # (B, N)  eps ~ N(0, 1)
            z = z_mu + torch.exp(0.5 * z_logvar) * eps           # (B, N)  reparameterisation
        else:
            z = z_mu                                             # (B, N)  the mean at evaluation
        return z, z_mu, z_logvar


def kl_loss(z_mu: torch.Tensor, z_logvar: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 14: mean over valid regions (and the batch) of KL(N(z_mu, exp(z_logvar)) || N(0, 1)).

    Args: z_mu, z_logvar (B, N); valid (B, N) bool. Returns a scalar.
    """
    kl = 0.5 * (z_mu.pow(2) + z_logvar.exp() - z_logvar - 1.0)   # (B, N) closed-form Gaussian KL
    w = valid.to(kl.dtype)                                        # (B, N)
    return (kl * w).sum() / w.sum().clamp_min(1.0)                # ()
