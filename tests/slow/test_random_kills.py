"""Randomized crash test (slow; `make test-slow`): SIGKILL one extraction at 10 random moments, resuming after
each, and compare the final cache with an uninterrupted run bit for bit.

Kill moments are drawn uniformly over the expected remaining duration of each rerun (start-up, pre-flight, block
extraction, assembly), so they land in every phase. After every kill: nothing incomplete under the final name
(if the cache exists it is already complete and equal to the reference). Set IAGCN_KILL_SEED to vary the draw;
the phases hit are printed (pytest -s)."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.extract_helpers import write_tiny_images
from tests.test_faults import assert_same_cache, invoke, parts, spawn, temporaries

N_IMAGES, BLOCK, KILLS = 96, 4, 10


@pytest.mark.slow
def test_ten_random_sigkills_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "imgs"
    ds = write_tiny_images(root, n=N_IMAGES, seed=5)
    rows = ["image,labels"] + [f"{p.name},{' '.join(c for c, v in zip(ds.class_names, lab) if v == 1)}"
                               for p, lab in zip(ds.image_paths, ds.labels)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    cmd = ["extract", "--dataset", "csv", "--root", root, "--split", "labels", "--csv", root / "labels.csv",
           "--classes", ",".join(ds.class_names), "--weights", "none", "--image-size", "64", "--num-rois", "6",
           "--workers", "0", "--device", "cpu", "--batch-size", "2", "--block-rows", str(BLOCK), "--threads", "1",
           "--quiet"]
    t0 = time.time()
    ref = tmp_path / "ref.h5"
    code, err = invoke([*cmd, "--out", ref])
    assert code == 0, err

    # one uninterrupted subprocess run: how long start-up and the blocks take here
    timing = tmp_path / "timing.h5"
    t = time.time()
    proc = spawn([*cmd, "--out", timing])
    while proc.poll() is None and not (tmp_path / "timing.h5.partial").exists():
        time.sleep(0.002)
    startup = time.time() - t
    proc.wait(600)
    assert proc.returncode == 0
    total = time.time() - t
    work = total - startup
    assert_same_cache(ref, timing)

    rng = np.random.default_rng(int(os.environ.get("IAGCN_KILL_SEED", "0")))
    out = tmp_path / "c.h5"
    blocks = N_IMAGES // BLOCK
    phases: list[str] = []
    attempts = 0
    while len(phases) < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, f"kills kept missing: {phases}"
        remaining = blocks - len(parts(out))
        # from late start-up (pre-flight, model build) to just past the expected end (assembly, rename)
        delay = rng.uniform(0.5 * startup, startup + work * remaining / blocks)
        before = len(parts(out))
        stale = {p.name for p in tmp_path.iterdir() if p.name.startswith(".c.h5.tmp-")}
        proc = spawn([*cmd, "--out", out])
        deadline = time.time() + delay
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.001)
        if {p.name for p in tmp_path.iterdir() if p.name.startswith(".c.h5.tmp-")} - stale:
            phase = "assembling"
        elif out.exists():
            phase = "after the rename"
        elif len(parts(out)) > before or delay > startup:   # past the measured start-up (imports, pre-flight, model)
            phase = "extracting blocks"
        else:
            phase = "start-up / pre-flight"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        if proc.returncode == 0:          # the run finished before the kill: it counts as no kill
            assert_same_cache(ref, out)
            out.unlink()
            continue
        phases.append(phase)
        if out.exists():                  # killed after the rename: the cache under its final name is complete
            assert_same_cache(ref, out)
    code, err = invoke([*cmd, "--out", out])
    assert code == 0, err
    assert temporaries(tmp_path) == [] and not (tmp_path / "c.h5.partial").exists()
    assert_same_cache(ref, out)
    counts = {p: phases.count(p) for p in dict.fromkeys(phases)}
    print(f"\n{KILLS} SIGKILLs in {attempts} attempts; phases {counts}; start-up {startup:.1f}s, blocks "
          f"{work:.1f}s; equal to the uninterrupted run bit for bit; wall {time.time() - t0:.0f}s")
