"""Filesystem helpers: atomic outputs, exclusive locks, hashing, provenance.

Every output file goes through :func:`atomic_path` so that it exists under its final name only
when complete; a crash leaves at most a temporary next to it, which the next run removes.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from iagcn.errors import UserError
from iagcn.processes import raise_if_interrupted

TMP_MARK = ".tmp-"

# -- what a Ctrl-C leaves behind ----------------------------------------------------------------------
_interrupt_hints: list[Callable[[], str]] = []
_interrupt_message: list[str] = []   # the message captured while a KeyboardInterrupt unwound the innermost hint


@contextlib.contextmanager
def interrupt_hint(hint: Callable[[], str]) -> Iterator[None]:
    """While the block runs, a Ctrl-C makes the CLI print ``hint()`` (one line: what was kept, how to resume).

    Nested hints: the innermost one speaks (e.g. a sweep's run inside the sweep). The message is computed
    when the interrupt passes through the block, so it counts exactly what was committed.
    """
    _interrupt_hints.append(hint)
    try:
        yield
    except KeyboardInterrupt:
        if not _interrupt_message:
            with contextlib.suppress(Exception):
                _interrupt_message.append(hint())
        raise
    finally:
        _interrupt_hints.remove(hint)


def take_interrupt_hint() -> str | None:
    """The message for the Ctrl-C being handled (then forgotten), or None when no hint was active."""
    if _interrupt_message:
        return _interrupt_message.pop()
    for hint in reversed(_interrupt_hints):
        with contextlib.suppress(Exception):
            return hint()
    return None


def reset_interrupt_hint() -> None:
    _interrupt_message.clear()


# -- disk full / unwritable ---------------------------------------------------------------------------
_NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full (quota exceeded)",
             errno.EFBIG: "file-size limit reached (EFBIG: raise `ulimit -f` or use a file system that allows larger "
                                      "files)"}
_NO_SPACE_TEXT = (("No space left on device", errno.ENOSPC), ("errno = 28", errno.ENOSPC),
                  ("Disk quota exceeded", errno.EDQUOT), ("errno = 122", errno.EDQUOT),
                  ("File too large", errno.EFBIG), ("errno = 27", errno.EFBIG))


def no_space_reason(e: BaseException) -> str | None:
    """``"disk full"`` (ENOSPC / EDQUOT) or the file-size limit (EFBIG) when ``e`` or its cause reports one, else None.

    torch.save and h5py wrap the OS error in RuntimeError / OSError text, so the message is checked too.
    """
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return _NO_SPACE[e.errno]
        text = str(e)
        for needle, code in _NO_SPACE_TEXT:
            if needle in text:
                return _NO_SPACE[code]
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def is_disk_full(e: BaseException) -> bool:
    """True when a write failed for lack of room: ENOSPC, EDQUOT, or EFBIG (a file-size limit is a full disk too)."""
    return no_space_reason(e) is not None


def check_writable_dir(folder: str | os.PathLike, *, what: str, option: str = "--out") -> Path:
    """Create ``folder`` if needed and make sure files can be created in it; else a one-line UserError."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{option}: cannot create the folder {folder} for {what} ({e.strerror}); "
                        f"choose a writable location") from e
    if not folder.is_dir():
        raise UserError(f"{option}: {folder} is not a folder; choose another location for {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option}: folder {folder} is not writable; choose another location for {what}")
    return folder


