"""Fault injection through the real CLI: SIGKILL / SIGINT at several points of extract and train (sweep, merge),
locks against a second writer, unwritable outputs, and a full disk (ENOSPC simulated in-process).

After every fault: nothing incomplete under the final name, no temporaries left, and rerunning the same command
(or `--resume`) ends with a result equal to an uninterrupted run (extraction: bit for bit)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cache.fake import write_fake_cache
from iagcn.cache.format import ROW_FIELDS, FeatureCache
from iagcn.cli import main
from iagcn.fsutil import exclusive_lock
from tests.conftest import REPO_ROOT, cli_env, run_cli
from tests.extract_helpers import csv_extract_command

N_IMAGES, BLOCK = 24, 2                                  # 12 blocks of 2 rows: work left after every kill point
CHEAP = ["--weights", "none", "--image-size", "64", "--num-rois", "4", "--workers", "0", "--device", "cpu",
         "--batch-size", "2", "--block-rows", str(BLOCK), "--threads", "1", "--quiet"]
SMALL_SET = ["--set", "gcn_widths=8,8", "--set", "region_widths=8,8,8", "--threads", "1"]


# -- helpers ------------------------------------------------------------------------------------------------
def invoke(args: list) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def spawn(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iagcn", *map(str, args)], env=cli_env(OMP_NUM_THREADS="1"),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(proc: subprocess.Popen, condition, *, timeout: float = 120, poll: float = 0.002) -> bool:
    """Poll ``condition()`` while ``proc`` runs; True when it held before the process ended."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(poll)
    return False


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def cache_arrays(path: Path) -> dict[str, np.ndarray]:
    with FeatureCache(path) as c:
        return {f: c.read(f) for f in [*ROW_FIELDS, "label_embeddings"]}


def assert_same_cache(a: Path, b: Path) -> None:
    x, y = cache_arrays(a), cache_arrays(b)
    for f in x:
        assert x[f].dtype == y[f].dtype, f
        np.testing.assert_array_equal(x[f], y[f], err_msg=f)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A csv dataset of 16 tiny images and the command that extracts it (without --out)."""
    return csv_extract_command(tmp_path_factory.mktemp("faults") / "imgs", N_IMAGES, *CHEAP)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted extraction (in-process)."""
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    code, err = invoke([*dataset, "--out", out])
    assert code == 0, err
    return out


def parts(out: Path) -> list[Path]:
    return sorted((out.parent / f"{out.name}.partial").glob("rows-*.npz"))


# -- extraction: SIGKILL at several points, SIGINT, resume equality ----------------------------------------
def assembling(out: Path) -> bool:
    """The cache's temporary exists: the parts are being assembled into it."""
    return any(p.name.startswith(f".{out.name}.tmp-") for p in out.parent.iterdir())


def test_extract_interrupted_at_several_points_then_rerun_equals_uninterrupted(dataset, reference, tmp_path):
    """Ctrl-C after 1 block (one line, exit 130), SIGKILL the rerun after 4 blocks, SIGKILL the next rerun while it
    assembles the cache; the last rerun (in-process) resumes and the cache equals the uninterrupted one bit for bit."""
    out, blocks = tmp_path / "c.h5", N_IMAGES // BLOCK
    landed = []
    for point, sig, condition in (("after 1 block", signal.SIGINT, lambda: len(parts(out)) >= 1),
                                  ("after 4 blocks", signal.SIGKILL, lambda: len(parts(out)) >= 4),
                                  ("assembling", signal.SIGKILL, lambda: assembling(out))):
        proc = spawn([*dataset, "--out", out])
        hit = wait_until(proc, condition, poll=0.0005)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if not hit:   # only the narrow assembly window can be missed: the run then simply finished
            assert point == "assembling" and proc.returncode == 0, (point, err)
            out.unlink()
            continue
        landed.append(point)
        assert not out.exists(), f"{point}: the final name appeared before the kill"
        if sig == signal.SIGINT:
            kept = len(parts(out))
            assert proc.returncode == 130 and err.strip().splitlines() == [
                f"interrupted: {kept * BLOCK}/{N_IMAGES} images kept in {out}.partial; rerun the same command to resume"]
            assert temporaries(tmp_path) == []
        else:
            assert proc.returncode == -signal.SIGKILL
    assert landed[:2] == ["after 1 block", "after 4 blocks"], landed
    code, err = invoke([*dataset, "--out", out])
    assert code == 0, err
    assert not (tmp_path / "c.h5.partial").exists() and temporaries(tmp_path) == []
    assert_same_cache(reference, out)


def test_second_extraction_of_the_same_output_is_refused(dataset, tmp_path):
    """A second process writing the same cache is refused by the lock, not interleaved."""
    out = tmp_path / "c.h5"
    with exclusive_lock(out, what="cache"):                      # the first writer holds the lock
        code, err = invoke([*dataset, "--out", out])             # a second writer (its own open file description)
    assert code == 2 and "another process is writing" in err and str(out) in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists() and parts(out) == []


