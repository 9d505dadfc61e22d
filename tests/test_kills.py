"""A kill must never block the rerun: real subprocesses, real DataLoader workers, real signals.

SIGKILL / SIGTERM of `iagcn extract --workers 2` (workers die with the parent and never hold the lock), a forked
child that outlives its parent without the lock, Ctrl-C during start-up and in `synth` workers (one line), a
Ctrl-C that h5py swallows during `merge` (exit 130, nothing under the final name), EFBIG from a file-size limit
while a cache is assembled (one line, like a full disk), temporaries of killed writers removed by the rerun,
refusals that create no output folder.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cache.fake import write_fake_cache
from iagcn.cache.format import ROW_FIELDS, FeatureCache
from iagcn.cli import main
from iagcn.fsutil import exclusive_lock
from tests.conftest import REPO_ROOT, cli_env
from tests.extract_helpers import csv_extract_command

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc (process tables)")

N_IMAGES, BLOCK = 24, 2
WORKERS = ["--weights", "none", "--image-size", "64", "--num-rois", "4", "--workers", "2", "--device", "cpu",
           "--batch-size", "2", "--block-rows", str(BLOCK), "--threads", "1", "--quiet"]


# -- helpers ------------------------------------------------------------------------------------------------
def spawn(args: list, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "iagcn", *map(str, args)], env=cli_env(OMP_NUM_THREADS="1"),
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def invoke(args: list) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stderr


def wait_for(condition, *, proc: subprocess.Popen | None = None, timeout: float = 60, poll: float = 0.005) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if condition():
            return True
        time.sleep(poll)
    return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie, reaped by nobody yet, holds no files and does no work: counted as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def handles_sigterm(pid: int) -> bool:
    """The process has a handler for SIGTERM: iagcn's entry point is running (Python alone catches only SIGINT)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(l.split()[1] for l in status.splitlines() if l.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def parts(out: Path) -> list[Path]:
    return sorted((out.parent / f"{out.name}.partial").glob("rows-*.npz"))


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp-" in p.name)


def assert_same_cache(a: Path, b: Path) -> None:
    with FeatureCache(a) as x, FeatureCache(b) as y:
        for f in [*ROW_FIELDS, "label_embeddings"]:
            np.testing.assert_array_equal(x.read(f), y.read(f), err_msg=f)


def assert_one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return csv_extract_command(tmp_path_factory.mktemp("kills") / "imgs", N_IMAGES, *WORKERS)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    code, err = invoke([*dataset, "--workers", "0", "--out", out])
    assert code == 0, err
    return out


# -- extract with real DataLoader workers: SIGTERM, then SIGKILL, then the rerun -----------------------------
def test_sigterm_then_sigkill_with_workers_never_block_the_rerun(dataset, reference, tmp_path):
    """SIGTERM: one line, exit 143, workers gone. SIGKILL of the rerun: its workers die within a second and the
    lock is free at once (no 'another process is writing'). The last rerun equals an uninterrupted run."""
    out = tmp_path / "c.h5"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        before = len(parts(out))
        proc = spawn([*dataset, "--out", out])
        assert wait_for(lambda: len(parts(out)) > before and len(children(proc.pid)) == 2, proc=proc), \
            proc.communicate()
        workers = children(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert wait_for(lambda: not any(alive(w) for w in workers), timeout=2), f"{sig!r}: workers {workers} survived"
        assert not out.exists()
        if sig == signal.SIGTERM:
            assert proc.returncode == 143
            kept = len(parts(out)) * BLOCK
            assert assert_one_line(err) == (f"interrupted: {kept}/{N_IMAGES} images kept in {out}.partial; "
                                            f"rerun the same command to resume")
            assert temporaries(tmp_path) == []
        else:
            assert proc.returncode == -signal.SIGKILL
        with exclusive_lock(out, what="cache"):   # free at once: no survivor holds it
            pass
    code, err = invoke([*dataset, "--out", out])
    assert code == 0, err
    assert temporaries(tmp_path) == [] and not (tmp_path / "c.h5.partial").exists()
    assert_same_cache(reference, out)


# -- the lock is not inherited by forked children -----------------------------------------------------------
HOLDER = textwrap.dedent("""
    import os, sys, time, signal
    from iagcn.fsutil import exclusive_lock
    with exclusive_lock(sys.argv[1], what="cache"):
        pid = os.fork()
        if pid == 0:                 # a child that outlives its parent (no worker_setup): it must not keep the lock
            time.sleep(60)
            os._exit(0)
        print(pid, flush=True)
        time.sleep(60)
""")


def test_a_forked_child_that_outlives_its_parent_does_not_hold_the_lock(tmp_path):
    target = tmp_path / "c.h5"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=REPO_ROOT)
    child = int(proc.stdout.readline())
    try:
        with pytest.raises(Exception, match="another process is writing"):   # the parent holds it
            with exclusive_lock(target, what="cache"):
                pass
        proc.kill()
        proc.wait(timeout=10)

        def lock_is_free() -> bool:   # the child closes its copy when it first runs after the fork: promptly
            try:
                with exclusive_lock(target, what="cache"):
                    return True
            except Exception:  # noqa: BLE001
                return False

        assert wait_for(lock_is_free, timeout=2, poll=0.02)
        assert alive(child)           # the orphan is alive, yet the lock is free
    finally:
        os.kill(child, signal.SIGKILL)
        proc.kill()