def check_can_create(folder: str | os.PathLike, *, what: str, option: str = "--out") -> None:
    """Like :func:`check_writable_dir` but creates nothing: the nearest existing ancestor must be a writable folder."""
    folder = Path(folder).absolute()
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{option}: {probe} is not a folder; choose another location for {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{option}: folder {probe} is not writable; choose another location for {what}")


def check_free_space(folder: str | os.PathLike, need_bytes: int, *, what: str) -> None:
    """Refuse up front when ``folder``'s file system has less than ``need_bytes`` free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need_bytes:
        raise UserError(f"{what} needs about {need_bytes / 2**30:.2f} GiB but {folder} has "
                        f"{free / 2**30:.2f} GiB free; free space or choose another location")


def tmp_name_for(final: Path) -> Path:
    """A unique temporary sibling of ``final`` (same directory, so rename is atomic): ``.<name>.tmp-<pid>-<random>``.

    The writer's pid in the name lets any later run remove the temporaries of writers that no longer exist
    (:func:`remove_dead_temporaries`), even without holding a lock.
    """
    fd, name = tempfile.mkstemp(prefix=f".{final.name}{TMP_MARK}{os.getpid()}-", dir=final.parent)
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _writer_pid(tmp: Path, final_name: str) -> int | None:
    rest = tmp.name[len(f".{final_name}{TMP_MARK}"):]
    pid = rest.split("-", 1)[0]
    return int(pid) if pid.isdigit() and "-" in rest else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # EPERM: alive, another user's
        return True
    return True


def remove_dead_temporaries(final: Path) -> None:
    """Delete temporaries next to ``final`` whose writer (the pid in their name) is dead on this machine.

    Safe without a lock: a live writer's temporary is kept. Temporaries without a pid (older iagcn) are left to
    :func:`remove_stale_temporaries`, which runs under the output's lock.
    """
    for p in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        pid = _writer_pid(p, final.name)
        if pid is not None and not _pid_alive(pid):
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, what: str = "output", disk_full_hint: str | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success fsync and rename it to ``final``; on failure delete it.

    The previous complete file at ``final`` (if any) stays untouched until the rename. ``disk_full_hint`` replaces
    the default advice of the one-line disk-full error.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {what} {final}: {e.strerror}; choose a writable location") from e
    if not os.access(final.parent, os.W_OK):
        raise UserError(f"{what} folder {final.parent} is not writable; choose another --out")
    remove_dead_temporaries(final)   # left by a killed writer of this file
    try:
        tmp = tmp_name_for(final)
    except OSError as e:
        raise UserError(f"cannot create a file next to {what} {final} ({e.strerror}); choose a writable location") from e
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            raise_if_interrupted()   # a Ctrl-C that a library swallowed still stops the rename
            os.replace(tmp, final)
            fsync_dir(final.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = no_space_reason(e) if isinstance(e, Exception) else None
        if reason:
            raise UserError(f"{reason} while writing {what} {final}; " + (disk_full_hint or
                            "free space and rerun (the previous file, if any, was not replaced)")) from e
        raise


def link_over(source: str | os.PathLike, final: str | os.PathLike, *, what: str = "output") -> bool:
    """Make ``final`` a hard link to ``source`` (one file on disk, two names), atomically: a linked temporary is
    renamed over ``final``. Later atomic writes of either name replace that name only. Returns False, ``final``
    untouched, where the file system has no hard links."""
    source, final = Path(source), Path(final)
    with contextlib.suppress(OSError):
        if os.path.samefile(source, final):
            return True
    try:
        with atomic_path(final, what=what) as tmp:
            os.link(source, tmp)
    except OSError:
        return False
    return True


def write_text_atomic(final: str | os.PathLike, text: str, *, what: str = "output") -> None:
    with atomic_path(final, what=what) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | os.PathLike, obj: object, *, what: str = "output") -> None:
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", what=what)


def remove_stale_temporaries(final: Path) -> None:
    """Delete every temporary next to ``final`` (call it holding ``final``'s lock: no live writer can own one)."""
    for p in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


# -- locks: one writer per output ---------------------------------------------------------------------
_held_locks: dict[str, tuple[int, int]] = {}   # lock file -> (st_dev, st_ino), while this process holds it


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, *, what: str = "output", inside: str | None = None) -> Iterator[None]:
    """Refuse a second process writing ``target`` at the same time (a ``filelock`` lock on ``.<target>.lock``, or
    with ``inside="run"`` on the folder ``target``'s own ``target/.run.lock``; messages name ``target``, the path
    the user gave).

    The OS lock (flock on POSIX, LockFileEx on Windows) dies with the process, so a killed writer never blocks
    the rerun. It is not inherited: a forked child (a DataLoader worker) closes its copy of the lock's file
    descriptor at fork time (flock locks belong to the open file description, which a fork shares), so a
    worker that outlives its parent cannot keep the lock.

    No empty lock file is left behind (POSIX): on release the holder unlinks ``.<target>.lock`` *while still
    holding it*, as the last step after the protected work, and only when the name still points at the file it
    locked; then it unlocks. A process that opened the old file before the unlink and locks it after the
    release finds it unlinked (filelock checks ``st_nlink`` after flock and does not count that as holding it)
    and tries once more, on a fresh file, so two holders never coexist; one that arrives after the unlink creates
    and locks a fresh file. A killed
    holder still leaves its (empty) file, which the next writer takes and removes. On Windows an open file
    cannot be unlinked: the file stays.
    """
    from filelock import FileLock, Timeout

    target = Path(target)
    lock_path = target / f".{inside}.lock" if inside else target.parent / f".{target.name}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            lock.acquire()   # once more: the holder released (and unlinked the file) between our open and flock
    except Timeout as e:
        raise UserError(f"another process is writing {what} {target} (lock {lock_path} is held); "
                        f"wait for it or choose another output") from e
    except OSError as e:
        raise UserError(f"cannot write {what} {target}: its lock file {lock_path} cannot be created "
                        f"({e.strerror or e}); "
                        f"choose a writable location") from e
    key = str(lock_path.absolute())
    held: tuple[int, int] | None = None
    try:
        st = os.stat(lock_path)
        held = _held_locks[key] = (st.st_dev, st.st_ino)
        yield
    finally:
        _held_locks.pop(key, None)
        if held is not None and os.name != "nt":
            with contextlib.suppress(OSError):
                now = os.lstat(lock_path)
                if (now.st_dev, now.st_ino) == held:
                    lock_path.unlink()           # still holding it: see the docstring
        lock.release()


def _close_inherited_locks() -> None:
    """In a forked child: close the descriptors of the parent's lock files, so the child never holds a lock."""
    if not _held_locks:
        return
    held = set(_held_locks.values())
    _held_locks.clear()
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        fds = [int(name) for name in os.listdir(fd_dir)]
    except OSError:
        return
    for fd in fds:
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in held:
            with contextlib.suppress(OSError):
                os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(source_dir: str | os.PathLike | None = None) -> str:
    """The git commit of the source tree this code runs from (with ``+dirty`` when its tracked files changed).

    ``source_dir`` (default: the folder holding the ``iagcn`` package) must be the top level of a git checkout;
    otherwise ``unknown``. So an installed copy in a venv's site-packages records ``unknown``, never the commit of
    whatever repository the venv or the working folder sits in. ``GIT_DIR``-style variables are ignored.
    """
    here = Path(source_dir).resolve() if source_dir is not None else Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5, env=env)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != here:
            return "unknown"
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
