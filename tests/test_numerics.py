"""Numerics of the training path (issue 20): the variational part never overflows float32, at D = 2048 too."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from iagcn.cache.fake import write_fake_cache
from iagcn.train.config import config_for_preset
from iagcn.train.data import CacheData
from iagcn.train.run import train_run
from iagcn.train.variational import LOGVAR_MAX, VariationalRegionWeighting, kl_loss


def _vi_with_log_variances(logvars: list[float], mus: list[float], D: int = 6):
    """A VI module and regions X (1, R, D) whose z_mu, z_logvar are exactly ``mus``, ``logvars`` (w = unit vectors)."""
    vi = VariationalRegionWeighting(feature_dim=D)
    with torch.no_grad():
        vi.w.weight.zero_()
        vi.w.weight[0, 0] = 1.0                                    # z_mu = X[..., 0]
        vi.w.weight[1, 1] = 1.0                                    # z_logvar = X[..., 1]
    X = torch.zeros(1, len(logvars), D)
    X[0, :, 0] = torch.tensor(mus)
    X[0, :, 1] = torch.tensor(logvars)
    return vi, X


def test_kl_and_reparameterisation_are_finite_for_a_huge_log_variance_and_unchanged_below_the_bound():
    lv = [0.5, -3.0, 19.5, 90.0, 200.0, 1e4]                          # 90 and up: exp overflows float32
    mu = [0.3, -1.0, 2.0, 0.5, -0.5, 1.0]
    vi, X = _vi_with_log_variances(lv, mu)
    valid = torch.ones(1, len(lv), dtype=torch.bool)
    vi.train()
    torch.manual_seed(0)
    z, z_mu, z_logvar = vi(X)
    kl = kl_loss(z_mu, z_logvar, valid)
    assert torch.isfinite(z).all() and torch.isfinite(kl)
    # by hand, in float64: the Gaussian KL of each region with its log-variance read at most LOGVAR_MAX
    want = np.mean([0.5 * (m * m + math.exp(min(v, LOGVAR_MAX)) - min(v, LOGVAR_MAX) - 1) for m, v in zip(mu, lv)])
    assert abs(float(kl.detach()) - want) <= 1e-6 * want
    kl.backward()
    g = vi.w.weight.grad
    assert torch.isfinite(g).all()
    assert g[1, 1] > 0                                 # descent lowers the log-variances above the bound: they recover
    # below the bound the values and gradients are those of the plain formulas, bit for bit
    lv_small = [0.5, -3.0, 19.5, -40.0]
    vi, X = _vi_with_log_variances(lv_small, mu[:4])
    torch.manual_seed(1)
    z, z_mu, z_logvar = vi(X)
    torch.manual_seed(1)
    eps = torch.randn(1, 4)
    mu_t, lv_t = torch.tensor([mu[:4]]), torch.tensor([lv_small])
    assert torch.equal(z_logvar, lv_t) and torch.equal(z, mu_t + torch.exp(0.5 * lv_t) * eps)
    lv_leaf = lv_t.clone().requires_grad_(True)
    plain = (0.5 * (mu_t.pow(2) + lv_leaf.exp() - lv_leaf - 1.0)).mean()
    plain.backward()
    lv_ours = lv_t.clone().requires_grad_(True)
    ours = kl_loss(mu_t, lv_ours, torch.ones(1, 4, dtype=torch.bool))
    ours.backward()
    assert torch.equal(ours, plain) and torch.equal(lv_ours.grad, lv_leaf.grad)


@pytest.fixture(scope="module")
def caches_2048(tmp_path_factory):
    """A train and an eval cache at the paper's ResNet-101 width, D = 2048 (few images and regions: fast)."""
    d = tmp_path_factory.mktemp("d2048")
    kw = dict(num_rois=10, dim=2048, num_classes=20, prototypes_seed=0)
    return (write_fake_cache(d / "train.h5", n=256, seed=0, **kw),
            write_fake_cache(d / "eval.h5", n=32, seed=1, split="test", **kw))


