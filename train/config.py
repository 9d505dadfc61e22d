"""TrainConfig: the one frozen config of stage two, its parts, and the ablation presets of Tables 3-6.

Every field can be set from the command line with ``--set key=value`` (``iagcn.configio.apply_overrides``);
the resolved config is written to ``config.json`` next to every run and stored in every checkpoint.

Identity and execution (as ``ExtractConfig``): fields declared with :func:`execution` (device, threads, memory
budget, streaming sizes, eval batch size) change how a run executes, never what it computes.
:meth:`TrainConfig.identity` neutralises them; ``--resume`` and a sweep's completed runs compare identities, so a
run may continue with another ``--device`` or ``--threads`` while any other change is refused.

The model receives only :class:`HeadConfig` (``TrainConfig.head()``): the fields that shape the head's modules
and forward pass, kept apart from optimisation, data and machine settings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from iagcn.configio import config_from_dict
from iagcn.errors import UserError
from iagcn.validation import ANY, Range, check_ranges, check_types


def execution(default: Any) -> Any:
    """Declare a TrainConfig field as execution-only: it may differ between a run and its resume."""
    return dataclasses.field(default=default, metadata={"execution": True})


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """What :class:`iagcn.train.model.IAGCNHead` reads: which branches exist, their widths, Eq. 1-11's constants.

    Built from a TrainConfig by :meth:`TrainConfig.head` (same field names and meanings; see TrainConfig)."""

    global_branch: Literal["linear", "gcn", "none"]
    global_adjacency: Literal["static", "fused"]
    variational: bool
    region_branch: bool
    region_adjacency: Literal["fused", "individual"]
    region_reading: Literal["label-nodes", "region-nodes"]
    region_relu_after_last: bool
    gcn_widths: tuple[int, ...]
    gcn_activation: Literal["relu", "leaky_relu"]
    leaky_slope: float
    region_widths: tuple[int, ...]
    fusion_lambda: float
    fusion_scale: Literal["raw", "matched"]
    adjacency_eps: float
    region_init: Literal["default", "he"]
    region_pool: Literal["features", "scores"]
    region_self_loops: bool
    gcn_bias: bool
    decay_on: Literal["weights", "classifiers"]
    standardize: Literal["none", "scale", "center"]
    vi_positive: bool

    @property
    def uses_image_lcm(self) -> bool:
        """Whether a_I / A_I (Eq. 2-4) are computed: needed by Â_F or by the region branch."""
        return (self.global_branch == "gcn" and self.global_adjacency == "fused") or self.region_branch


@dataclass(frozen=True)
class TrainConfig:
    # ---- which parts run (set by the preset; see PRESETS) -----------------------------------
    preset: str = "iagcn"                          # preset name the fields below started from
    global_branch: Literal["linear", "gcn", "none"] = "gcn"  # y_w: linear classifier on x, label GCN (Eq. 5-6), or off
    global_adjacency: Literal["static", "fused"] = "fused"   # label-GCN adjacency: static Â_S (ML-GCN) or per-image Â_F (Eq. 1)
    variational: bool = True                       # Var_Inf: weight regions by z ~ N(z_mu, exp(z_logvar)) (Eq. 7-9) + L_KL
    region_branch: bool = True                     # Com_Sco: region-based branch y_r (Eq. 10), fused by Eq. 11
    region_adjacency: Literal["fused", "individual"] = "fused"  # region-branch adjacency: Â_F or the individual Â_I (Tables 5-6)
    region_reading: Literal["label-nodes", "region-nodes"] = "region-nodes"  # how Eq. 10's nodes are read: regions (the text: "we view each region as a node"; default, decided on real photos, docs/real-data.md) or labels
    region_relu_after_last: bool = False           # ReLU after the region GCN's 4th layer (paper: "all activations are ReLU"); off: the FC re-associates (docs/real-data.md)
    region_init: Literal["default", "he"] = "he"   # init of the region GCN's bias-free layers: torch's default (U(+-1/sqrt(fan_in)), shrinks the signal) or He fan-in (docs/real-data.md)
    region_pool: Literal["features", "scores"] = "scores"  # region-nodes only: max over regions of the GCN output then FC, or FC per region then max per label (as Eq. 3)
    region_self_loops: bool = True                 # add I to A_I before normalising it (the individual adjacency of comsco / mlgcn-comsco): Â_I = norm(a_I a_I^T) alone has rank one
    # ---- widths and activations ---------------------------------------------------------------
    gcn_widths: tuple[int, ...] = (512, 1024)      # label-GCN hidden widths; input E, output D (paper 4.3: E->512->1024->D)
    gcn_activation: Literal["relu", "leaky_relu"] = "relu"  # between label-GCN layers (ML-GCN: LeakyReLU 0.2; the frozen recipe, the default, sets leaky_relu for every preset)
    gcn_bias: bool = True                          # a learned per-class bias on y_w = M x + b (Eq. 6 has none; centred features lose the intercept the raw mean carried)
    leaky_slope: float = 0.2                       # negative slope when gcn_activation = leaky_relu
    region_widths: tuple[int, ...] = (256, 512, 1024)  # region-GCN hidden widths; output D, then FC D->C (paper 4.3)
    # ---- equations' constants ------------------------------------------------------------------
    fusion_lambda: float = 0.8                     # lambda of Eq. 11: y_f = lambda y_w + (1 - lambda) y_r (the paper's 0.8; the frozen recipe, the default, sets 0.5)
    fusion_scale: Literal["raw", "matched"] = "matched"  # Eq. 11 on the logits as they come (paper) or with y_r rescaled to y_w's running std (the region branch's logits outgrow y_w's ~15x under AdamW)
    beta: float = 1.0                              # weight of L_KL in Eq. 12
    vi_positive: bool = False                      # beyond the paper (off): X^w = softplus(z) X, region weights never negative (Fig. 3 shows positive saliency)
    branch_loss_weight: float = 1.0                # weight of L_ML(y_w) + L_ML(y_r) added to Eq. 12 when both branches run (each branch classifies on its own); 0 = L_ML of y_f only (Eq. 13)
    a_I_loss_weight: float = 0.0                   # beyond the paper (off): weight of a BCE on a_I's logits (max region score), added to Eq. 12; 0 = a_I unsupervised as in Eq. 12-14
    tau: float = 0.4                               # statistical LCM threshold on P(j | i) (ML-GCN)
    p: float = 0.25                                # statistical LCM neighbour weight (ML-GCN)
    adjacency_control: Literal["none", "identity", "uniform", "shuffled", "random"] = "none"  # control replacing A_S (issue 17; train/lcm.py adjacency_control): I, all-ones, labels permuted by the seed, or a seeded random graph of A_S's density; acts on Â_S and on A_S in A_F = A_S ⊙ A_I
    adjacency_eps: float = 1e-8                    # floor on row sums in the adjacency normalisation
    difficult: Literal["ignore", "positive", "negative"] = "ignore"  # how target -1 (VOC difficult-only) enters L_ML
    label_embeddings: str = "cache"                # H0: "cache" (the train cache's label_embeddings) or a .npy file (C, E)
    num_rois: int | None = None                    # read only the top-N ROIs of each image (the first N: the cache must hold them in proposer-score order; train and eval caches alike); None = all cached
    # ---- optimisation: the fields below start from a recipe (RECIPES; docs/training.md) --------
    recipe: str = "frozen"                         # name of the recipe the optimisation fields started from: "frozen" (default, cached features) or "paper" (4.3)
    standardize: Literal["none", "scale", "center"] = "center"  # per-dimension feature map with the train part's statistics (buffers in every checkpoint): none, x / std, or (x - mean) / std
    optimizer: Literal["sgd", "adamw"] = "sgd"     # SGD with momentum (paper; the frozen recipe too) or AdamW (decoupled weight decay)
    region_optimizer: Literal["same", "adamw", "sgd"] = "adamw"  # the region side (VI, region GCN; f_CNN with f_cnn_optimizer = region): the same optimiser as the rest, or AdamW / SGD (momentum) at region_lr with region_weight_decay (train/optim.py)
    region_lr: float = 1e-3                        # initial LR of the region side (the variational weights, the region GCN) when region_optimizer = adamw/sgd (follows the schedule)
    f_cnn_optimizer: Literal["heads", "region"] = "heads"  # f_CNN (Eq. 2, a linear classifier per region): trained like the heads' classifiers (optimizer, lr, L2) or with the region side's (region_optimizer at region_lr); AdamW at 1e-3 sharpens the unsupervised a_I into an adjacency that overfits (docs/real-data.md)
    region_weight_decay: float = 1e-2              # weight decay of the region side when region_optimizer = adamw (decoupled) or sgd (L2)
    f_cnn_weight_decay: float | None = 0.1         # f_CNN's own L2 when f_cnn_optimizer = heads (None = the heads' weight_decay): the unsupervised a_I shapes Â_F, and at the heads' 1e-2 it overfits the training images (docs/real-data.md)
    schedule: Literal["step", "cosine"] = "cosine"  # LR schedule: /(1/lr_gamma) every lr_step epochs (paper), or cosine to 0 over `epochs`
    epochs: int = 20                               # training epochs
    batch_size: int = 32                           # images per optimiser step
    lr: float = 0.1                                # initial learning rate of the heads (the parts that read x)
    momentum: float = 0.9                          # SGD momentum (sgd only)
    weight_decay: float = 1e-2                     # weight decay (SGD: L2 added to the gradient; AdamW: decoupled)
    decay_on: Literal["weights", "classifiers"] = "classifiers"  # label GCN: weight decay on its layers' weights W^(l) (paper), or weight_decay / 2 ||M||^2 on the classifiers M it outputs (as the ResNet-101 row's linear layer), whatever its depth
    lr_step: int = 30                              # step schedule: divide the LR by 1/lr_gamma every lr_step epochs
    lr_gamma: float = 0.1                          # step schedule: LR decay factor
    grad_clip: float = 10.0                        # max gradient norm (ML-GCN code); 0 = off
    vi_lr_scale: float = 1.0                       # LR multiplier of w_mu, w_logvar (Eq. 8-9); the paper recipe's SGD needs 0.01 (its single LR oscillates under L_KL, docs/training.md); AdamW's steps (frozen recipe) do not
    seed: int = 0                                  # seeds parameters, shuffling, reparameterisation noise, holdout split
    # ---- model selection (issue 7) -------------------------------------------------------------
    val_fraction: float = 0.0                      # held-out, label-stratified fraction of the TRAIN cache for choosing the epoch; 0 = the last epoch
    select_on_eval: bool = False                   # choose the epoch on the evaluation cache (the published, optimistic protocol)
    legacy_report: bool = False                    # also score the evaluation cache every epoch and report the `legacy` protocol beside the run's own: the epoch with the best eval mAP (as ML-GCN, ADD-GCN, ASL), in metrics.json "legacy"
    early_stop_patience: int = 0                   # stop after this many epochs without a better selection mAP; 0 = never
    # ---- machine: execution only (identity() neutralises these; a resume may change them) --------
    device: str = execution("auto")                # auto (cuda if available) | cpu | cuda[:k] (iagcn.device)
    num_threads: int = execution(0)                # torch CPU threads; 0 = torch's default
    memory_budget_gib: float = execution(4.0)      # load a cache into RAM when its features fit; otherwise stream
    stream_block_rows: int = execution(256)        # rows per contiguous block when streaming
    shuffle_buffer_blocks: int = execution(8)      # blocks mixed together in the streaming shuffle buffer
    eval_batch_size: int = execution(256)          # images per forward pass when scoring
    tensorboard: bool = execution(False)           # also log each epoch to <run>/tensorboard/ (torch's SummaryWriter)
    keep_checkpoints: Literal["all", "best"] = execution("all")  # finished run keeps last.pt + best.pt, or best.pt only

    def __post_init__(self) -> None:
        where = f"train config (preset {self.preset!r})"
        check_types(self, where=where)
        check_ranges(self, TRAIN_RANGES, where=where, option_names=TRAIN_OPTIONS)
        if self.global_branch == "none" and not self.region_branch:
            raise UserError(f"{where}: global_branch=none needs region_branch=true; fix the option or --set value")
        if self.recipe not in RECIPES:
            raise UserError(f"{where}: recipe must be one of {', '.join(RECIPES)} (got {self.recipe!r}); fix --recipe")

    def identity(self) -> "TrainConfig":
        """The config with every execution field at its default: equal identities train the same model."""
        return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                            if f.metadata.get("execution")})

    def identity_diff(self, other: "TrainConfig") -> list[str]:
        """Names of the identity fields whose values differ between ``self`` and ``other``."""
        return [f.name for f in dataclasses.fields(self)
                if not f.metadata.get("execution") and getattr(self, f.name) != getattr(other, f.name)]

    def head(self) -> HeadConfig:
        """The fields the model reads (nothing about optimisation, data or the machine)."""
        return HeadConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(HeadConfig)})


def execution_fields() -> tuple[str, ...]:
    """Names of TrainConfig's execution-only fields."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("execution"))


