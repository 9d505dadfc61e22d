"""Issue 20 through the real CLI: caches that read other files, small inputs with huge costs, errors that were not
one line, and the sweep's stale numbers. Every case: a non-zero exit with ONE line naming the file or option (or the
right number), and no output left behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from iagcn.cache.fake import write_fake_cache
from iagcn.cli import main
from tests.conftest import REPO_ROOT, cli_env
from tests.test_bad_input import SMALL_SET, assert_nothing_written, assert_one_line_error, invoke
from tests.test_wrong_results import KW, caches  # noqa: F401 -- caches: the (train, test) fixture, 48 + 24 images


def train_args(train: Path, evaluation: Path, out: Path, *extra, epochs: int = 1) -> list:
    return ["train", "--train-cache", train, "--eval-cache", evaluation, "--preset", "mlgcn", "--epochs", str(epochs),
            "--quiet", "--out", out, *SMALL_SET, *extra]


def run_python(code: str, *args, preexec_fn=None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(OMP_NUM_THREADS="1"), cwd=REPO_ROOT, preexec_fn=preexec_fn)


# -- caches that read other files ------------------------------------------------------------------------------
def _cache_reading_another_file(kind: str, source: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of ``source`` whose `global` is not stored in it -> (the file, a word the refusal must contain)."""
    bad = tmp_path / f"{kind.replace(' ', '-')}.h5"
    shutil.copy(source, bad)
    with h5py.File(bad, "r") as f:
        g = f["global"][...]                                           # (n, D) float16
    other = tmp_path / "elsewhere.h5"
    raw = tmp_path / "system-file.bin"
    if kind in ("external link", "virtual dataset", "soft link"):
        with h5py.File(other, "w") as o:
            o["global"] = g + np.float16(1)
    with h5py.File(bad, "r+") as f:
        del f["global"]
        if kind == "external link":
            f["global"] = h5py.ExternalLink(str(other), "/global")
            needle = "link"
        elif kind == "soft link":
            f["moved/global"] = g
            f["global"] = h5py.SoftLink("/moved/global")
            needle = "link"
        elif kind == "virtual dataset":
            layout = h5py.VirtualLayout(shape=g.shape, dtype=g.dtype)
            layout[...] = h5py.VirtualSource(str(other), "global", shape=g.shape)
            f.create_virtual_dataset("global", layout)
            needle = "virtual"
        elif kind == "external raw storage":
            raw.write_bytes(np.full(g.shape, 7, np.float16).tobytes())  # "a system file outside the cache"
            f.create_dataset("global", shape=g.shape, dtype=g.dtype, external=[(str(raw), 0, g.nbytes)])
            needle = "system-file.bin"
        else:
            raise AssertionError(kind)
    return bad, needle


EXTERNAL_KINDS = ["external link", "soft link", "virtual dataset", "external raw storage"]


@pytest.mark.parametrize("kind", EXTERNAL_KINDS)
def test_info_refuses_a_cache_whose_data_is_in_another_file(kind, caches, tmp_path):
    bad, needle = _cache_reading_another_file(kind, caches[0], tmp_path)
    code, err = invoke(["info", bad])
    assert_one_line_error(code, err, bad.name, "global", needle)


@pytest.mark.parametrize("kind", EXTERNAL_KINDS)
def test_train_and_eval_refuse_a_cache_whose_data_is_in_another_file(kind, caches, tmp_path):
    bad, needle = _cache_reading_another_file(kind, caches[1], tmp_path)
    run = tmp_path / "run"
    code, err = invoke(train_args(caches[0], bad, run))
    assert_one_line_error(code, err, bad.name, needle)
    assert_nothing_written(run)
    scores = tmp_path / "scores.npy"
    np.save(scores, np.zeros((24, 3), np.float32))
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--scores", scores, "--targets", bad, "--scores-are", "logits", "--out", out,
                        "--no-plots"])
    assert_one_line_error(code, err, bad.name, needle)
    assert_nothing_written(out)