def test_worker_setup_makes_a_worker_die_with_its_parent(tmp_path):
    script = textwrap.dedent("""
        import multiprocessing as mp, time
        from iagcn.processes import worker_setup
        def work():
            worker_setup()
            time.sleep(60)
        p = mp.get_context("fork").Process(target=work)
        p.start()
        print(p.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=cli_env(),
                            cwd=REPO_ROOT)
    worker = int(proc.stdout.readline())
    try:
        time.sleep(0.3)   # the worker has run worker_setup
        proc.kill()
        proc.wait(timeout=10)
        assert wait_for(lambda: not alive(worker), timeout=2), "the worker survived its parent"
    finally:
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


# -- Ctrl-C / SIGTERM during start-up and in synth workers: one line -----------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_during_start_up_is_one_line(dataset, tmp_path, sig, code):
    """The signal lands while the CLI's modules are still being imported (right after the entry point's handlers
    are in place): one line, the signal's exit status, nothing written."""
    proc = spawn([*dataset, "--out", tmp_path / "c.h5"])
    assert wait_for(lambda: handles_sigterm(proc.pid), proc=proc, poll=0.0005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert assert_one_line(err).startswith("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_synth_with_workers_is_one_line(tmp_path):
    """Ctrl-C from a terminal reaches the whole process group (the parent and its 2 pool workers)."""
    out = tmp_path / "synth"
    proc = spawn(["synth", "--out", out, "--train", "300", "--test", "100", "--workers", "2", "--quiet"], start_new_session=True)
    assert wait_for(lambda: any(".tmp-" in p.name for p in tmp_path.iterdir()) and len(children(proc.pid)) >= 2,
                    proc=proc), proc.communicate()
    time.sleep(0.3)
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert assert_one_line(err) == (f"interrupted: nothing was written to {out} (it is built in a temporary folder); "
                                    f"rerun the same command")
    assert not out.exists() and temporaries(tmp_path) == []
    assert wait_for(lambda: not any(alive(w) for w in workers), timeout=2)


# -- merge: a Ctrl-C swallowed inside h5py still stops it ----------------------------------------------------
@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    n = 600
    for i in range(2):
        write_fake_cache(d / f"s{i}.h5", n=n, num_rois=8, dim=64, num_classes=5, embedding_dim=8, seed=i,
                         prototypes_seed=0, split=f"shard{i}", extra_attrs={"shard": {"index": i, "count": 2, "rows": [i * n, (i + 1) * n],
                                                                   "total_rows": 2 * n}})
    return [d / "s0.h5", d / "s1.h5"]


def test_merge_ctrl_c_swallowed_by_a_library_still_stops_it(shards, tmp_path, monkeypatch):
    """A real SIGINT lands inside a write and the exception is dropped (as h5py does in its callbacks): the merge
    stops at the next step, exit 130, one line, nothing under the final name."""
    from iagcn.cache.writer import CacheWriter

    original = CacheWriter.write_rows

    def write_rows(self, start, rows):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)                         # the handler runs here
        except KeyboardInterrupt:
            pass                                     # swallowed
        return original(self, start, rows)

    monkeypatch.setattr(CacheWriter, "write_rows", write_rows)
    out = tmp_path / "m.h5"
    code, err = invoke(["merge", *shards, "--out", out])
    assert code == 130, err
    assert "nothing was written to" in assert_one_line(err)
    assert not out.exists() and temporaries(tmp_path) == []


def test_merge_ctrl_c_at_several_moments(shards, tmp_path):
    """Real subprocesses: SIGINT at 4 moments of the merge. Each either stops it (130, one line, no file) or, when
    the merge had already renamed its output, leaves a complete cache; never a traceback or a swallowed interrupt."""
    out = tmp_path / "m.h5"
    stopped = 0
    for delay in (0.0, 0.01, 0.03, 0.06):
        out.unlink(missing_ok=True)
        proc = spawn(["merge", *shards, "--out", out])
        assert wait_for(lambda: any(p.name.startswith(".m.h5.tmp-") for p in tmp_path.iterdir()), proc=proc,
                        poll=0.0005), proc.communicate()
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=60)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        if out.exists():          # the signal came after the rename: a complete cache, and it says so
            with FeatureCache(out) as c:
                assert c.num_images == 1200
            assert proc.returncode in (0, 130, -signal.SIGINT), err
        else:
            stopped += 1
            assert proc.returncode == 130, err
            assert "nothing was written to" in assert_one_line(err)
        assert temporaries(tmp_path) == []
    assert stopped >= 2