#: the allowed values of every TrainConfig field, checked when a config is built (options, --set, a config.json,
#: a checkpoint): nothing runs with a value that makes no sense. Choices (Literal fields) are checked by type.
TRAIN_RANGES: dict[str, Range] = {
    "preset": ANY, "global_branch": ANY, "global_adjacency": ANY, "variational": ANY, "region_branch": ANY,
    "region_adjacency": ANY, "region_reading": ANY, "region_relu_after_last": ANY, "gcn_activation": ANY,
    "difficult": ANY, "label_embeddings": ANY, "select_on_eval": ANY, "legacy_report": ANY, "adjacency_control": ANY, "tensorboard": ANY, "keep_checkpoints": ANY,
    "region_init": ANY, "region_pool": ANY, "region_self_loops": ANY, "gcn_bias": ANY, "vi_positive": ANY,
    "standardize": ANY, "decay_on": ANY, "fusion_scale": ANY, "f_cnn_optimizer": ANY, "optimizer": ANY, "region_optimizer": ANY, "schedule": ANY,
    "recipe": ANY,                                                        # checked against RECIPES
    "branch_loss_weight": Range(0.0, 1e6, note="0 = L_ML on the fused scores only (the paper)"),
    "a_I_loss_weight": Range(0.0, 1e6, note="0 = a_I unsupervised (the paper)"),
    "region_lr": Range(0.0, 100.0, low_open=True),
    "region_weight_decay": Range(0.0, 1.0),
    "f_cnn_weight_decay": Range(0.0, 10.0, none_ok=True, note="null = the heads' weight_decay"),
    "device": ANY,                                                        # checked by the device resolver
    "gcn_widths": Range(1, 65536, each=True, min_len=1, note="hidden widths, at least one"),
    "region_widths": Range(1, 65536, each=True, min_len=1, note="hidden widths, at least one"),
    "leaky_slope": Range(0.0, 1.0),
    "fusion_lambda": Range(0.0, 1.0),
    "beta": Range(0.0, 1e6),
    "tau": Range(0.0, 1.0, note="a threshold on P(j | i)"),
    "p": Range(0.0, 1.0),
    "adjacency_eps": Range(0.0, 1.0, low_open=True, note="a positive floor on row sums"),
    "epochs": Range(1, 100_000),
    "batch_size": Range(1, 1_000_000),
    "lr": Range(0.0, 100.0, low_open=True),
    "momentum": Range(0.0, 1.0, high_open=True),
    "weight_decay": Range(0.0, 1.0),
    "lr_step": Range(1, 100_000),
    "lr_gamma": Range(0.0, 1.0, low_open=True, note="the LR is multiplied by it every lr_step epochs"),
    "grad_clip": Range(0.0, 1e9, note="0 = off"),
    "vi_lr_scale": Range(0.0, 1e6, low_open=True),
    "seed": Range(0, 2**32 - 1),
    "num_rois": Range(1, 100_000, none_ok=True, note="null = every cached ROI"),
    "val_fraction": Range(0.0, 1.0, high_open=True),
    "early_stop_patience": Range(0, 100_000, note="0 = never"),
    "num_threads": Range(0, 4096, note="0 = torch's default"),
    "memory_budget_gib": Range(0.0, 1e6),
    "stream_block_rows": Range(1, 10_000_000),
    "shuffle_buffer_blocks": Range(1, 1_000_000),
    "eval_batch_size": Range(1, 1_000_000),
}

