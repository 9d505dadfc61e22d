"""Issue 13, the fused presets under the frozen recipe: L2 on the label GCN's classifiers M instead of on its layers
(``decay_on=classifiers``), the branch losses (``branch_loss_weight``), and what the recipes set.

Reference values are computed here independently: M is materialised layer by layer from the module's weights, and
the losses come from scikit-learn-free plain formulas (log-sigmoid written out)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from iagcn.train.config import config_for_preset
from iagcn.train.lcm import normalize_adjacency
from iagcn.train.model import HeadOutput, IAGCNHead, total_loss
from iagcn.train.optim import make_optimizer

C, D, E, N = 5, 12, 7, 6


def head(preset: str, **overrides) -> IAGCNHead:
    cfg = config_for_preset(preset, gcn_widths=(8, 9), region_widths=(4, 5, 6), num_threads=1, **overrides)
    rng = np.random.default_rng(0)
    A = (rng.random((C, C)) < 0.5).astype(np.float32) + np.eye(C, dtype=np.float32)
    torch.manual_seed(0)
    return IAGCNHead(config=cfg.head(), num_classes=C, feature_dim=D, num_rois=N,
                     label_embeddings=rng.normal(size=(C, E)).astype(np.float32), A_S=A)


def classifiers_by_hand(model: IAGCNHead, A_hat: torch.Tensor) -> torch.Tensor:
    """M = Â f(... f(Â H0 W0) ...) W_L for one adjacency (C, C), from the module's weights: (C, D)."""
    gcn = model.label_gcn
    h = model.label_embeddings.double()
    Ws = [W.weight.double() for W in gcn.weights]
    for W in Ws[:-1]:
        h = gcn.act(A_hat.double() @ h @ W.t())
    return A_hat.double() @ h @ Ws[-1].t()


def batch(seed: int = 1, B: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g), torch.ones(B, N, dtype=torch.bool)


@pytest.mark.parametrize("preset", ["mlgcn", "idlcm-static", "idlcm", "iagcn"])
def test_classifier_norm_is_the_norm_of_the_materialised_classifiers(preset):
    model = head(preset, decay_on="classifiers", standardize="none")
    model.train()
    x, X, valid = batch()
    out = model(x, X, valid)
    assert out.classifier_sq_norm is not None
    if model.config.global_adjacency == "static":
        want = classifiers_by_hand(model, model.A_S_hat).pow(2).sum()
    else:
        # z is sampled in training mode: rebuild Â_F from what this very forward pass returned
        A_hat_F = normalize_adjacency(out.A_F, eps=model.config.adjacency_eps)
        want = torch.stack([classifiers_by_hand(model, A).pow(2).sum() for A in A_hat_F]).mean()
    torch.testing.assert_close(out.classifier_sq_norm.double(), want, rtol=1e-4, atol=1e-6)
    # and y_w is unchanged by computing the norm (the same as the naive Eq. 5-6)
    model.eval()
    plain = model(x, X, valid)
    assert plain.classifier_sq_norm is None                                       # only while training
    naive = model(x, X, valid, naive=True)
    torch.testing.assert_close(plain.y_w, naive.y_w, rtol=1e-4, atol=1e-5)


def test_decay_on_classifiers_moves_the_weight_decay_from_the_gcn_layers_to_the_loss():
    model = head("idlcm-static", decay_on="classifiers", standardize="none")
    cfg = config_for_preset("idlcm-static", decay_on="classifiers")
    opt = make_optimizer(model, cfg)
    gcn_ids = {id(p) for p in model.label_gcn.parameters()}
    for g in opt.param_groups:
        ids = {id(p) for p in g["params"]}
        if ids & gcn_ids:
            assert ids <= gcn_ids and g["weight_decay"] == 0.0
        else:
            assert g["weight_decay"] == cfg.weight_decay                          # the bias keeps its L2
    # the penalty in the loss: wd / 2 ||M||^2 on top of L_ML
    x, X, valid = batch()
    model.train()
    out = model(x, X, valid)
    targets = (torch.rand(len(x), C) < 0.3).float()
    with_decay, _ = total_loss(out, targets, valid, beta=1.0, difficult="ignore", classifier_decay=0.05)
    without, _ = total_loss(out, targets, valid, beta=1.0, difficult="ignore")
    torch.testing.assert_close(with_decay - without, 0.025 * out.classifier_sq_norm)
    # the weights recipe: every parameter decayed by the optimiser, no penalty term computed
    plain = head("idlcm-static", decay_on="weights", standardize="none")
    opt = make_optimizer(plain, config_for_preset("idlcm-static", decay_on="weights"))
    assert all(g["weight_decay"] == cfg.weight_decay for g in opt.param_groups)
    plain.train()
    assert plain(x, X, valid).classifier_sq_norm is None


