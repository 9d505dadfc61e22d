"""Write one feature-cache file: preallocated, under a temporary name, committed (checked complete, fsynced,
renamed) only when every row is written. The layout and its checks are in :mod:`iagcn.cache.schema`; reading is
:mod:`iagcn.cache.format`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from iagcn.errors import UserError
from iagcn.cache.schema import FORMAT_VERSION, ROW_FIELDS, validate_contents
from iagcn.fsutil import fsync_dir, git_commit, no_space_reason, remove_stale_temporaries, tmp_name_for
from iagcn.processes import raise_if_interrupted


def _pwrite(fd: int, data, offset: int) -> int:
    if hasattr(os, "pwrite"):
        return os.pwrite(fd, data, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: no pwrite
    return os.write(fd, data)


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: no pread
    return os.read(fd, size)


class _FirstErrorFile:
    """The file a cache is written through (h5py's ``fileobj`` driver): the first failed write is recorded and
    every later write is dropped.

    Why: HDF5 reports most write failures (disk full, EFBIG past ``ulimit -f``) from inside h5py object
    destructors, where Python prints them ("Exception ignored in ...", one per object: hundreds) and drops them;
    a file left with failed writes then crashes the interpreter at exit. Here HDF5 never sees a failure: the
    writer raises the recorded ``OSError`` (errno intact) at its next step (:meth:`CacheWriter.check`), and
    the temporary, whose later writes were dropped, is deleted. Unbuffered positional I/O (``os.pwrite``), so a
    seek never flushes a failing buffer. The file's end as HDF5 sees it (``_eof``) counts dropped writes too, and
    reads of dropped bytes return zeros, so HDF5's own consistency checks keep passing until the writer stops.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        self._pos = 0
        self._eof = 0
        self.error: OSError | None = None

    def _record(self, e: OSError) -> None:
        if self.error is None:
            self.error = e

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += _pwrite(self._fd, view[done:], self._pos + done)
            except OSError as e:
                self._record(e)
        self._pos += len(view)
        self._eof = max(self._eof, self._pos)
        return len(view)

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = os.preadv(self._fd, [view], self._pos) if hasattr(os, "preadv") else self._read_copy(view)  # not on Windows
        upto = max(n, min(len(view), self._eof - self._pos))  # bytes whose writes were dropped read as zeros
        view[n:upto] = bytes(upto - n)
        self._pos += upto
        return upto

    def _read_copy(self, view: memoryview) -> int:
        data = _pread(self._fd, len(view), self._pos)
        view[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self._eof - self._pos)
        buffer = bytearray(size)
        return bytes(buffer[:self.readinto(buffer)])

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._eof}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        self._eof = size
        if self.error is None:
            try:
                os.ftruncate(self._fd, size)
            except OSError as e:
                self._record(e)
        return size

    def flush(self) -> None:
        pass   # unbuffered

    def fsync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            self._record(e)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class CacheWriter:
    """Preallocate a cache under a temporary name, fill rows by index, then commit atomically.

    Use as a context manager: leaving the block normally commits (after checking that every row was
    written), an exception deletes the temporary file and the final path is never touched.

    Args:
        path: final file name.
        num_images: n. num_rois: N. feature_dim: D. num_classes: C. embedding_dim: E.
        attrs: root attributes (JSON-serialisable values), see REQUIRED_ATTRS.
    """

    def __init__(self, path: str | os.PathLike, *, num_images: int, num_rois: int, feature_dim: int,
                 num_classes: int, embedding_dim: int, attrs: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        self.tmp = tmp_name_for(self.path)
        self.n = num_images
        dims = {"N": num_rois, "D": feature_dim, "C": num_classes}
        try:
            self._file = _FirstErrorFile(self.tmp)
            self._h5 = h5py.File(self._file, "w")
        except OSError as e:
            with contextlib.suppress(Exception):
                self._file.close()
            with contextlib.suppress(OSError):
                self.tmp.unlink()
            raise UserError(f"cannot create cache {self.path} ({' '.join(str(e).split())[:120]}); "
                            f"check that its folder is writable and has free space") from e
        self._written = np.zeros(num_images, dtype=bool)
        self._embeddings_set = False
        try:
            for name, (shape, dtype) in ROW_FIELDS.items():
                full = (num_images,) + tuple(dims[s] if isinstance(s, str) else s for s in shape)
                self._h5.create_dataset(name, shape=full, dtype=dtype)
            self._h5.create_dataset("label_embeddings", shape=(num_classes, embedding_dim), dtype=np.float32)
            base = {"format_version": FORMAT_VERSION, "git_commit": git_commit(),
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "num_rois": num_rois, "feature_dim": feature_dim}
            base.update(attrs)
            for k, v in base.items():
                self._h5.attrs[k] = json.dumps(v)
            self.check()
        except BaseException:
            self.abort()
            raise

    def check(self) -> None:
        """Raise the first write error of the file (ENOSPC, EFBIG, EIO), which HDF5 itself never saw."""
        if self._file.error is not None:
            raise self._file.error

    def write_rows(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Write ``rows[name][i]`` to row ``start + i`` of every per-image dataset."""
        missing = set(ROW_FIELDS) - set(rows)
        if missing:
            raise ValueError(f"write_rows: missing fields {sorted(missing)}")
        count = len(rows["global"])
        stop = start + count
        if start < 0 or stop > self.n:
            raise ValueError(f"write_rows: rows {start}:{stop} outside 0:{self.n}")
        for name in ROW_FIELDS:
            value = rows[name]
            if name == "image_ids":
                value = np.asarray([str(v) for v in value], dtype=object)
            self._h5[name][start:stop] = value
        self.check()
        self._written[start:stop] = True

    def set_label_embeddings(self, embeddings: np.ndarray, *, source: str) -> None:
        self._h5["label_embeddings"][...] = np.asarray(embeddings, dtype=np.float32)  # (C, E)
        self._h5["label_embeddings"].attrs["source"] = json.dumps(source)
        self.check()
        self._embeddings_set = True

    def commit(self) -> Path:
        try:
            return self._commit()
        except BaseException as e:
            self.abort()
            reason = no_space_reason(e) if isinstance(e, Exception) else None
            if reason:
                raise UserError(f"{reason} while writing cache {self.path} (its temporary was removed; "
                                f"the previous file, if any, is untouched); free space and rerun") from e
            raise

    def _commit(self) -> Path:
        if not self._written.all():
            missing = int((~self._written).sum())
            self.abort()
            raise RuntimeError(f"cache {self.path}: {missing} rows were never written; nothing was committed")
        if not self._embeddings_set:
            self.abort()
            raise RuntimeError(f"cache {self.path}: label embeddings were never set; nothing was committed")
        raise_if_interrupted()
        self._h5.flush()
        self.check()
        try:  # never commit a cache that the reader would refuse (duplicate ids, labels out of range, ...)
            validate_contents(self._h5, {k: json.loads(v) for k, v in self._h5.attrs.items()},
                              where=f"cache {self.path} (not written)")
        except UserError:
            self.abort()
            raise
        self._h5.close()
        self._file.fsync()
        self._file.close()
        self.check()
        raise_if_interrupted()  # a Ctrl-C swallowed by h5py (flush, close) still stops the commit
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
            reason = no_space_reason(exc) if isinstance(exc, Exception) and not isinstance(exc, UserError) else None
            if reason:
                raise UserError(f"{reason} while writing cache {self.path} (its temporary was removed; "
                                f"the previous file, if any, is untouched); free space and rerun") from exc