#: the command-line option of a field, when it has one (messages name what the user typed)
TRAIN_OPTIONS: dict[str, str] = {
    "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed",
    "val_fraction": "--val-fraction", "memory_budget_gib": "--memory-budget-gib", "num_threads": "--threads",
    "label_embeddings": "--label-embeddings", "device": "--device",
}


#: recipe name -> values applied on top of the preset. "frozen" (the default; chosen on hold-outs of the training part
#: of genuine VOC07 photos, docs/real-data.md) is TrainConfig's own defaults plus two changes to the model: ML-GCN's
#: LeakyReLU(0.2) between the label GCN's layers instead of IA-GCN's ReLU, which under-trained the 3-layer GCN on
#: frozen features (hold-out 82.3 vs 85.1 mAP), and lambda = 0.5 in Eq. 11 instead of the paper's 0.8 (hold-out mean
#: of iagcn and mlgcn-comsco 85.3 vs 84.8). "paper" is section 4.3 (written for fine-tuning) with each preset's own
#: architecture and lambda 0.8.
RECIPES: dict[str, dict[str, Any]] = {
    "frozen": {"gcn_activation": "leaky_relu", "fusion_lambda": 0.5},
    "paper": {"standardize": "none", "gcn_bias": False, "decay_on": "weights", "branch_loss_weight": 0.0,
              "fusion_scale": "raw", "f_cnn_optimizer": "region", "f_cnn_weight_decay": None,
              "vi_lr_scale": 0.01, "optimizer": "sgd", "region_optimizer": "same", "schedule": "step", "epochs": 120, "lr": 0.01,
              "momentum": 0.9, "weight_decay": 1e-4, "lr_step": 30, "lr_gamma": 0.1, "val_fraction": 0.1},
}

