"""Statistical LCM (ML-GCN rules) and the adjacency normalisation, against hand-computed / explicit values."""
from __future__ import annotations

import numpy as np
import torch

from iagcn.train.lcm import normalize_adjacency, statistical_lcm


def test_statistical_lcm_hand_computed():
    labels = np.array([[1, 1, 0],
                       [1, 0, 0],
                       [1, 1, 1],
                       [0, 1, -1],     # the -1 (ignored) must not count as a co-occurrence of 1 and 2
                       [-1, 0, 1]])    # nor of 0 and 2
    # by hand: n = (3, 3, 2); co-occurrence M01 = 2, M02 = 1, M12 = 1
    # P = M / n_i: P01 = 2/3, P02 = 1/3, P10 = 2/3, P12 = 1/3, P20 = 1/2, P21 = 1/2
    # P >= 0.4: A01 = A10 = A20 = A21 = 1; column sums (2, 2, 0); entries * 0.25 / 2 = 0.125; + I
    expected = np.array([[1.0, 0.125, 0.0],
                         [0.125, 1.0, 0.0],
                         [0.125, 0.125, 1.0]])
    got = statistical_lcm(labels, tau=0.4, p=0.25)
    assert got.shape == (3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_statistical_lcm_threshold_and_absent_class():
    labels = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])   # P01 = 1/3 < 0.4, P10 = 1; class 2 never present
    A = statistical_lcm(labels, tau=0.4, p=0.25)
    np.testing.assert_allclose(A, [[1, 0, 0], [0.25 / (1 + 1e-6), 1, 0], [0, 0, 1]], atol=1e-6)
    A = statistical_lcm(labels, tau=0.3, p=0.5)             # now P01 passes too
    np.testing.assert_allclose(A[0, 1], 0.5, atol=1e-5)


def test_normalize_adjacency_matches_explicit_formula():
    rng = np.random.default_rng(0)
    A = rng.random((2, 3, 5, 5))                            # batched leading dims, asymmetric
    got = normalize_adjacency(torch.tensor(A)).numpy()
    for i in range(2):
        for j in range(3):
            D = np.diag(A[i, j].sum(1) ** -0.5)             # D^-1/2 with D = diag(rowsum)
            np.testing.assert_allclose(got[i, j], D @ A[i, j].T @ D, rtol=1e-10)


def test_normalize_adjacency_is_epsilon_safe():
    A = torch.zeros(1, 3, 3)
    A[0, 0, 0] = 1.0                                        # rows 1 and 2 are empty
    out = normalize_adjacency(A)
    assert torch.isfinite(out).all()
    assert out[0, 0, 0] == 1.0 and out[0, 1:].abs().sum() == 0
    A.requires_grad_(True)
    normalize_adjacency(A).sum().backward()
    assert torch.isfinite(A.grad).all()