def bce_by_hand(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits, t = logits.double(), t.double()
    log_p = -torch.log1p(torch.exp(-logits))
    log_q = -torch.log1p(torch.exp(logits))
    return -(t * log_p + (1 - t) * log_q).mean()


def test_branch_losses_add_each_branch_classifying_on_its_own():
    g = torch.Generator().manual_seed(3)
    y_w, y_r = torch.randn(4, C, generator=g), torch.randn(4, C, generator=g)
    t = (torch.rand(4, C, generator=g) < 0.4).float()
    out = HeadOutput(logits=0.8 * y_w + 0.2 * y_r, y_w=y_w, y_r=y_r)
    valid = torch.ones(4, N, dtype=torch.bool)
    loss, parts = total_loss(out, t, valid, beta=1.0, difficult="ignore", branch_loss_weight=0.5)
    want = bce_by_hand(out.logits, t) + 0.5 * (bce_by_hand(y_w, t) + bce_by_hand(y_r, t))
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert parts["loss_ml"] == pytest.approx(float(bce_by_hand(out.logits, t)), rel=1e-5)
    # one branch only (comsco, mlgcn): nothing added
    single = HeadOutput(logits=y_r, y_r=y_r)
    alone, _ = total_loss(single, t, valid, beta=1.0, difficult="ignore", branch_loss_weight=0.5)
    assert float(alone) == pytest.approx(float(bce_by_hand(y_r, t)), rel=1e-5)


def test_the_frozen_recipe_sets_the_fused_presets_choices_and_the_paper_recipe_does_not():
    frozen, paper = config_for_preset("iagcn"), config_for_preset("iagcn", recipe="paper")
    assert (frozen.decay_on, frozen.gcn_activation) == ("classifiers", "leaky_relu")
    assert frozen.branch_loss_weight > 0
    assert (paper.decay_on, paper.gcn_activation, paper.branch_loss_weight) == ("weights", "relu", 0.0)
    assert (frozen.fusion_scale, frozen.f_cnn_optimizer, frozen.vi_lr_scale) == ("matched", "heads", 1.0)
    assert (paper.fusion_scale, paper.f_cnn_optimizer, paper.vi_lr_scale) == ("raw", "region", 0.01)
    assert (paper.region_optimizer, paper.lr, paper.weight_decay) == ("same", 0.01, 1e-4)
    assert frozen.f_cnn_weight_decay > frozen.weight_decay and paper.f_cnn_weight_decay is None
    assert (frozen.fusion_lambda, paper.fusion_lambda) == (0.5, 0.8)                # Eq. 11: hold-outs / section 4.3
    # the paper recipe keeps each preset's own architecture: ML-GCN's LeakyReLU, IA-GCN's ReLU
    assert config_for_preset("mlgcn", recipe="paper").gcn_activation == "leaky_relu"
    assert config_for_preset("idlcm", recipe="paper").gcn_activation == "relu"
    # an explicit value still wins over the recipe
    assert config_for_preset("idlcm", gcn_activation="relu").gcn_activation == "relu"


def test_matched_fusion_puts_y_r_on_y_w_s_running_scale():
    model = head("iagcn", standardize="none")
    assert model.config.fusion_scale == "matched"
    x, X, valid = batch(B=8)
    model.train()
    first = model(x, X, valid)
    # the first training batch sets the running stds to that batch's stds
    want = torch.stack([first.y_w.detach().std(), first.y_r.detach().std()])
    torch.testing.assert_close(model.branch_std, want)
    lam = model.config.fusion_lambda
    torch.testing.assert_close(first.logits, lam * first.y_w + (1 - lam) * first.y_r * want[0] / want[1])
    # later batches: exponential moving average with momentum 0.1
    second = model(*batch(seed=2, B=8))
    now = torch.stack([second.y_w.detach().std(), second.y_r.detach().std()])
    torch.testing.assert_close(model.branch_std, 0.9 * want + 0.1 * now)
    # evaluation reads the stored stds and never changes them; the region branch's scale no longer matters
    model.eval()
    stored = model.branch_std.clone()
    out = model(x, X, valid)
    torch.testing.assert_close(model.branch_std, stored)
    torch.testing.assert_close(out.logits, lam * out.y_w + (1 - lam) * out.y_r * stored[0] / stored[1])
    with torch.no_grad():
        model.region.fc.weight.mul_(10.0)
        model.region.fc.bias.mul_(10.0)
        model.branch_std[1] *= 10.0
    torch.testing.assert_close(model(x, X, valid).logits, out.logits, rtol=1e-4, atol=1e-5)
    # the statistics travel with the checkpoint
    assert {"branch_std", "branch_std_seen"} <= set(model.state_dict())


def test_raw_fusion_is_eq_11_as_written_and_single_branch_presets_have_no_scales():
    model = head("iagcn", standardize="none", fusion_scale="raw")
    model.eval()
    out = model(*batch())
    lam = model.config.fusion_lambda
    torch.testing.assert_close(out.logits, lam * out.y_w + (1 - lam) * out.y_r)
    assert config_for_preset("iagcn", recipe="paper").fusion_scale == "raw"
    for preset in ("mlgcn", "comsco", "idlcm-vi"):
        assert "branch_std" not in head(preset).state_dict()


@pytest.mark.parametrize("preset", ["idlcm", "iagcn", "comsco"])
@pytest.mark.parametrize("f_cnn_optimizer", ["heads", "region"])
def test_f_cnn_region_gcn_and_vi_each_get_their_learning_rate(preset, f_cnn_optimizer):
    kw = dict(f_cnn_optimizer=f_cnn_optimizer, region_lr=3e-3, vi_lr_scale=0.5)
    cfg = config_for_preset(preset, **kw)
    model = head(preset, **kw)
    opt = make_optimizer(model, cfg)

    def group_of(module):
        ids = {id(p) for p in module.parameters()}
        found = [g for g in opt.param_groups if ids & {id(p) for p in g["params"]}]
        assert len(found) == 1, found                                             # one group per module
        return found[0]

    f_cnn = group_of(model.image_lcm)                                             # f_CNN (Eq. 2)
    if f_cnn_optimizer == "heads":                                                # the heads' lr and L2
        own = cfg.weight_decay if cfg.f_cnn_weight_decay is None else cfg.f_cnn_weight_decay
        assert f_cnn["lr_scale"] == 1.0 and f_cnn["weight_decay"] == own
        assert isinstance(opt.parts[0] if hasattr(opt, "parts") else opt, torch.optim.SGD)
    else:
        assert f_cnn["lr_scale"] * cfg.lr == pytest.approx(3e-3)
    if model.region is not None:
        assert group_of(model.region)["lr_scale"] * cfg.lr == pytest.approx(3e-3)           # region GCN (Eq. 10)
    if model.variational is not None:
        assert group_of(model.variational)["lr_scale"] * cfg.lr == pytest.approx(3e-3 * 0.5)  # Eq. 8-9
    every = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())             # each parameter exactly once