_MLGCN = {"global_branch": "gcn", "global_adjacency": "static", "gcn_widths": (1024,), "gcn_activation": "leaky_relu"}

#: preset name -> config values (Tables 3-6; see paper-decisions.md "Ablation presets")
PRESETS: dict[str, dict[str, Any]] = {
    # ResNet-101: a linear classifier on x
    "resnet": {"global_branch": "linear", "variational": False, "region_branch": False},
    # Base (ML-GCN): label GCN E->1024->D, LeakyReLU(0.2), on the static Â_S
    "mlgcn": {**_MLGCN, "variational": False, "region_branch": False},
    # Base+ID_LCM: A_F from unweighted regions (z = 1), label GCN on Â_F, y = y_w
    "idlcm": {"global_branch": "gcn", "global_adjacency": "fused", "variational": False, "region_branch": False},
    # Base+ID_LCM+Var_Inf: as above with variational weights and L_KL
    "idlcm-vi": {"global_branch": "gcn", "global_adjacency": "fused", "variational": True, "region_branch": False},
    # Base+ID_LCM+Var_Inf+Com_Sco: the full IA-GCN
    "iagcn": {"global_branch": "gcn", "global_adjacency": "fused", "variational": True, "region_branch": True,
              "region_adjacency": "fused"},
    # Com_Sco alone (Tables 5-6): region branch only, adjacency A_I, no VI
    "comsco": {"global_branch": "none", "variational": False, "region_branch": True, "region_adjacency": "individual"},
    # Base+Com_Sco (Tables 5-6): mlgcn on A_S fused with comsco on A_I
    "mlgcn-comsco": {**_MLGCN, "variational": False, "region_branch": True, "region_adjacency": "individual"},
    # one-change controls (issue 13): mlgcn -> idlcm changes the adjacency AND the label GCN (depth, widths, ReLU);
    # these split the step in two, each differing from its neighbours in one thing only
    # Base+ID_LCM on ML-GCN's own label GCN: mlgcn with Â_F instead of Â_S (adjacency only)
    "mlgcn-idlcm": {**_MLGCN, "global_adjacency": "fused", "variational": False, "region_branch": False},
    # IA-GCN's label GCN (E->512->1024->D, ReLU) on the static Â_S: mlgcn's architecture step only (= idlcm on Â_S)
    "idlcm-static": {"global_branch": "gcn", "global_adjacency": "static", "variational": False,
                     "region_branch": False},
}

