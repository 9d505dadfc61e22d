"""Issue 21's small things, each through the real code path: train --quiet's final line, the Top-3 block only when
C > 3, "did you mean" for --set, predict --skip-bad, one checkpoint for a finished last-epoch run, no .lock files
left behind, Fig. 3's top-k boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cli import main


@pytest.fixture(scope="module")
def caches(tiny_caches):
    return tiny_caches


def _train(caches, out, *args):
    where = ["--out", str(out)] if out is not None else []
    return CliRunner().invoke(main, ["train", "--train-cache", caches[0], "--eval-cache", caches[1], *where,
                                     "--device", "cpu", *args])


def test_train_quiet_prints_the_final_map(caches, tmp_path):
    r = _train(caches, tmp_path / "run", "--preset", "resnet", "--epochs", "2", "--quiet")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert r.stdout.splitlines() == [f"done: resnet seed 0 [last-epoch] epoch 2: mAP {m['mAP']:.1f} "
                                     f"CF1 {m['CF1']:.1f} OF1 {m['OF1']:.1f}"], r.output


def _score_files(tmp_path, C):
    rng = np.random.default_rng(0)
    targets = (rng.random((40, C)) < 0.4).astype(np.int8)
    targets[:2] = 1
    np.save(tmp_path / f"s{C}.npy", rng.standard_normal((40, C)) + 2.0 * targets)
    np.save(tmp_path / f"t{C}.npy", targets)
    return ["eval", "--scores", str(tmp_path / f"s{C}.npy"), "--targets", str(tmp_path / f"t{C}.npy"),
            "--scores-are", "logits", "--class-names", ",".join("abcdef"[:C])]


@pytest.mark.parametrize("C,shown", [(2, False), (3, False), (4, True)])
def test_top3_block_only_when_there_are_more_than_3_classes(tmp_path, C, shown):
    """With C <= 3 every class is in every image's top 3: the block would repeat CP ... OF1."""
    r = CliRunner().invoke(main, _score_files(tmp_path, C))
    assert r.exit_code == 0, r.output
    assert ("Top-3" in r.output) is shown, r.output


@pytest.mark.parametrize("cmd", ["train", "sweep"])
def test_unknown_set_field_suggests_the_close_one(tmp_path, cmd):
    r = CliRunner().invoke(main, [cmd, "--train-cache", "a.h5", "--eval-cache", "b.h5", "--out", str(tmp_path / "r"),
                                  "--set", "fusion_lamda=0.7"])
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: --set fusion_lamda: unknown field of TrainConfig; did you mean fusion_lambda"), r.output


def test_unknown_set_field_without_a_close_one_lists_the_fields(tmp_path):
    r = CliRunner().invoke(main, ["train", "--train-cache", "a.h5", "--eval-cache", "b.h5", "--out",
                                  str(tmp_path / "r"), "--set", "qqqqqq=1"])
    assert r.exit_code != 0 and "known fields: " in r.output and "fusion_lambda" in r.output


def test_finished_last_epoch_run_keeps_one_checkpoint_on_disk(caches, tmp_path):
    """best.pt and last.pt of a last-epoch run hold the same epoch: one file (a hard link); eval of either checkpoint
    and --resume of the finished run still work, and give the run's own numbers."""
    run = tmp_path / "run"
    r = _train(caches, run, "--preset", "resnet", "--epochs", "2", "--quiet")
    assert r.exit_code == 0, r.output
    best, last = run / "best.pt", run / "last.pt"
    assert best.exists() and last.exists() and best.samefile(last) and best.stat().st_nlink == 2
    recorded = json.loads((run / "metrics.json").read_text())["metrics"]["mAP"]
    for which in ("best", "last"):
        out = tmp_path / f"eval-{which}"
        e = CliRunner().invoke(main, ["eval", "--run", str(run), "--cache", caches[1], "--which", which,
                                      "--out", str(out), "--quiet", "--device", "cpu"])
        assert e.exit_code == 0, e.output
        assert json.loads((out / "metrics.json").read_text())["metrics"]["mAP"] == pytest.approx(recorded, abs=1e-9)
    r = _train(caches, None, "--resume", str(run), "--quiet")                  # resume the finished run: rescored
    assert r.exit_code == 0, r.output
    assert json.loads((run / "metrics.json").read_text())["metrics"]["mAP"] == pytest.approx(recorded, abs=1e-9)
    assert best.samefile(last)


def test_a_run_whose_selected_epoch_is_not_the_last_keeps_both(caches, tmp_path):
    """--select-on-eval on a run whose last epoch is worse than an earlier one: two different files."""
    import torch

    run = tmp_path / "run"
    r = _train(caches, run, "--preset", "resnet", "--epochs", "6", "--select-on-eval", "--lr", "50", "--quiet")
    assert r.exit_code == 0, r.output
    best = torch.load(run / "best.pt", weights_only=True)["epoch"]
    last = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert best < last                     # lr 50 overshoots: an earlier epoch scores best (seed 0, CPU)
    assert not (run / "best.pt").samefile(run / "last.pt")


def test_no_lock_file_is_left_behind(caches, tmp_path):
    from iagcn.fsutil import exclusive_lock

    run = tmp_path / "run"
    assert _train(caches, run, "--preset", "resnet", "--epochs", "1", "--quiet").exit_code == 0
    assert not [p.name for p in tmp_path.rglob("*.lock")], list(tmp_path.rglob("*"))
    target = tmp_path / "out"
    with exclusive_lock(target):
        assert (tmp_path / ".out.lock").exists()
        with pytest.raises(Exception, match="another process is writing"):   # flock: a second open file is refused
            with exclusive_lock(target):
                pass
    assert not (tmp_path / ".out.lock").exists()


def test_a_lock_taken_while_the_holder_unlinks_it_is_a_fresh_one(tmp_path, monkeypatch):
    """The race of removing lock files: we open the old file, the holder unlinks and releases it, we flock it. That
    lock is on an unlinked file (a third process would create and lock a new one): it must not count as holding."""
    import os

    import filelock._native._unix as native

    from iagcn.fsutil import _held_locks, exclusive_lock

    lock_path = tmp_path / ".out.lock"
    lock_path.write_text("")                      # the holder's file, as we open it
    real, calls = native.lock_fd_nonblocking, []

    def racing(fd):
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:
            lock_path.unlink()                    # the holder's release, between our open and our flock
        return real(fd)

    monkeypatch.setattr(native, "lock_fd_nonblocking", racing)
    with exclusive_lock(tmp_path / "out"):
        now = os.lstat(lock_path)
        assert len(calls) >= 2 and list(_held_locks.values()) == [(now.st_dev, now.st_ino)]   # the file at the path
    assert not lock_path.exists()