# -- merge: interrupted and disk-full merges leave nothing under the final name ----------------------------
@pytest.fixture(scope="module")
def shards(dataset, tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    paths = []
    for i in range(2):
        code, err = invoke([*dataset, "--shard", f"{i}/2", "--out", d / f"s{i}.h5"])
        assert code == 0, err
        paths.append(d / f"s{i}.h5")
    return paths


def _fail_second_write(monkeypatch, exc: BaseException) -> None:
    from iagcn.cache.writer import CacheWriter

    original, calls = CacheWriter.write_rows, []

    def write_rows(self, start, rows):
        calls.append(start)
        if len(calls) == 2:
            raise exc
        return original(self, start, rows)

    monkeypatch.setattr(CacheWriter, "write_rows", write_rows)


def test_merge_interrupted_leaves_nothing_then_rerun_equals_unsharded(shards, reference, tmp_path, monkeypatch):
    out = tmp_path / "m.h5"
    _fail_second_write(monkeypatch, KeyboardInterrupt())
    code, err = invoke(["merge", *shards, "--out", out])
    assert code == 130 and len(err.strip().splitlines()) == 1 and "nothing was written to" in err, err
    assert not out.exists() and temporaries(tmp_path) == []
    monkeypatch.undo()
    code, err = invoke(["merge", *shards, "--out", out])
    assert code == 0, err
    assert_same_cache(reference, out)


def test_merge_disk_full_keeps_the_previous_file(shards, reference, tmp_path, monkeypatch):
    out = tmp_path / "m.h5"
    out.write_bytes(b"previous complete file")
    _fail_second_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    code, err = invoke(["merge", *shards, "--out", out])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "disk full" in err and str(out) in err, err
    assert out.read_bytes() == b"previous complete file" and temporaries(tmp_path) == []


# -- extraction: disk full, unwritable output -------------------------------------------------------------
def test_extract_disk_full_on_a_part_then_rerun_resumes(dataset, reference, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    real_savez, calls = np.savez, []

    def savez(file, **arrays):
        calls.append(1)
        if len(calls) == 4:                                   # the 4th block hits a full disk mid-write
            file.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    code, err = invoke([*dataset, "--out", out])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "disk full" in err and "rerun the same command to resume" in err
    assert not out.exists() and len(parts(out)) == 3 and temporaries(tmp_path) == []
    monkeypatch.undo()
    code, err = invoke([*dataset, "--out", out])
    assert code == 0, err
    assert_same_cache(reference, out)


def test_extract_disk_full_while_assembling_keeps_previous_cache_and_parts(dataset, reference, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    before = out.read_bytes()
    # a different config for the same path: the old complete cache must survive a failed assembly
    other = [*dataset, "--out", out]
    other[other.index("--num-rois") + 1] = "3"
    _fail_second_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    code, err = invoke(other)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "disk full while assembling" in err, err
    assert out.read_bytes() == before and temporaries(tmp_path) == []
    assert len(parts(out)) == N_IMAGES // BLOCK                              # every block kept for the rerun


def test_extract_refuses_up_front_when_the_disk_is_too_small(dataset, tmp_path, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    code, err = invoke([*dataset, "--out", tmp_path / "c.h5"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "GiB free" in err, err
    assert not (tmp_path / "c.h5").exists() and parts(tmp_path / "c.h5") == []


def test_unwritable_outputs_are_refused_with_one_line(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [(blocker / "c.h5", str(blocker))]
    if Path("/sys").is_dir():
        cases.append((Path("/sys/iagcn-cannot-write/c.h5"), "/sys"))           # not writable even as root
    for out, needle in cases:
        code, err = invoke([*dataset, "--out", out])
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_is_refused_before_any_work(dataset, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = invoke([*dataset, "--out", ro / "c.h5"])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "not writable" in err and str(ro) in err, err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# -- training: SIGKILL at several points, SIGINT, locks, disk full ----------------------------------------
EPOCHS = 8                                                # epochs left after the last kill point (epoch 3)


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    kw = dict(num_rois=6, dim=16, num_classes=4, embedding_dim=6, prototypes_seed=2)
    return (write_fake_cache(d / "train.h5", n=160, seed=0, **kw),
            write_fake_cache(d / "test.h5", n=60, seed=1, split="test", **kw))


def train_args(caches, out, *extra) -> list:
    return ["train", "--train-cache", caches[0], "--eval-cache", caches[1], "--preset", "iagcn", "--epochs",
            str(EPOCHS), "--batch-size", "16", "--lr", "0.05", "--quiet", "--out", out, *SMALL_SET, *extra]


@pytest.fixture(scope="module")
def full_run(caches, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    code, err = invoke(train_args(caches, out))
    assert code == 0, err
    return out


def epochs_logged(run: Path) -> int:
    log = run / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["metrics"] == mb["metrics"] and ma["selected_epoch"] == mb["selected_epoch"]
    np.testing.assert_array_equal(np.load(a / "scores.npy"), np.load(b / "scores.npy"))
    la, lb = ((d / "log.csv").read_text().splitlines() for d in (a, b))
    strip = [[",".join(r.split(",")[:6]) for r in rows] for rows in (la, lb)]   # drop seconds, samples/s
    assert strip[0] == strip[1]


def test_train_interrupted_at_several_points_then_resume_equals_uninterrupted(caches, full_run, tmp_path):
    """SIGKILL before the first epoch ends, SIGKILL the resumed run after epoch 2, Ctrl-C the next one after
    epoch 3 (one line, exit 130); the final --resume equals a run that was never interrupted."""
    out = tmp_path / "run"
    resume = ["train", "--resume", out, "--quiet"]
    for args, sig, condition in ((train_args(caches, out), signal.SIGKILL, lambda: (out / "config.json").exists()),
                                 (resume, signal.SIGKILL, lambda: epochs_logged(out) >= 2),
                                 (resume, signal.SIGINT, lambda: epochs_logged(out) >= 3)):
        proc = spawn(args)
        hit = wait_until(proc, condition)
        assert hit, f"the run ended before the kill point: {proc.communicate()}"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert not (out / "metrics.json").exists() and epochs_logged(out) < EPOCHS
        if sig == signal.SIGINT:
            import torch

            kept = torch.load(out / "last.pt", weights_only=True)["epoch"] + 1   # what a resume continues from
            assert kept >= 3
            assert proc.returncode == 130 and err.strip().splitlines() == [
                f"interrupted: epochs 1-{kept} kept in {out / 'last.pt'}; resume with `iagcn train --resume {out}`"]
            assert temporaries(out) == []
        else:
            assert proc.returncode == -signal.SIGKILL
    code, err = invoke(resume)
    assert code == 0, err
    assert temporaries(out) == []
    assert_same_run(full_run, out)


def test_train_disk_full_keeps_last_checkpoint_then_resumes(caches, full_run, tmp_path, monkeypatch):
    import torch

    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 3:                       # epoch 1: best + last; epoch 2: best fails
            f.write(b"half a checkpoint")         # save_checkpoint passes an open file
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed (No space left on device)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    code, err = invoke(train_args(caches, out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "disk full" in err and "best.pt" in err, err
    assert temporaries(out) == [] and not (out / "metrics.json").exists()
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 0      # epoch 1's checkpoint is intact
    monkeypatch.undo()
    code, err = invoke(["train", "--resume", out, "--quiet"])
    assert code == 0, err
    assert_same_run(full_run, out)


def test_second_writer_of_a_run_or_sweep_is_refused(caches, tmp_path):
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    with exclusive_lock(run / "run", what="run directory"):
        proc = run_cli(train_args(caches, run), timeout=300)
    assert proc.returncode == 2 and "another process is writing run directory" in proc.stderr, proc.stderr
    assert not (run / "last.pt").exists()
    with exclusive_lock(sweep / "sweep", what="sweep directory"):
        code, err = invoke(["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn",
                            "--seeds", "0", "--epochs", "1", "--quiet", "--out", sweep, *SMALL_SET])
    assert code == 2 and "another process is writing sweep directory" in err and len(err.strip().splitlines()) == 1
    assert not (sweep / "mlgcn-s0").exists()


def test_sweep_sigkill_then_rerun_equals_uninterrupted(caches, tmp_path):
    base = ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn,iagcn", "--seeds", "0",
            "--epochs", "3", "--batch-size", "16", "--lr", "0.05", "--quiet", *SMALL_SET]
    full, killed = tmp_path / "full", tmp_path / "killed"
    code, err = invoke([*base, "--out", full])
    assert code == 0, err
    proc = spawn([*base, "--out", killed])
    assert wait_until(proc, lambda: epochs_logged(killed / "iagcn-s0") >= 1), proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert (killed / "mlgcn-s0" / "metrics.json").exists() and not (killed / "iagcn-s0" / "metrics.json").exists()
    code, err = invoke([*base, "--out", killed])
    assert code == 0, err
    for run in ("mlgcn-s0", "iagcn-s0"):
        assert_same_run(full / run, killed / run)
    drop = {"train_seconds"}
    rows = [[{k: v for k, v in zip(t[0].split(","), r.split(",")) if k not in drop} for r in t[1:]]
            for t in ((d / "results.csv").read_text().splitlines() for d in (full, killed))]
    assert rows[0] == rows[1]


def test_sweep_refuses_a_complete_run_of_another_config(caches, tmp_path):
    base = ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn", "--seeds", "0",
            "--batch-size", "16", "--quiet", "--out", tmp_path / "s", *SMALL_SET]
    code, err = invoke([*base, "--epochs", "1"])
    assert code == 0, err
    code, err = invoke([*base, "--epochs", "2"])             # would otherwise report the 1-epoch run as 2 epochs
    assert code == 2 and "different config (epochs)" in err and len(err.strip().splitlines()) == 1, err
