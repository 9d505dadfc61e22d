"""Synthetic caches for the benchmarks, written once under a scratch folder (never the repo) and reused.

The folder is ``$IAGCN_BENCH_DIR`` (default ``/tmp/iagcn-bench``). A cache is reused when its manifest
(the arguments of :func:`cache.fake.write_fake_cache` and the generator's source hash) matches.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from iagcn.fsutil import write_json_atomic


def bench_dir() -> Path:
    d = Path(os.environ.get("IAGCN_BENCH_DIR", "/tmp/iagcn-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _generator_hash() -> str:
    from iagcn.cache import fake, format as cache_format

    h = hashlib.sha256()
    for mod in (fake, cache_format):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def fake_cache(name: str, *, n: int, num_rois: int = 40, dim: int = 2048, num_classes: int = 20, seed: int = 0,
               split: str = "train", log=print) -> Path:
    """Path of a fake cache with these shapes (written now unless an identical one exists)."""
    from iagcn.cache.fake import write_fake_cache

    path = bench_dir() / f"{name}.h5"
    manifest = {"n": n, "num_rois": num_rois, "dim": dim, "num_classes": num_classes, "seed": seed, "split": split,
                "generator": _generator_hash()}
    man = path.with_suffix(".json")
    if path.exists() and man.exists() and json.loads(man.read_text()) == manifest:
        return path
    t0 = time.perf_counter()
    write_fake_cache(path, n=n, num_rois=num_rois, dim=dim, num_classes=num_classes, seed=seed, split=split,
                     prototypes_seed=0, dataset="bench")
    write_json_atomic(man, manifest, what="bench cache manifest")
    log(f"  wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    return path


def drop_from_page_cache(path: Path) -> bool:
    """Ask the kernel to evict a file's clean pages (POSIX_FADV_DONTNEED), so the next read goes to disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)