# -- small inputs, huge costs --------------------------------------------------------------------------------------
PEAK_RSS = """
import resource, subprocess, sys
proc = subprocess.run([sys.executable, "-m", "iagcn", *sys.argv[1:]], capture_output=True, text=True)
peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(proc.returncode, round(peak_mib), sep="\\n")
print(proc.stderr.strip())
"""


def peak_rss_of_cli(*args) -> tuple[int, float, str]:
    """(exit code, peak RSS in MiB, stderr) of `iagcn ARGS` in a child process."""
    proc = run_python(PEAK_RSS, *args)
    code, peak, err = proc.stdout.split("\n", 2)
    return int(code), float(peak), err


def test_a_tiny_cache_declaring_400m_rows_is_refused_before_reading(caches, tmp_path):
    bad = tmp_path / "huge.h5"
    shutil.copy(caches[0], bad)
    n = 400_000_000
    with h5py.File(bad, "r+") as f:
        for name in list(f):
            if name != "label_embeddings":
                shape, dtype = f[name].shape, f[name].dtype
                del f[name]
                f.create_dataset(name, shape=(n, *shape[1:]), dtype=dtype)   # declared, never written
    assert bad.stat().st_size < 100_000
    code, peak, err = peak_rss_of_cli("info", bad)
    assert code == 2 and len(err.splitlines()) == 1 and "huge.h5" in err and "declares" in err, err
    assert peak < 300, f"peak RSS {peak} MiB"                   # measured 58 MiB; before: ~5 GB (labels, ids read)


def test_a_compressed_dataset_is_refused_on_open(caches, tmp_path):
    """The writer never compresses; a compressed dataset could expand far beyond the file's size when read."""
    bad = tmp_path / "gzip.h5"
    shutil.copy(caches[0], bad)
    with h5py.File(bad, "r+") as f:
        g = f["global"][...]
        del f["global"]
        f.create_dataset("global", data=g, compression="gzip", chunks=(8, g.shape[1]))
    code, err = invoke(["info", bad])
    assert_one_line_error(code, err, "gzip.h5", "global", "compressed")


def _alias_bomb(levels: int, width: int = 9) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for k in range(1, levels):
        lines.append(f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * width) + "]")
    return "\n".join(lines) + f"\ngcn_widths: *a{levels - 1}\n"