# the SGD steps of the region side at a head's learning rate: before the bound, z_logvar = X w_logvar went past 88.7
# within 6-8 steps (||X|| ~ 40 at D = 2048 multiplies every step of w_logvar) and L_KL became inf
@pytest.mark.parametrize("preset,recipe,overrides", [
    ("idlcm-vi", "frozen", {"region_optimizer": "same", "lr": 0.5}),
    ("iagcn", "frozen", {"region_optimizer": "same", "lr": 0.5}),
    ("idlcm-vi", "paper", {"vi_lr_scale": 1.0, "lr": 0.5}),
])
def test_a_2048_dim_cache_trains_the_variational_presets_without_overflow(caches_2048, tmp_path, preset, recipe,
                                                                          overrides):
    train, test = caches_2048
    cfg = config_for_preset(preset, recipe=recipe, epochs=1, seed=0, device="cpu", val_fraction=0.0, **overrides)
    with CacheData(train) as tr, CacheData(test) as te:
        result = train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / "run", progress=False,
                           log=lambda *a: None)
    assert math.isfinite(result["metrics"]["mAP"])
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(math.isfinite(float(r["loss"])) and math.isfinite(float(r["loss_kl"])) for r in rows)


def test_classifier_scores_and_norm_match_the_materialised_classifiers_in_value_and_gradient():
    """LabelGCN.scores_and_norm (per-image Â, training's L2 on M) against M = Â H W built by hand, in float64:
    the scores, mean_b ||M_b||^2 and the gradients of a loss of both w.r.t. every weight, Â and x."""
    from iagcn.train.label_gcn import LabelGCN

    torch.manual_seed(0)
    B, C, E, D = 3, 5, 4, 7
    gcn = LabelGCN(embedding_dim=E, widths=(6, 8), feature_dim=D, activation="leaky_relu").double()
    H0 = torch.randn(C, E, dtype=torch.float64)
    A = torch.rand(B, C, C, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(B, C, dtype=torch.float64)

    def by_hand():
        Ws = [W.weight for W in gcn.weights]
        ys, sqs = [], []
        for b in range(B):                                  # one image at a time: Eq. 5 layer by layer, then Eq. 6
            h = H0
            for W in Ws[:-1]:
                h = gcn.act(A[b] @ h @ W.t())
            M = A[b] @ h @ Ws[-1].t()                         # (C, D)
            ys.append(M @ x[b])
            sqs.append((M * M).sum())
        return torch.stack(ys), torch.stack(sqs).mean()

    results = []
    for f in (by_hand, lambda: gcn.scores_and_norm(x, H0, A, norm=True)):
        gcn.zero_grad()
        A.grad = x.grad = None
        y, sq = f()
        ((y * gy).sum() + 0.3 * sq).backward()
        results.append([y.detach(), sq.detach(), A.grad.clone(), x.grad.clone(),
                        *[W.weight.grad.clone() for W in gcn.weights]])
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_floor_counts_the_products_of_the_l2_on_per_image_classifiers():
    from bench.floor import floor_flops, head_products

    B, N, D, C, E, w = 4, 5, 16, 3, 6, 9
    shapes = dict(batch=B, num_rois=N, feature_dim=D, num_classes=C, embedding_dim=E, gcn_widths=(7, w),
                  variational=False, region_branch=False)
    plain = head_products(**shapes)
    with_l2 = head_products(**shapes, decay_on="classifiers")
    # by hand: without the L2 the scores re-associate, u = x W (data x: gradient of W only), v = h u, y = Â v;
    # with it, Q = Â h, M = Q W (both gradients) and y = M x (data x: gradient of M only)
    reassociated = 2 * (B * D * w * 2 + B * C * w * 3 + B * C * C * 3)
    materialised = 2 * (B * C * C * w * 3 + B * C * w * D * 3 + B * C * D * 2)
    assert floor_flops(with_l2) - floor_flops(plain) == materialised - reassociated
    # scoring (no L2) and the static adjacency (M once per step, already counted) are unchanged
    static = dict(shapes, global_adjacency="static")
    assert floor_flops(head_products(**static, decay_on="classifiers")) == floor_flops(head_products(**static))


def test_the_floor_of_the_region_nodes_reading_follows_the_models_associations():
    """region-nodes, pool = scores, no ReLU after the 4th layer (the default): the FC re-associates, so the floor has
    no (B N, w) x (w, D) product, and the 4th layer's Â_R acts at width w (train/region_branch.py)."""
    from bench.floor import floor_flops, head_products

    B, N, D, C, E = 2, 5, 16, 3, 6
    r = (4, 6, 8)
    shapes = dict(batch=B, num_rois=N, feature_dim=D, num_classes=C, embedding_dim=E, global_branch="none",
                  variational=False, region_branch=True, region_reading="region-nodes", region_widths=r)
    got = head_products(**shapes, region_pool="scores", region_relu_after_last=False)
    f_cnn = B * N * D * C * 2                                  # X W^T, data X: gradient of W only
    mac3 = (B * N * C * N + B * N * C * C                      # s s^T, A_I^w Â^T
            + B * N * C * r[0] + B * N * N * r[0] + B * N * r[0] * r[1] + B * N * N * r[1]
            + B * N * r[1] * r[2] + B * N * N * r[2]            # three hidden layers: h W, Â_R (h W)
            + B * N * N * r[2]                                  # the 4th layer's Â_R R_3
            + r[2] * D * C + B * N * r[2] * C)                  # V = W_3 fc^T, per region h V
    assert floor_flops(got) == 2 * (f_cnn + 3 * mac3)


def test_streaming_trains_the_same_model_as_in_ram_whatever_the_budget_block_and_buffer(tmp_path):
    """Issue 20: a run streamed with a small memory budget or another shuffle buffer must be the in-RAM experiment:
    the same batches in the same order, so the same losses and scores, bit for bit."""
    train = write_fake_cache(tmp_path / "train.h5", n=150, num_rois=6, dim=24, num_classes=5, embedding_dim=8,
                             seed=0, prototypes_seed=0)
    test = write_fake_cache(tmp_path / "test.h5", n=40, num_rois=6, dim=24, num_classes=5, embedding_dim=8, seed=1,
                            prototypes_seed=0, split="test")
    subset = np.random.default_rng(3).choice(150, size=97, replace=False)
    with CacheData(train) as ram:
        want = [(b.index.copy(), b.X.clone()) for b in ram.batches(subset, batch_size=8, shuffle=True,
                                                                     rng=np.random.default_rng(5))]
    for block_rows, buffer_blocks in ((7, 1), (16, 3), (1000, 2)):
        with CacheData(train, memory_budget_gib=0.0, block_rows=block_rows, shuffle_buffer_blocks=buffer_blocks) as s:
            assert not s.in_memory
            got = [(b.index.copy(), b.X.clone()) for b in s.batches(subset, batch_size=8, shuffle=True,
                                                                     rng=np.random.default_rng(5))]
        assert [i.tolist() for i, _ in got] == [i.tolist() for i, _ in want], (block_rows, buffer_blocks)
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(got, want))
    runs = {}
    for name, execution in (("ram", {}), ("streamed", dict(memory_budget_gib=0.0, stream_block_rows=16,
                                                           shuffle_buffer_blocks=2))):
        cfg = config_for_preset("iagcn", epochs=2, seed=0, device="cpu", num_threads=1, gcn_widths=(8, 12),
                                region_widths=(4, 6, 8), **execution)
        with CacheData(train, memory_budget_gib=cfg.memory_budget_gib, block_rows=cfg.stream_block_rows,
                       shuffle_buffer_blocks=cfg.shuffle_buffer_blocks) as tr, CacheData(test) as te:
            train_run(cfg, train_data=tr, eval_data=te, out_dir=tmp_path / name, progress=False, log=lambda *a: None)
        with open(tmp_path / name / "log.csv") as f:
            losses = [(r["loss"], r["loss_ml"], r["loss_kl"]) for r in csv.DictReader(f)]
        runs[name] = losses, np.load(tmp_path / name / "scores.npz")["scores"]
    assert runs["ram"][0] == runs["streamed"][0]
    np.testing.assert_array_equal(runs["ram"][1], runs["streamed"][1])
