"""Configs (issue 10): `--set` parsing of every field type, TrainConfig's identity/execution split, HeadConfig."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from iagcn.configio import apply_overrides, config_from_dict, config_to_dict
from iagcn.errors import UserError
from iagcn.train.config import PRESETS, HeadConfig, TrainConfig, config_for_preset, execution_fields


@dataclass(frozen=True)
class _Sample:
    a: int | None = None                      # PEP 604 union (a string annotation under `from __future__`)
    b: Optional[float] = 1.0                  # typing.Optional
    c: str | None = None                      # a string field: "none" is a value, "null" is None
    d: tuple[int, ...] = (1, 2)
    e: Literal["x", "y"] = "x"
    f: bool = False
    g: typing.Union[int, None] = 5            # typing.Union spelled out


def test_set_parses_pep604_and_optional_fields_to_their_types():
    cfg = apply_overrides(_Sample(), ["a=3", "b=2.5", "c=hello", "d=4,5,6", "e=y", "f=true", "g=7"])
    assert cfg == _Sample(a=3, b=2.5, c="hello", d=(4, 5, 6), e="y", f=True, g=7)
    assert type(cfg.a) is int and type(cfg.b) is float and type(cfg.g) is int
    assert apply_overrides(cfg, ["a=none", "b=null", "g=None"]) == dataclasses.replace(cfg, a=None, b=None, g=None)
    assert apply_overrides(cfg, ["c=none"]).c == "none" and apply_overrides(cfg, ["c=null"]).c is None


@pytest.mark.parametrize("pair, words", [("a=three", ["--set a=three", "int"]), ("b=x", ["--set b=x", "float"]),
                                         ("e=z", ["--set e=z", "x, y"]), ("f=maybe", ["--set f=maybe", "bool"]),
                                         ("zz=1", ["--set zz", "unknown field"]), ("a", ["expected key=value"])])
def test_set_refuses_bad_values_with_one_line(pair, words):
    with pytest.raises(UserError) as e:
        apply_overrides(_Sample(), [pair])
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_extract_config_optional_ints_parse_as_ints():
    from iagcn.extract.config import ExtractConfig

    cfg = apply_overrides(ExtractConfig(), ["image_size=224", "proposer_image_size=128", "proposer_weights=none"])
    assert cfg.image_size == 224 and cfg.proposer_image_size == 128 and cfg.proposer_weights == "none"


# ---------------------------------------------------------------------------------------- identity / execution
def test_execution_fields_are_exactly_the_machine_settings():
    assert set(execution_fields()) == {"device", "num_threads", "memory_budget_gib", "stream_block_rows",
                                       "shuffle_buffer_blocks", "eval_batch_size",
                                       # what the run writes besides its results (issue 12), never what it computes
                                       "tensorboard", "keep_checkpoints"}


def test_identity_neutralises_execution_fields_only():
    base = config_for_preset("mlgcn", seed=2)
    moved = dataclasses.replace(base, device="cpu", num_threads=3, memory_budget_gib=0.0, stream_block_rows=9,
                                shuffle_buffer_blocks=2, eval_batch_size=5)
    assert moved != base and moved.identity() == base.identity() and moved.identity_diff(base) == []
    assert moved.identity().num_threads == TrainConfig().num_threads
    for name, value in (("lr", 0.5), ("seed", 3), ("gcn_widths", (8,)), ("val_fraction", 0.2), ("epochs", 2)):
        other = dataclasses.replace(moved, **{name: value})
        assert other.identity() != base.identity() and other.identity_diff(base) == [name]


def test_head_config_holds_only_what_the_model_reads():
    cfg = config_for_preset("iagcn", fusion_lambda=0.6, gcn_widths=(3, 4), lr=0.5, epochs=7, device="cpu")
    head = cfg.head()
    assert isinstance(head, HeadConfig) and head.fusion_lambda == 0.6 and head.gcn_widths == (3, 4)
    names = {f.name for f in dataclasses.fields(HeadConfig)}
    assert not names & {"lr", "epochs", "seed", "batch_size", "beta", "difficult", "preset", *execution_fields()}
    hints, train_hints = typing.get_type_hints(HeadConfig), typing.get_type_hints(TrainConfig)
    assert all(hints[n] == train_hints[n] for n in names)                 # same meaning as TrainConfig's field
    # a change of a training-only field leaves the head config alone
    assert dataclasses.replace(cfg, lr=0.01, epochs=1, seed=9).head() == head
    for preset in PRESETS:
        p = config_for_preset(preset)
        assert p.head().uses_image_lcm == ((p.global_branch == "gcn" and p.global_adjacency == "fused")
                                           or p.region_branch)


def test_model_refuses_a_train_config():
    import numpy as np

    from iagcn.train.model import IAGCNHead

    cfg = config_for_preset("resnet")
    with pytest.raises(TypeError, match="HeadConfig"):
        IAGCNHead(config=cfg, num_classes=2, feature_dim=3, num_rois=1, label_embeddings=np.zeros((2, 1)),
                  A_S=np.eye(2))
    head = IAGCNHead(config=cfg.head(), num_classes=2, feature_dim=3, num_rois=1, label_embeddings=np.zeros((2, 1)),
                     A_S=np.eye(2))
    assert head.linear is not None


def test_old_config_records_still_load():
    """config.json / checkpoints of runs from before the split hold the same flat field names."""
    record = config_to_dict(config_for_preset("comsco"))
    assert config_from_dict(TrainConfig, record) == config_for_preset("comsco")
    record.pop("eval_batch_size")                         # a field added later takes its default
    assert config_from_dict(TrainConfig, record).eval_batch_size == TrainConfig().eval_batch_size