#: preset -> the paper's row name (Tables 3-6)
PAPER_ROWS: dict[str, str] = {
    "resnet": "ResNet-101", "mlgcn": "Base", "idlcm": "Base+ID_LCM", "idlcm-vi": "Base+ID_LCM+Var_Inf",
    "iagcn": "Base+ID_LCM+Var_Inf+Com_Sco", "comsco": "Com_Sco", "mlgcn-comsco": "Base+Com_Sco",
    "mlgcn-idlcm": "Base+ID_LCM on ML-GCN's GCN (control)", "idlcm-static": "IA-GCN's label GCN on A_S (control)",
    "linear-probe": "LogisticRegression on x (reference)",
    "wide-probe": "LogisticRegression on [x, max over ROIs of X] (reference)",
}


#: fields added after runs were first recorded, with the value that reproduces those runs: a config.json or a
#: checkpoint without the field was trained (and must be scored and resumed) that way, whatever today's default
RECORDED_BEFORE: dict[str, Any] = {"decay_on": "weights", "branch_loss_weight": 0.0, "fusion_scale": "raw",
                                   "f_cnn_optimizer": "region", "f_cnn_weight_decay": None}


def recorded_config(data: dict[str, Any], *, source: str) -> TrainConfig:
    """The TrainConfig a run recorded (config.json, a checkpoint); fields it predates take RECORDED_BEFORE's values."""
    return config_from_dict(TrainConfig, {**{k: v for k, v in RECORDED_BEFORE.items() if k not in data}, **data},
                            source=source)


