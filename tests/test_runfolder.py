"""The run-folder contract (train/runfolder.py): one schema, one-line errors naming the file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from iagcn.errors import UserError
from iagcn.train import runfolder


def _record(**over):
    rec = {"config": {"preset": "iagcn", "seed": 0}, "protocol": "holdout-0.1", "git_commit": None,
           "train_cache": {"path": "/x/train.h5"}, "eval_cache": {"path": "/x/test.h5"}, "class_names": ["a", "b"]}
    rec.update(over)
    return rec


def test_record_round_trip_and_schema(tmp_path):
    runfolder.write_record(tmp_path, _record())
    assert runfolder.read_record(tmp_path)["protocol"] == "holdout-0.1"
    assert runfolder.recorded_cache(tmp_path, "eval")["path"] == "/x/test.h5"
    assert runfolder.is_run_folder(tmp_path) and not runfolder.is_complete(tmp_path)
    with pytest.raises(UserError, match="lacks 'protocol'"):
        runfolder.write_record(tmp_path / "other", {k: v for k, v in _record().items() if k != "protocol"})


@pytest.mark.parametrize("text, match", [(None, "no config.json"), ("{not json", "unreadable run config"),
                                         ("[1, 2]", "not a JSON object"), ('{"config": {}}', "lacks 'protocol'")])
def test_record_errors_are_one_line(tmp_path, text, match):
    if text is not None:
        (tmp_path / "config.json").write_text(text)
    with pytest.raises(UserError, match=match) as e:
        runfolder.read_record(tmp_path, option="--run")
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_metrics_written_by_eval_are_refused_as_training_metrics(tmp_path):
    """An eval-shaped metrics.json in a run folder (what the old `eval --out RUN` left) is named, not a KeyError."""
    (tmp_path / "metrics.json").write_text(json.dumps({"name": "x", "metrics": {"mAP": 50.0}, "per_class_ap": {}}))
    with pytest.raises(UserError, match="lacks 'protocol'"):
        runfolder.read_metrics(tmp_path)


def test_refuse_run_folder(tmp_path):
    runfolder.refuse_run_folder(tmp_path)  # an empty folder is fine
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(UserError, match="training run folder"):
        runfolder.refuse_run_folder(tmp_path)


def test_scores_round_trip(tmp_path):
    scores = np.arange(6, dtype=np.float32).reshape(3, 2)
    runfolder.save_scores(tmp_path, scores, ["a", "b", "c"])
    got, ids = runfolder.load_scores(tmp_path)
    assert np.array_equal(got, scores) and ids == ["a", "b", "c"]
    (tmp_path / "scores.npz").unlink()  # the .npy + image_ids.txt copy is read when the .npz is gone
    got, ids = runfolder.load_scores(tmp_path)
    assert np.array_equal(got, scores) and ids == ["a", "b", "c"]
    assert runfolder.load_scores(tmp_path / "nothing") is None


def test_checkpoint_keys_checked(tmp_path):
    with pytest.raises(UserError, match="lacks"):
        runfolder.save_checkpoint(tmp_path / "last.pt", {"model": {}})
    import torch

    torch.save({"model": {}}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="lacks epoch, config, meta"):
        runfolder.load_checkpoint(tmp_path / "x.pt")