def test_runs_recorded_before_the_new_fields_are_read_as_they_were_trained():
    """A config.json / checkpoint written before decay_on, branch_loss_weight, fusion_scale and f_cnn_optimizer
    existed was trained with L2 on the layers, Eq. 11-13 as written and f_CNN on the region side: reading it must
    give that model (and its state dict, which has no running stds), not today's defaults."""
    import dataclasses

    from iagcn.train.config import RECORDED_BEFORE, recorded_config

    old = dataclasses.asdict(config_for_preset("iagcn"))
    for k in RECORDED_BEFORE:
        del old[k]
    cfg = recorded_config(old, source="old config.json")
    assert (cfg.decay_on, cfg.branch_loss_weight, cfg.fusion_scale, cfg.f_cnn_optimizer) == \
        ("weights", 0.0, "raw", "region")
    # a run of the frozen recipe from before f_cnn_weight_decay: f_CNN in the heads' SGD at the heads' L2
    mid = dataclasses.asdict(config_for_preset("idlcm"))
    del mid["f_cnn_weight_decay"]
    cfg_mid = recorded_config(mid, source="config.json")
    assert (cfg_mid.f_cnn_optimizer, cfg_mid.f_cnn_weight_decay) == ("heads", None)
    opt = make_optimizer(head("idlcm", **{k: getattr(cfg_mid, k) for k in RECORDED_BEFORE}), cfg_mid)
    assert {g["weight_decay"] for g in opt.param_groups if g["params"]} <= {cfg_mid.weight_decay, 0.0}
    raw = head("iagcn", fusion_scale="raw")
    assert "branch_std" not in raw.state_dict()
    rebuilt = head("iagcn", **{k: getattr(cfg, k) for k in RECORDED_BEFORE})
    rebuilt.load_state_dict(raw.state_dict())                                     # strict: the same modules
    # a recorded value always wins over the legacy one
    new = dataclasses.asdict(config_for_preset("iagcn"))
    assert recorded_config(new, source="new config.json") == config_for_preset("iagcn")


