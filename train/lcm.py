"""Label correlation matrices: the statistical LCM A_S (ML-GCN) and the GCN adjacency normalisation.

Plain functions over NumPy arrays / torch tensors (see ../shared/design/paper-decisions.md,
"Statistical LCM A_S").
"""
from __future__ import annotations

import numpy as np
import torch


def statistical_lcm(labels: np.ndarray, *, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """The statistical LCM A_S (C, C) of ML-GCN, from positive labels only.

    Args:
        labels: (n, C) with 1 present, 0 absent, -1 ignored (ignored entries do not count).
        tau: threshold on the conditional probability P(j | i).
        p: total weight given to a label's neighbours (ML-GCN's re-weighting, column sums as in its code).

    Returns:
        (C, C) float32: A = binarise(P >= tau) re-weighted by p / column sums, plus the identity.
    """
    Y = (np.asarray(labels) == 1).astype(np.float64)              # (n, C) positives only
    M = Y.T @ Y                                                    # (C, C) co-occurrence counts
    n = np.diag(M).copy()                                          # (C,) images with label i
    np.fill_diagonal(M, 0.0)                                       # i != j only
    P = M / np.maximum(n, 1.0)[:, None]                            # (C, C) P[i, j] = P(j | i); absent label -> 0
    A = (P >= tau).astype(np.float64)                              # (C, C) binarised
    A = A * p / (A.sum(axis=0, keepdims=True) + 1e-6)              # (C, C) column-sum re-weighting
    A = A + np.eye(A.shape[0])                                     # (C, C) self loops
    return A.astype(np.float32)


def normalize_adjacency(A: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Â = D A^T D with D = diag(rowsum(A)^-1/2) (ML-GCN's ``gen_adj``), batched over leading dims.

    Rows that sum to (almost) zero are clamped at ``eps`` so nothing divides by zero (labels whose
    image-level probability is ~0 give near-empty rows of A_F).

    Args:
        A: (..., C, C) non-negative adjacency (tensor or array).
    Returns:
        (..., C, C) tensor.
    """
    A = torch.as_tensor(A)
    d = A.sum(dim=-1).clamp_min(eps).rsqrt()                       # (..., C) rowsum^-1/2
    return d.unsqueeze(-1) * A.transpose(-1, -2) * d.unsqueeze(-2)  # (..., C, C) D A^T D