def unused_fields(cfg: TrainConfig) -> dict[str, str]:
    """Fields whose value ``cfg`` does not read (field -> why, one phrase): an option for one of them does nothing.

    The CLI refuses such an option (``--lr-step`` under the cosine schedule) and warns about a config file's value
    (iagcn.train.cli.resolve_config)."""
    out: dict[str, str] = {}
    if cfg.schedule != "step":
        why = (f"schedule={cfg.schedule} does not use it (only schedule=step multiplies the LR by lr_gamma every "
               f"lr_step epochs: --recipe paper, or --set schedule=step)")
        out.update(lr_step=why, lr_gamma=why)
    if cfg.optimizer != "sgd" and cfg.region_optimizer != "sgd":
        out["momentum"] = f"optimizer={cfg.optimizer} and region_optimizer={cfg.region_optimizer}: no SGD reads it"
    if cfg.select_on_eval and cfg.val_fraction > 0:
        out["val_fraction"] = "select_on_eval chooses the epoch on the evaluation cache: no hold-out is split off"
    reads_A_S = cfg.global_branch == "gcn" or (cfg.region_branch and cfg.region_adjacency == "fused")  # Â_S or A_F
    if cfg.adjacency_control != "none" and not reads_A_S:
        out["adjacency_control"] = (f"preset {cfg.preset} reads no A_S (neither the label GCN's Â_S nor A_F = "
                                    f"A_S ⊙ A_I): the control would change nothing")
    if cfg.val_fraction == 0 and not cfg.select_on_eval and cfg.early_stop_patience:
        out["early_stop_patience"] = ("the last-epoch protocol (val_fraction 0, no select_on_eval) has no selection "
                                      "mAP to stop on")
    return out


def config_for_preset(name: str, *, recipe: str = "frozen", **overrides: Any) -> TrainConfig:
    """TrainConfig of preset ``name`` under optimisation recipe ``recipe``, keyword overrides (field names) on top."""
    if name not in PRESETS:
        raise UserError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    if recipe not in RECIPES:
        raise UserError(f"--recipe {recipe}: unknown recipe; choose one of {', '.join(RECIPES)}")
    values = {**dataclasses.asdict(TrainConfig()), **PRESETS[name], "preset": name, **RECIPES[recipe],
              "recipe": recipe, **overrides}
    return config_from_dict(TrainConfig, values, source=f"preset {name}")
