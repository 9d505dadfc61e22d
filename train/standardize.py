"""Feature standardisation for frozen cached features (the "frozen" recipe, docs/training.md).

Cached CNN features are uncentred and their scales differ by orders of magnitude across dimensions (Lite0's
ReLU6 outputs lie in [0, 6]; many dimensions are almost always 0). A head trained on them with one learning
rate under-trains some directions and oscillates in others. The frozen recipe therefore standardises x and
X per dimension with the mean and standard deviation of the TRAINING part (never the evaluation cache);
the statistics are buffers of the head, so every checkpoint carries them and scoring applies the same map.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from iagcn.train.data import CacheData


class FeatureStandardizer(nn.Module):
    """x -> (x - mean_x) / std_x and X -> (X - mean_X) / std_X, per feature dimension (buffers, no parameters).

    With ``center=False`` only the scale is divided out (x / std_x): features stay non-negative, so a head without
    a bias (the label GCN's y_w = M x, Eq. 6) keeps the mean feature as an implicit bias direction.
    """

    def __init__(self, *, feature_dim: int, center: bool = True) -> None:
        super().__init__()
        D = feature_dim
        self.center = center
        self.register_buffer("x_mean", torch.zeros(D))          # (D,) global features' mean over the train part
        self.register_buffer("x_std", torch.ones(D))            # (D,)
        self.register_buffer("X_mean", torch.zeros(D))          # (D,) valid regions' mean over the train part
        self.register_buffer("X_std", torch.ones(D))            # (D,)

    def set_statistics(self, stats: dict[str, np.ndarray]) -> None:
        for name in ("x_mean", "x_std", "X_mean", "X_std"):
            getattr(self, name).copy_(torch.as_tensor(stats[name], dtype=torch.float32))

    def forward(self, x: torch.Tensor, X: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, D), X (B, N, D) or None -> standardised (B, D), (B, N, D) or None."""
        if self.center:
            x = x - self.x_mean                                 # (B, D)
            X = None if X is None else X - self.X_mean          # (B, N, D) broadcast over regions
        x = x / self.x_std                                      # (B, D)
        if X is not None:
            X = X / self.X_std                                  # (B, N, D)
        return x, X


def feature_statistics(data: CacheData, indices: np.ndarray, *, batch_size: int = 256, regions: bool = True,
                       min_std: float = 1e-3) -> dict[str, np.ndarray]:
    """Per-dimension mean and std (D,) of x over ``indices`` and of X over their VALID regions (float64 sums).

    A dimension whose std is below ``min_std`` (constant, e.g. a ReLU that never fires on this data) gets std 1,
    so it is only centred. With ``regions=False`` (heads that never read X) X's statistics stay 0 / 1.
    """
    D = data.D
    sx, sxx = np.zeros(D), np.zeros(D)                          # (D,) running sums of x, x^2
    sX, sXX = np.zeros(D), np.zeros(D)                          # (D,) running sums over valid regions
    nx = nX = 0
    for batch in data.batches(np.asarray(indices, np.int64), batch_size=batch_size, shuffle=False,
                              regions=regions):
        x = batch.x.double().numpy()                            # (b, D)
        sx += x.sum(0)
        sxx += (x * x).sum(0)
        nx += len(x)
        if regions:
            X = batch.X.double().numpy()[batch.valid.numpy()]   # (v, D) the valid regions of the batch
            sX += X.sum(0)
            sXX += (X * X).sum(0)
            nX += len(X)

    def mean_std(s: np.ndarray, ss: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n == 0:
            return np.zeros(D), np.ones(D)
        mean = s / n                                            # (D,)
        std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))    # (D,)
        return mean, np.where(std < min_std, 1.0, std)

    x_mean, x_std = mean_std(sx, sxx, nx)
    X_mean, X_std = mean_std(sX, sXX, nX)
    return {"x_mean": x_mean.astype(np.float32), "x_std": x_std.astype(np.float32),
            "X_mean": X_mean.astype(np.float32), "X_std": X_std.astype(np.float32)}
