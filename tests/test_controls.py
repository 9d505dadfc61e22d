"""Issue 17, section 3: a control for every claim. The adjacency controls, the top-N ROI slice, the wide probe and
the legacy (test-set selection) protocol, each against an independent computation."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from iagcn.cache.fake import write_fake_cache
from iagcn.errors import UserError
from iagcn.train.config import config_for_preset
from iagcn.train.data import CacheData
from iagcn.train.lcm import adjacency_control, normalize_adjacency, statistical_lcm
from iagcn.train.run import train_run

SMALL = {"gcn_widths": (16, 32), "region_widths": (16, 16, 32), "num_threads": 1}
KW = dict(num_rois=8, dim=16, num_classes=6, embedding_dim=10, prototypes_seed=3)


def _quiet(*_):
    return None


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    train = write_fake_cache(d / "train.h5", n=200, seed=0, split="train", **KW)
    test = write_fake_cache(d / "test.h5", n=100, seed=1, split="test", **KW)
    return train, test


def _A_S(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = (rng.random((300, 7)) < np.array([0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.05])).astype(np.int8)
    labels[:, 1] |= labels[:, 0] & (rng.random(300) < 0.9)          # planted co-occurrence: 0 -> 1
    A = statistical_lcm(labels, tau=0.3, p=0.25)
    assert 0 < (A[~np.eye(7, dtype=bool)] != 0).sum() < 7 * 6        # some edges, not all: the controls differ
    return A


# -- 1. adjacency controls ----------------------------------------------------------------------------------
def test_identity_and_uniform_controls_normalise_to_I_and_one_over_C():
    A = _A_S()
    C = A.shape[0]
    I, rec = adjacency_control(A, control="identity", seed=0)
    assert rec == {"control": "identity"}
    assert torch.equal(normalize_adjacency(torch.from_numpy(I)), torch.eye(C))           # Â = I exactly
    U, _ = adjacency_control(A, control="uniform", seed=0)
    np.testing.assert_allclose(normalize_adjacency(torch.from_numpy(U)).numpy(), np.full((C, C), 1.0 / C), rtol=1e-6)
    same, rec = adjacency_control(A, control="none", seed=0)
    assert same is A and rec == {"control": "none"}


def test_shuffled_control_is_a_seeded_relabelling_of_A_S():
    A = _A_S()
    C = A.shape[0]
    S, rec = adjacency_control(A, control="shuffled", seed=3)
    perm = np.asarray(rec["permutation"])
    assert sorted(perm.tolist()) == list(range(C))
    P = np.eye(C)[perm]                                                                  # (C, C) P[i, perm[i]] = 1
    np.testing.assert_array_equal(S, (P @ A.astype(np.float64) @ P.T).astype(np.float32))  # P A_S P^T
    np.testing.assert_array_equal(np.sort(S.ravel()), np.sort(A.ravel()))                # same multiset of entries
    np.testing.assert_array_equal(np.diag(S), np.diag(A)[perm])                          # diagonal stays diagonal
    again, _ = adjacency_control(A, control="shuffled", seed=3)
    other, _ = adjacency_control(A, control="shuffled", seed=4)
    np.testing.assert_array_equal(again, S)
    assert not np.array_equal(other, S) and not np.array_equal(S, A)


def test_random_control_has_A_S_density_and_its_reweighting():
    A = _A_S()
    C = A.shape[0]
    off = ~np.eye(C, dtype=bool)
    R, rec = adjacency_control(A, control="random", seed=5, p=0.25)
    assert rec["edges"] == int((A[off] != 0).sum()) == int((R[off] != 0).sum())         # same density
    np.testing.assert_array_equal(np.diag(R), np.ones(C, np.float32))                   # the identity part
    col = R.astype(np.float64).sum(0) - 1.0                                              # (C,) off-diagonal column sums
    has = ((R * off) != 0).any(0)                                                        # columns with an edge
    np.testing.assert_allclose(col[has], 0.25, rtol=1e-4)                                # p / column sums, as A_S
    again, _ = adjacency_control(A, control="random", seed=5, p=0.25)
    other, _ = adjacency_control(A, control="random", seed=6, p=0.25)
    np.testing.assert_array_equal(again, R)
    assert not np.array_equal((other != 0), (R != 0)) and not np.array_equal((R != 0), (A != 0))


def test_identity_control_reaches_the_trained_heads_adjacency(caches, tmp_path):
    """mlgcn with the identity control trains on Â_S = I (its buffer in the checkpoint); the record names it."""
    train, test = caches
    with CacheData(train) as tr, CacheData(test) as te:
        for control in ("identity", "shuffled"):
            cfg = config_for_preset("mlgcn", epochs=1, batch_size=32, adjacency_control=control, **SMALL)
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / control, progress=False, log=_quiet)
        A_S = statistical_lcm(tr.labels, tau=0.4, p=0.25)
    state = torch.load(tmp_path / "identity" / "best.pt", weights_only=True)["model"]
    assert torch.equal(state["A_S_hat"], torch.eye(6)) and torch.equal(state["A_S"], torch.eye(6))
    record = json.loads((tmp_path / "shuffled" / "config.json").read_text())
    assert record["config"]["adjacency_control"] == "shuffled"
    perm = record["adjacency_control"]["permutation"]
    state = torch.load(tmp_path / "shuffled" / "best.pt", weights_only=True)["model"]
    np.testing.assert_array_equal(state["A_S"].numpy(), A_S[np.ix_(perm, perm)])


def test_defaults_of_the_new_fields_change_no_number(caches, tmp_path):
    """A fixed-seed run with the issue-17 fields left out equals one that passes their defaults explicitly."""
    train, test = caches
    results = []
    with CacheData(train) as tr, CacheData(test) as te:
        for name, extra in (("plain", {}), ("explicit", {"adjacency_control": "none", "num_rois": None,
                                                         "legacy_report": False})):
            cfg = config_for_preset("iagcn", epochs=2, batch_size=32, **SMALL, **extra)
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / name, progress=False, log=_quiet)
            results.append(np.load(tmp_path / name / "scores.npy"))
    np.testing.assert_array_equal(results[0], results[1])