@pytest.mark.parametrize("levels", [7, 9])
def test_a_yaml_config_of_nested_aliases_is_refused_in_one_short_line(levels, caches, tmp_path):
    """368 bytes of nested aliases expanded to a 593 MB error line (a deeper file: a MemoryError)."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb(levels))
    assert cfg.stat().st_size < 1000
    run = tmp_path / "run"
    code, peak, err = peak_rss_of_cli(*train_args(caches[0], caches[1], run, "--config", cfg))
    assert code == 2 and len(err.splitlines()) == 1 and "bomb.yaml" in err and "alias" in err, err[:500]
    assert len(err) < 1000 and peak < 1000, (len(err), peak)
    assert_nothing_written(run)


@pytest.mark.parametrize("name,text", [
    ("dup.yaml", "lr: 0.01\nepochs: 2\nlr: 0.5\n"),
    ("dup.json", '{"lr": 0.01, "epochs": 2, "lr": 0.5}'),
    ("dup.cfg", '{"lr": 0.01, "lr": 0.5}'),
])
def test_a_config_naming_a_key_twice_is_refused(name, text, caches, tmp_path):
    cfg = tmp_path / name
    cfg.write_text(text)
    run = tmp_path / "run"
    code, err = invoke(train_args(caches[0], caches[1], run, "--config", cfg))
    assert_one_line_error(code, err, name, "'lr'", "twice")
    assert_nothing_written(run)


def test_a_huge_or_deeply_nested_config_is_refused_in_one_line(caches, tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("lr: 0.01\n" + "# padding\n" * 200_000)
    deep = tmp_path / "deep.json"
    deep.write_text('{"lr": ' + "[" * 100_000 + "]" * 100_000 + "}")
    for cfg in (big, deep):
        run = tmp_path / "run"
        code, err = invoke(train_args(caches[0], caches[1], run, "--config", cfg))
        assert_one_line_error(code, err, cfg.name)
        assert len(err) < 1000
        assert_nothing_written(run)


@pytest.fixture(scope="module")
def finished(caches, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs3") / "mlgcn"
    code, err = invoke(train_args(caches[0], caches[1], run))
    assert code == 0, err
    return run


def test_a_run_record_naming_a_key_twice_is_refused(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(text.replace('{\n', '{\n  "protocol": "edited by hand",\n', 1))
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--run", run, "--out", out, "--no-plots", "--quiet"])
    assert_one_line_error(code, err, "config.json", "'protocol'", "twice")
    assert_nothing_written(out)


def test_a_glove_file_with_a_huge_first_line_is_refused_without_reading_it(tmp_path):
    from tests.test_bad_input import CHEAP, _voc

    root = _voc(tmp_path)
    glove = tmp_path / "glove.txt"
    with open(glove, "w") as fh:                            # a 100 MB first "line" (before: 5 GB for 240 MB)
        fh.write("dog")
        chunk = " 0.125" * 100_000
        for _ in range(170):
            fh.write(chunk)
        fh.write("\ncat 0.1 0.2\n")
    out_dir = tmp_path / "out"
    code, err = invoke(["extract", "--dataset", "voc", "--root", root, "--split", "trainval", "--out",
                        out_dir / "c.h5", *CHEAP, "--label-embeddings", f"glove:{glove}"])
    assert_one_line_error(code, err, "glove.txt line 1", "longer than")
    assert_nothing_written(out_dir)
    # the memory the read takes (peak RSS growth over the imports, which take ~0.7 GB here)
    proc = run_python(PEAK_OF_CALL, "from iagcn.extract.embeddings import read_glove_vectors as f",
                      "f(Path(sys.argv[3]), {'dog'})", glove)
    growth, err = proc.stdout.split("\n", 1)
    assert "longer than" in err and float(growth) < 200, (growth, err[:300], proc.stderr[-500:])


PEAK_OF_CALL = """
import resource, sys
from pathlib import Path
exec(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    exec(sys.argv[2])
except Exception as e:
    err = str(e)[:300]
else:
    err = "no error"
print(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base), err, sep="\\n")  # MiB
"""


def _zip_bomb(path: Path, *, megabytes: int) -> None:
    """An .npz of one (megabytes * 2**17,) float64 array of zeros, deflated: ~1000x smaller than it expands."""
    n = megabytes << 17
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("scores.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
            zeros = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(zeros)


def test_an_npz_zip_bomb_is_refused_before_it_is_expanded(caches, tmp_path):
    bomb = tmp_path / "bomb.npz"
    _zip_bomb(bomb, megabytes=400)
    assert bomb.stat().st_size < 2_000_000
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--scores", bomb, "--targets", caches[1], "--scores-are", "logits", "--out", out,
                        "--no-plots"])
    assert_one_line_error(code, err, "--scores", "bomb.npz", "zip bomb")
    assert_nothing_written(out)
    proc = run_python(PEAK_OF_CALL, "from iagcn.evaluate.inputs import read_matrix as f",
                      "f(Path(sys.argv[3]), option='--scores', key='scores')", bomb)
    growth, err = proc.stdout.split("\n", 1)
    assert "zip bomb" in err and float(growth) < 100, (growth, err[:300], proc.stderr[-500:])


def _lying_npy(shape: tuple[int, ...], data: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_an_array_header_declaring_more_than_the_file_holds_is_refused(caches, tmp_path):
    npy = tmp_path / "emb.npy"                              # declares 3 x 50M float32 (600 MB), holds 60 bytes
    npy.write_bytes(_lying_npy((3, 50_000_000), bytes(60)))
    run = tmp_path / "run"
    code, err = invoke(train_args(caches[0], caches[1], run, "--label-embeddings", npy))
    assert_one_line_error(code, err, "--label-embeddings", "emb.npy", "declares")
    assert_nothing_written(run)
    npz = tmp_path / "scores.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("scores.npy", _lying_npy((24, 50_000_000), bytes(24 * 3 * 4)))
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--scores", npz, "--targets", caches[1], "--scores-are", "logits", "--out", out,
                        "--no-plots"])
    assert_one_line_error(code, err, "--scores", "scores.npz", "declares")
    assert_nothing_written(out)


# -- errors that were not one line -------------------------------------------------------------------------------
def _set_file_size_limit(limit: int):
    def preexec() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_train_past_a_real_file_size_limit_names_the_checkpoint(caches, tmp_path):
    """`ulimit -f`: config.json (~3 KB) fits, the first checkpoint (~24 KB) does not: a real EFBIG inside torch.save."""
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "iagcn", *map(str, train_args(caches[0], caches[1], run))],
                          capture_output=True, text=True, timeout=300, env=cli_env(OMP_NUM_THREADS="1"),
                          cwd=REPO_ROOT, preexec_fn=_set_file_size_limit(16_000))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "file-size limit reached" in lines[0] and str(run / "best.pt") in lines[0], lines[0]
    assert (run / "config.json").exists() and not (run / "best.pt").exists() and not (run / "metrics.json").exists()
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]


def test_train_on_a_real_full_device_names_the_checkpoint(caches, tmp_path, monkeypatch):
    """A real ENOSPC from the kernel: the checkpoint's temporary is a link to /dev/full (every write: ENOSPC)."""
    from iagcn import fsutil

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real = fsutil.tmp_name_for

    def tmp_name_for(final: Path) -> Path:
        tmp = real(final)
        if final.name == "best.pt":
            os.symlink("/dev/full", tmp)
        return tmp

    monkeypatch.setattr(fsutil, "tmp_name_for", tmp_name_for)
    run = tmp_path / "run"
    code, err = invoke(train_args(caches[0], caches[1], run))
    assert_one_line_error(code, err, "disk full while writing checkpoint", str(run / "best.pt"))
    assert not (run / "best.pt").exists() and not [p.name for p in run.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("role", ["train", "eval"])
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_empty_cache_is_refused_before_anything_is_written(role, command, caches, tmp_path):
    empty = Path(write_fake_cache(tmp_path / "empty.h5", n=0, seed=0, prototypes_seed=0, **KW))
    train, evaluation = (empty, caches[1]) if role == "train" else (caches[0], empty)
    out = tmp_path / "out"
    if command == "train":
        args = train_args(train, evaluation, out)
    else:
        args = ["sweep", "--train-cache", train, "--eval-cache", evaluation, "--presets", "mlgcn", "--epochs", "1",
                "--quiet", "--out", out, *SMALL_SET]
    code, err = invoke(args)
    assert_one_line_error(code, err, f"--{role}-cache", "empty.h5", "no images")
    assert_nothing_written(out)


def test_a_sweep_whose_train_cache_is_too_small_for_the_probe_names_the_cache_not_val_fraction(caches, tmp_path):
    tiny = Path(write_fake_cache(tmp_path / "tiny.h5", n=2, seed=0, prototypes_seed=0, **KW))
    out = tmp_path / "sweep"
    code, err = invoke(["sweep", "--train-cache", tiny, "--eval-cache", caches[1], "--presets", "mlgcn", "--epochs",
                        "1", "--set", "val_fraction=0", "--quiet", "--out", out, *SMALL_SET])
    assert_one_line_error(code, err, "--train-cache", "tiny.h5", "cross-validation", "--no-probe")
    assert "--val-fraction" not in err
    assert_nothing_written(out)


KILL_AT_TENSORBOARD = """
import os, signal, sys
from iagcn.train import tensorboard_log

logged = tensorboard_log.TensorBoardLog.epoch


def epoch(self, row):
    if row["epoch"] == 2:               # last.pt already holds epoch 2: the kill lands before its events
        os.kill(os.getpid(), signal.SIGKILL)
    logged(self, row)


tensorboard_log.TensorBoardLog.epoch = epoch
from iagcn.cli import main
main(sys.argv[1:])
"""


def test_the_epoch_saved_just_before_a_kill_reaches_tensorboard_after_the_resume(caches, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    proc = run_python(KILL_AT_TENSORBOARD, *train_args(caches[0], caches[1], run, "--tensorboard", epochs=3))
    assert proc.returncode == -9, proc.stderr
    import torch

    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1          # epoch 2 is kept
    code, err = invoke(["train", "--resume", run, "--quiet"])
    assert code == 0, err
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = sorted(e.step for e in acc.Scalars("loss/total"))
    assert steps == [1, 2, 3], steps
    log = [line.split(",") for line in (run / "log.csv").read_text().splitlines()[1:]]
    by_step = {e.step: e.value for e in acc.Scalars("loss/total")}
    assert by_step[2] == pytest.approx(float(log[1][2]), rel=1e-5)


def test_lock_refusals_name_the_folder_the_user_gave(caches, tmp_path):
    from filelock import FileLock

    for command, folder, lock, what in (("train", tmp_path / "run", ".run.lock", "run directory"),
                                        ("sweep", tmp_path / "sweep", ".sweep.lock", "sweep directory")):
        folder.mkdir()
        held = FileLock(str(folder / lock), timeout=0)
        held.acquire()
        try:
            args = train_args(caches[0], caches[1], folder) if command == "train" else \
                ["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn", "--epochs", "1",
                 "--no-probe", "--quiet", "--out", folder, *SMALL_SET]
            code, err = invoke(args)
        finally:
            held.release()
        assert_one_line_error(code, err, f"another process is writing {what} {folder} (lock {folder / lock} is held)")
        assert sorted(p.name for p in folder.iterdir()) == [lock]


def test_a_sweep_continuing_an_interrupted_run_of_another_config_names_the_sweep_not_resume(caches, tmp_path):
    sweep = tmp_path / "sweep"
    run = sweep / "mlgcn-s0"
    proc = run_python(KILL_AT_TENSORBOARD, *train_args(caches[0], caches[1], run, "--tensorboard", "--seed", "0",
                                                      epochs=3))
    assert proc.returncode == -9 and (run / "last.pt").exists(), proc.stderr
    code, err = invoke(["sweep", "--train-cache", caches[0], "--eval-cache", caches[1], "--presets", "mlgcn", "--seeds",
                        "0", "--epochs", "3", "--lr", "0.5", "--tensorboard", "--no-probe", "--quiet", "--out", sweep,
                        *SMALL_SET])
    assert_one_line_error(code, err, f"sweep --out {sweep}", "interrupted run mlgcn-s0", "different config", "lr")
    assert "--resume" not in err


# -- wrong numbers with exit 0 (sweep) ---------------------------------------------------------------------------
def sweep_args(train: Path, evaluation: Path, out: Path, *extra) -> list:
    return ["sweep", "--train-cache", train, "--eval-cache", evaluation, "--seeds", "0", "--epochs", "1", "--quiet",
            "--bootstrap", "100", "--out", out, *SMALL_SET, *extra]


def probe_row(sweep: Path) -> dict:
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    return next(r for r in rows if r["preset"] == "linear-probe")


def test_the_probe_row_is_refitted_when_a_cache_changes_under_the_same_path(tmp_path):
    train = Path(write_fake_cache(tmp_path / "train.h5", n=60, seed=0, prototypes_seed=0, **KW))
    evaluation = Path(write_fake_cache(tmp_path / "test.h5", n=30, seed=1, prototypes_seed=0, split="test", **KW))
    sweep = tmp_path / "sweep"
    code, err = invoke(sweep_args(train, evaluation, sweep, "--presets", "mlgcn"))
    assert code == 0, err
    before = probe_row(sweep)["mAP"]
    write_fake_cache(evaluation, n=30, seed=9, prototypes_seed=0, split="test", **KW)   # re-extracted in place
    shutil.rmtree(sweep / "mlgcn-s0")                                                 # (its run: retrained)
    code, err = invoke(sweep_args(train, evaluation, sweep, "--presets", "mlgcn"))
    assert code == 0, err
    fresh = tmp_path / "fresh"                                   # reference: a sweep that never saw the old cache
    code, err = invoke(sweep_args(train, evaluation, fresh, "--presets", "mlgcn"))
    assert code == 0, err
    assert probe_row(fresh)["mAP"] != before                     # the change matters to the probe
    assert probe_row(sweep)["mAP"] == probe_row(fresh)["mAP"]


def test_a_sweep_rerun_without_a_comparison_leaves_no_earlier_ablation_files(caches, tmp_path):
    sweep = tmp_path / "sweep"
    code, err = invoke(sweep_args(caches[0], caches[1], sweep, "--presets", "mlgcn,iagcn", "--no-probe"))
    assert code == 0, err
    assert (sweep / "ablation.json").exists() and (sweep / "ablation.md").exists()
    args = sweep_args(caches[0], caches[1], sweep, "--presets", "mlgcn,iagcn", "--no-probe", "--baseline", "none")
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    assert not (sweep / "ablation.json").exists() and not (sweep / "ablation.md").exists()
    wrote = [line for line in result.stdout.splitlines() if line.startswith("wrote ")]
    assert wrote and "ablation" not in wrote[0], wrote


def test_eval_of_a_run_on_an_empty_cache_names_the_cache(finished, tmp_path):
    empty = Path(write_fake_cache(tmp_path / "empty.h5", n=0, seed=0, prototypes_seed=0, **KW))
    out = tmp_path / "eval"
    code, err = invoke(["eval", "--run", finished, "--cache", empty, "--out", out, "--no-plots", "--quiet"])
    assert_one_line_error(code, err, "empty.h5", "no images")
    assert_nothing_written(out)


def test_compare_recomputes_a_runs_scores_when_the_cache_changed_under_the_same_path(tmp_path):
    """Saved scores are reused only for the cache's content fingerprint (they were: config hash + path)."""
    train = Path(write_fake_cache(tmp_path / "train.h5", n=48, seed=0, prototypes_seed=0, **KW))
    evaluation = Path(write_fake_cache(tmp_path / "test.h5", n=24, seed=1, prototypes_seed=0, split="test", **KW))
    runs = [tmp_path / "r0", tmp_path / "r1"]
    for seed, run in enumerate(runs):
        code, err = invoke(train_args(train, evaluation, run, "--seed", str(seed)))
        assert code == 0, err
    write_fake_cache(evaluation, n=24, seed=9, prototypes_seed=0, split="test", **KW)   # same ids, new content
    code, err = invoke(["compare", *runs, "--resamples", "100", "--out", tmp_path / "cmp"])
    assert code == 0, err
    got = json.loads((tmp_path / "cmp" / "compare.json").read_text())["bootstrap"]["metrics"]["mAP"]
    for side, run in zip("ab", runs):        # reference: each run scored from its checkpoint on the new cache
        code, err = invoke(["eval", "--checkpoint", run / "best.pt", "--cache", evaluation, "--out",
                            tmp_path / f"ref-{side}", "--no-plots", "--quiet"])
        assert code == 0, err
        ref = json.loads((tmp_path / f"ref-{side}" / "metrics.json").read_text())["metrics"]["mAP"]
        assert got[side] == pytest.approx(ref), side
