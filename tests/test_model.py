"""The IA-GCN head: A_F, KL, fast vs naive paths, masked BCE, and every preset's outputs and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from iagcn.train.config import PRESETS, config_for_preset
from iagcn.train.image_lcm import ImageDependentLCM, fused_lcm
from iagcn.train.label_gcn import LabelGCN
from iagcn.train.lcm import normalize_adjacency
from iagcn.train.model import IAGCNHead, multilabel_loss, total_loss
from iagcn.train.region_branch import RegionBranch
from iagcn.train.variational import VariationalRegionWeighting, kl_loss

B, N, D, C, E = 3, 5, 12, 4, 7


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g)
    X = torch.randn(B, N, D, generator=g)
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[0, 3:] = False
    valid[2, 1:] = False                                   # one image with a single valid region
    return x, X, valid


def _A_S():
    A = np.full((C, C), 0.1, np.float32)
    np.fill_diagonal(A, 1.0)
    A[0, 2] = 0.0
    return A


def test_A_F_for_known_region_scores():
    logit = lambda p: np.log(p / (1 - p))                   # noqa: E731
    lcm = ImageDependentLCM(feature_dim=3, num_classes=3)
    with torch.no_grad():
        lcm.f_cnn.weight.copy_(torch.eye(3))
        lcm.f_cnn.bias.zero_()                              # scores = X
    X = torch.tensor(np.array([[logit(np.array([0.9, 0.2, 0.5])), logit(np.array([0.3, 0.6, 0.1])),
                                [10.0, 10.0, 10.0]]]), dtype=torch.float32)  # (1, 3, 3); region 2: padding, top scores
    valid = torch.tensor([[True, True, False]])
    with torch.no_grad():
        scores, a_I, A_I = lcm(X, valid)
    np.testing.assert_allclose(a_I[0].numpy(), [0.9, 0.6, 0.5], rtol=1e-6)      # max over VALID regions only
    a = np.array([0.9, 0.6, 0.5])
    A_S = np.array([[1.0, 0.125, 0.0], [0.125, 1.0, 0.0], [0.125, 0.125, 1.0]], np.float32)
    A_F = fused_lcm(torch.tensor(A_S), A_I)[0].numpy()
    np.testing.assert_allclose(A_F, A_S * np.outer(a, a), rtol=1e-6)
    Dm = np.diag((A_S * np.outer(a, a)).sum(1) ** -0.5)
    np.testing.assert_allclose(normalize_adjacency(torch.tensor(A_F)).numpy(), Dm @ A_F.T @ Dm, rtol=1e-5)


def test_region_weights_scale_regions_exactly():
    """Eq. 7 + 2 with z: f_CNN(z X) computed as z (X W^T) + b equals the literal product."""
    lcm = ImageDependentLCM(feature_dim=D, num_classes=C)
    x, X, valid = _inputs()
    z = torch.randn(B, N)
    scores, _, _ = lcm(X, valid, z)
    np.testing.assert_allclose(scores.detach().numpy(), lcm.f_cnn(z[..., None] * X).detach().numpy(), atol=1e-5)


def test_kl_matches_closed_form_over_valid_regions():
    x, X, valid = _inputs()
    mu, logvar = torch.randn(B, N), torch.randn(B, N)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))       # (B, N) torch's closed form
    expected = ref[valid].mean()
    assert torch.allclose(kl_loss(mu, logvar, valid), expected, atol=1e-6)
    assert kl_loss(torch.zeros(B, N), torch.zeros(B, N), valid) == 0               # N(0, 1) || N(0, 1)


def test_variational_weights_sample_in_training_and_use_the_mean_in_eval():
    vi = VariationalRegionWeighting(feature_dim=D)
    x, X, valid = _inputs()
    vi.eval()
    z, mu, _ = vi(X)
    assert torch.equal(z, mu)
    vi.train()
    z1, mu1, logvar = vi(X)
    z2, _, _ = vi(X)
    assert not torch.equal(z1, z2) and torch.equal(mu1, mu)
    z1.sum().backward()
    assert vi.w.weight.grad[1].abs().sum() > 0                                      # reparameterisation passes gradients


@pytest.mark.parametrize("per_image", [True, False])
def test_label_gcn_fast_equals_naive(per_image):
    torch.manual_seed(0)
    gcn = LabelGCN(embedding_dim=E, widths=(6, 9), feature_dim=D)
    x, _, _ = _inputs()
    H0 = torch.randn(C, E)
    A = torch.rand(B, C, C) if per_image else torch.rand(C, C)
    A_hat = normalize_adjacency(A)
    fast, naive = gcn(x, H0, A_hat), gcn.forward_naive(x, H0, A_hat)
    assert fast.shape == (B, C)
    assert torch.allclose(fast, naive, atol=1e-5)


def test_region_branch_reassociated_fc_equals_full_fc_diagonal():
    torch.manual_seed(0)
    rb = RegionBranch(num_rois=N, num_classes=C, feature_dim=D, widths=(6, 7, 8), relu_after_last=False)
    scores, valid = torch.randn(B, N, C), torch.rand(B, N) > 0.3
    A_hat = normalize_adjacency(torch.rand(B, C, C))
    # naive: every layer literally, the last without ReLU, FC on every node (B, C, C), then the diagonal
    h = (scores * valid[..., None]).transpose(1, 2)
    for W in rb.weights[:-1]:
        h = torch.relu(A_hat @ h @ W.weight.t())
    R = A_hat @ h @ rb.weights[-1].weight.t()                                     # (B, C, D)
    full = R @ rb.fc.weight.t() + rb.fc.bias                                      # (B, C, C)
    expected = torch.diagonal(full, dim1=1, dim2=2)                              # (B, C)
    assert torch.allclose(rb(scores, valid, A_hat), expected, atol=1e-5)
    rb.relu_after_last = True
    full = torch.relu(R) @ rb.fc.weight.t() + rb.fc.bias
    assert torch.allclose(rb(scores, valid, A_hat), torch.diagonal(full, dim1=1, dim2=2), atol=1e-5)


def test_head_fast_equals_naive_for_full_iagcn():
    torch.manual_seed(0)
    head = IAGCNHead(config=config_for_preset("iagcn", gcn_widths=(6, 9), region_widths=(5, 6, 7)).head(), num_classes=C,
                     feature_dim=D, num_rois=N, label_embeddings=np.random.default_rng(0).standard_normal((C, E)),
                     A_S=_A_S()).eval()
    x, X, valid = _inputs()
    assert torch.allclose(head(x, X, valid).logits, head(x, X, valid, naive=True).logits, atol=1e-5)


def test_masked_bce_ignores_minus_one():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1, 0, -1], [-1, 1, 0]], dtype=torch.int8)
    keep = [(0, 0, 1.0), (0, 1, 0.0), (1, 1, 1.0), (1, 2, 0.0)]
    manual = np.mean([-(t * np.log(1 / (1 + np.exp(-float(logits[i, j])))) +
                        (1 - t) * np.log(1 - 1 / (1 + np.exp(-float(logits[i, j]))))) for i, j, t in keep])
    assert abs(float(multilabel_loss(logits, targets)) - manual) < 1e-6
    as_neg = multilabel_loss(logits, targets, difficult="negative")
    assert abs(float(as_neg) - float(multilabel_loss(logits, targets.clamp_min(0)))) < 1e-7


@pytest.mark.parametrize("reading", ["label-nodes", "region-nodes"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_outputs_finite_logits_and_trains_every_parameter(preset, reading):
    torch.manual_seed(1)
    cfg = config_for_preset(preset, region_reading=reading, gcn_widths=(6, 9), region_widths=(5, 6, 7))
    head = IAGCNHead(config=cfg.head(), num_classes=C, feature_dim=D, num_rois=N,
                     label_embeddings=np.random.default_rng(0).standard_normal((C, E)), A_S=_A_S()).train()
    x, X, valid = _inputs()
    out = head(x, X, valid)
    assert out.logits.shape == (B, C) and torch.isfinite(out.logits).all()
    targets = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.int8)
    loss, parts = total_loss(out, targets, valid, beta=cfg.beta, difficult=cfg.difficult)
    loss.backward()
    params = dict(head.named_parameters())
    assert params, preset
    missing = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"{preset}/{reading}: no gradient for {missing}"
    assert (parts["loss_kl"] > 0) == cfg.variational
    # the parts the preset table says run, and nothing else
    assert (head.variational is not None) == (preset in ("idlcm-vi", "iagcn"))
    assert (head.region is not None) == (preset in ("iagcn", "comsco", "mlgcn-comsco"))
    assert (head.label_gcn is not None) == (preset not in ("resnet", "comsco"))