def test_region_side_sgd_option_gives_the_region_its_lr_and_l2_in_one_sgd():
    kw = dict(region_optimizer="sgd", region_lr=0.05, region_weight_decay=1e-4)
    cfg = config_for_preset("iagcn", **kw)
    model = head("iagcn", **kw)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)                                       # one SGD: heads and region side
    region_ids = {id(p) for p in model.region.parameters()}
    (g,) = [g for g in opt.param_groups if region_ids & {id(p) for p in g["params"]}]
    assert g["lr_scale"] * cfg.lr == pytest.approx(0.05) and g["weight_decay"] == 1e-4
    heads = [g for g in opt.param_groups if {id(p) for p in model.label_gcn.parameters()} & {id(p) for p in g["params"]}]
    assert heads and all(h["lr_scale"] == 1.0 for h in heads)


def test_scores_with_the_norm_equal_the_reassociated_scores():
    model = head("idlcm", decay_on="classifiers", standardize="none")
    x = torch.randn(4, D)
    A = normalize_adjacency(torch.rand(4, C, C) + torch.eye(C))
    with_norm, sq = model.label_gcn.scores_and_norm(x, model.label_embeddings, A, norm=True)
    plain, none = model.label_gcn.scores_and_norm(x, model.label_embeddings, A, norm=False)
    assert none is None and sq is not None
    torch.testing.assert_close(with_norm, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("preset", ["idlcm", "mlgcn-idlcm", "iagcn"])
def test_f_cnn_weight_decay_is_f_cnn_s_l2_alone(preset):
    """One SGD step with a zero loss gradient: p <- p - lr * wd * p, with f_CNN's own wd, the others' unchanged."""
    kw = dict(f_cnn_optimizer="heads", f_cnn_weight_decay=0.7, weight_decay=0.01, lr=0.1, momentum=0.0)
    cfg = config_for_preset(preset, **kw)
    model = head(preset, **kw)
    opt = make_optimizer(model, cfg)
    for g in opt.param_groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)                                                           # no zero parameter (the bias)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["image_lcm.f_cnn.weight"].detach(),
                               before["image_lcm.f_cnn.weight"] * (1 - 0.1 * 0.7))   # f_CNN (Eq. 2): its own L2
    if preset == "iagcn":                                                         # the region side: AdamW, decoupled
        name = next(n for n in before if n.startswith("region."))
        assert not torch.allclose(after[name].detach(), before[name] * (1 - 0.1 * 0.7))
    if model.gcn_bias is not None:                                                # the heads' bias: the heads' L2
        torch.testing.assert_close(after["gcn_bias"].detach(), before["gcn_bias"] * (1 - 0.1 * 0.01))
    # unset (null), f_CNN takes the heads' weight decay, as before the field existed
    plain = make_optimizer(head(preset, **{**kw, "f_cnn_weight_decay": None}),
                           config_for_preset(preset, **{**kw, "f_cnn_weight_decay": None}))
    assert {g.get("weight_decay", 0.01) for g in (plain.parts[0] if hasattr(plain, "parts") else plain).param_groups
            if g["params"]} <= {0.01, 0.0}