# -- EFBIG: a file-size limit while assembling is a full disk ------------------------------------------------
def test_file_size_limit_while_assembling_is_one_line_and_the_rerun_resumes(dataset, reference, tmp_path):
    out = tmp_path / "c.h5"
    limit = 200_000   # the part files (~30 kB) fit, the assembled cache (~400 kB) does not

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = spawn([*dataset, "--workers", "0", "--out", out], preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    line = assert_one_line(err)
    assert line.startswith(f"error: file-size limit reached") and f"while assembling {out}" in line, line
    assert not out.exists() and temporaries(tmp_path) == []
    assert len(parts(out)) == N_IMAGES // BLOCK          # every block kept
    code, err = invoke([*dataset, "--workers", "0", "--out", out])
    assert code == 0, err
    assert_same_cache(reference, out)


# -- temporaries of killed writers ---------------------------------------------------------------------------
def test_temporaries_of_a_killed_eval_are_removed_by_the_rerun(tmp_path):
    """A SIGKILLed `eval` leaves `.metrics.json.tmp-<pid>-*`; the rerun removes it (its writer is dead), and under
    the evaluation's lock every temporary of its files."""
    train = write_fake_cache(tmp_path / "tr.h5", n=24, num_rois=4, dim=16, num_classes=3, embedding_dim=8, seed=0,
                             prototypes_seed=0)
    test = write_fake_cache(tmp_path / "te.h5", n=12, num_rois=4, dim=16, num_classes=3, embedding_dim=8, seed=1,
                            prototypes_seed=0, split="test")
    run = tmp_path / "run"
    code, err = invoke(["train", "--train-cache", train, "--eval-cache", test, "--preset", "resnet", "--epochs", "1",
                        "--quiet", "--threads", "1", "--out", run])
    assert code == 0, err
    out = tmp_path / "ev"
    dead = subprocess.Popen(["true"])
    dead.wait()
    out.mkdir()
    stale = [out / f".metrics.json.tmp-{dead.pid}-x1y2", out / f".scores.npz.tmp-{dead.pid}-z3",
             out / ".per_class_ap.csv.tmp-k2j4h5"]   # an older iagcn's name (no pid): removed under the eval lock
    for p in stale:
        p.write_bytes(b"half written")
    code, err = invoke(["eval", "--run", run, "--cache", test, "--no-plots", "--quiet", "--out", out])
    assert code == 0, err
    assert not any(p.exists() for p in stale)


def test_atomic_writes_remove_dead_writers_temporaries_only(tmp_path):
    """Without a lock, a write removes the temporaries of its file whose writer is dead, never a live one's."""
    from iagcn.fsutil import write_text_atomic

    dead = subprocess.Popen(["true"])
    dead.wait()
    final = tmp_path / "table.md"
    stale, live = tmp_path / f".table.md.tmp-{dead.pid}-abc", tmp_path / f".table.md.tmp-{os.getppid()}-def"
    other = tmp_path / f".other.md.tmp-{dead.pid}-ghi"   # another file's: not this write's business
    for p in (stale, live, other):
        p.write_text("partial")
    write_text_atomic(final, "done\n")
    assert final.read_text() == "done\n" and not stale.exists() and live.exists() and other.exists()


# -- refusals create no output folder ------------------------------------------------------------------------
def test_refusals_create_no_output_folder(tmp_path):
    train = write_fake_cache(tmp_path / "tr.h5", n=24, num_rois=4, dim=16, num_classes=3, embedding_dim=8, seed=0,
                             prototypes_seed=0)
    other = write_fake_cache(tmp_path / "other.h5", n=12, num_rois=4, dim=32, num_classes=3, embedding_dim=8,
                             seed=1, prototypes_seed=0, split="test")
    test = write_fake_cache(tmp_path / "te.h5", n=12, num_rois=4, dim=16, num_classes=3, embedding_dim=8, seed=1,
                            prototypes_seed=0, split="test")
    small = ["--epochs", "1", "--quiet", "--threads", "1"]
    code, err = invoke(["train", "--train-cache", train, "--eval-cache", test, "--preset", "resnet", *small,
                        "--out", tmp_path / "run"])
    assert code == 0, err
    cases = {
        "sweep-incompatible": ["sweep", "--train-cache", train, "--eval-cache", other, "--presets", "resnet", "--seeds",
                               "0", *small],
        "sweep-embeddings": ["sweep", "--train-cache", train, "--eval-cache", test, "--presets", "resnet", "--seeds", "0",
                             "--label-embeddings", tmp_path / "missing.npy", *small],
        "train-incompatible": ["train", "--train-cache", train, "--eval-cache", other, *small],
        "eval-pr-classes": ["eval", "--run", tmp_path / "run", "--cache", test, "--pr-classes", "nope", "--quiet"],
    }
    for name, args in cases.items():
        code, err = invoke([*args, "--out", tmp_path / name])
        assert code == 2 and err.startswith("error: "), (name, err)
        assert not (tmp_path / name).exists(), f"{name}: the refusal created {tmp_path / name}"


# -- interrupts never land inside an import, and an interrupted command always ends ---------------------------
def test_an_interrupt_during_an_import_is_raised_after_it(tmp_path):
    """A Ctrl-C while a module is being imported is postponed until the import is over (raised inside importlib
    it can leave the import lock taken: a deadlock, or a KeyError traceback from importlib)."""
    (tmp_path / "slowmod.py").write_text("import time\nprint('importing', flush=True)\ntime.sleep(1.0)\ndone = True\n")
    script = textwrap.dedent("""
        import sys, time
        from iagcn.processes import install_cli_signal_handlers
        install_cli_signal_handlers()
        try:
            import slowmod
            time.sleep(30)
        except KeyboardInterrupt:
            print("raised after the import:", getattr(sys.modules.get("slowmod"), "done", False), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(PYTHONPATH=str(tmp_path)), cwd=REPO_ROOT)
    assert proc.stdout.readline().strip() == "importing"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert out.strip() == "raised after the import: True" and proc.returncode == 0, (out, err)


def test_an_interrupted_command_that_cannot_unwind_still_ends(tmp_path):
    """If the cleanup after Ctrl-C blocks (a lock that is never released), the process still ends after the
    unwind deadline (IAGCN_UNWIND_DEADLINE_S) with one line and exit status 130."""
    script = textwrap.dedent("""
        import threading, time
        from iagcn.processes import install_cli_signal_handlers
        install_cli_signal_handlers()
        lock = threading.Lock()
        lock.acquire()
        try:
            print("ready", flush=True)
            time.sleep(30)
        except KeyboardInterrupt:
            lock.acquire()          # a cleanup that never finishes
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(IAGCN_UNWIND_DEADLINE_S="1"), cwd=REPO_ROOT)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.time() - t0 < 10, err
    assert assert_one_line(err).startswith("interrupted: stopping took over 1 s, exiting now")
