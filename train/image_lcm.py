"""Image-dependent LCM (Eq. 1-4): region label scores, the individual LCM A_I and the fused A_F."""
from __future__ import annotations

import torch
import torch.nn as nn


class ImageDependentLCM(nn.Module):
    """f_CNN (a 1x1 convolution D -> C per region), column-wise max pooling, and A_I = a_I a_I^T."""

    def __init__(self, *, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.f_cnn = nn.Linear(feature_dim, num_classes)          # 1x1 conv D -> C (Eq. 2)

    def forward(self, X: torch.Tensor, valid: torch.Tensor, z: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """X (B, N, D), valid (B, N) bool, z (B, N) region weights or None (z = 1).

        Returns:
            scores A_I^w (B, N, C) logits, a_I (B, C) probabilities, A_I (B, C, C).
        """
        B, N, D = X.shape
        scores = self.f_cnn(X) if z is None else \
            z.unsqueeze(-1) * (X @ self.f_cnn.weight.t()) + self.f_cnn.bias  # (B, N, C) Eq. 7+2: f_CNN(z X) = z (X W^T) + b
        a_I = region_max_probability(scores, valid)               # (B, C) Eq. 3
        A_I = individual_lcm(a_I)                                 # (B, C, C) Eq. 4
        return scores, a_I, A_I


def region_max_logit(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """max over VALID regions of A_I^w (logits): scores (B, N, C), valid (B, N) -> (B, C); a_I = sigmoid of it."""
    masked = scores.masked_fill(~valid.unsqueeze(-1), float("-inf"))  # (B, N, C) padded regions never win
    return masked.amax(dim=1)                                     # (B, C)


def region_max_probability(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Eq. 3: a_I = max over VALID regions of sigmoid(A_I^w). scores (B, N, C), valid (B, N) -> (B, C)."""
    return torch.sigmoid(region_max_logit(scores, valid))        # (B, C) sigmoid is monotone: max commutes


def individual_lcm(a_I: torch.Tensor) -> torch.Tensor:
    """Eq. 4: A_I = a_I a_I^T. a_I (B, C) -> (B, C, C)."""
    return a_I.unsqueeze(-1) * a_I.unsqueeze(-2)                  # (B, C, C)


def fused_lcm(A_S: torch.Tensor, A_I: torch.Tensor) -> torch.Tensor:
    """Eq. 1: A_F = A_S ⊙ A_I. A_S (C, C), A_I (B, C, C) -> (B, C, C) (normalise afterwards)."""
    return A_S.unsqueeze(0) * A_I                                  # (B, C, C)
