"""Filesystem helpers: atomic outputs, exclusive locks, hashing, provenance.

Every output file goes through :func:`atomic_path` so that it exists under its final name only
when complete; a crash leaves at most a temporary next to it, which the next run removes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from iagcn.errors import UserError

TMP_MARK = ".tmp-"


def tmp_name_for(final: Path) -> Path:
    """A unique temporary sibling of ``final`` (same directory, so rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}{TMP_MARK}", dir=final.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync and rename it to ``final``; on failure delete it.

    The previous complete file at ``final`` (if any) stays untouched until the rename.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {what} {final}: {e.strerror}; choose a writable location") from e
    if not os.access(final.parent, os.W_OK):
        raise UserError(f"{what} folder {final.parent} is not writable; choose another --out")
    tmp = tmp_name_for(final)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while writing {what} {final}; free space and rerun (nothing was replaced)") from e
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(final: str | os.PathLike, text: str, *, what: str = "output") -> None:
    with atomic_path(final, what=what) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | os.PathLike, obj: object, *, what: str = "output") -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", what=what)


def remove_stale_temporaries(final: Path) -> None:
    """Delete temporaries that a killed run left next to ``final``."""
    for p in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            p.unlink()


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, *, what: str = "output") -> Iterator[None]:
    """Refuse a second process writing ``target`` at the same time (an flock on ``target.lock``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fh = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise UserError(
                f"another process is writing {what} {target} (lock {lock_path} is held); wait for it or choose another output"
            ) from e
        yield
    finally:
        fh.close()


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit() -> str:
    """The project's git commit (with ``+dirty`` when the tree has changes), or ``unknown`` outside a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
