"""Read and write one feature-cache file (one dataset split, one extraction config).

Layout (all datasets uncompressed and contiguous, so a split reads into RAM at disk speed and
contiguous row blocks stream fast; see docs/cache.md):

=================  ==============  ==================================================
name               shape, dtype    meaning
=================  ==============  ==================================================
global             (n, D) f16      global feature x of each image
regions            (n, N, D) f16   ROI features X
boxes              (n, N, 4) f32   proposals x1 y1 x2 y2 in original image pixels
box_scores         (n, N) f32      proposer objectness
box_valid          (n, N) bool     False for padding boxes
labels             (n, C) i8       1 present, 0 absent, -1 ignore (VOC difficult-only)
image_ids          (n,) str        dataset image ids, in dataset order
image_sizes        (n, 2) i32      original height, width
label_embeddings   (C, E) f32      label-node inputs H0 (attribute ``source``)
=================  ==============  ==================================================

Every root attribute is stored as a JSON string and parsed with ``json.loads`` (never pickled).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from iagcn.errors import UserError
from iagcn.cache.schema import COMPATIBILITY_ATTRS, FORMAT_VERSION, REQUIRED_ATTRS, ROW_FIELDS, validate_contents
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


class FeatureCache:
    """Read-only view of one cache file; validates the format on open.

    Attributes:
        attrs: root attributes, JSON-parsed. class_names: the C axis order.
        num_images (n), num_rois (N), feature_dim (D), num_classes (C).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"cache {self.path} does not exist; run `iagcn extract` first or fix the path")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise UserError(f"cache {self.path} is not a readable HDF5 file (truncated or corrupt?): "
                            f"delete it and re-extract") from e
        try:
            self.attrs = self._parse_attrs()
            self._validate()
        except Exception:
            self._h5.close()
            raise

    def _parse_attrs(self) -> dict[str, Any]:
        out = {}
        for k, v in self._h5.attrs.items():
            if isinstance(v, bytes):
                v = v.decode()
            try:
                out[k] = json.loads(v)
            except (TypeError, json.JSONDecodeError) as e:
                raise UserError(f"cache {self.path}: attribute {k!r} is not JSON; the file was not written by iagcn") from e
        return out

    def _validate(self) -> None:
        """The cache contract (see the module docstring), checked on open: one UserError naming the file and
        the first problem. Features are checked for NaN/Inf later, when they are read (train.data)."""
        version = self.attrs.get("format_version")
        if version is None:
            raise UserError(f"cache {self.path} has no format_version attribute; it was not written by iagcn")
        if not isinstance(version, int) or isinstance(version, bool):
            raise UserError(f"cache {self.path}: format_version {version!r} is not an integer; it was not written by iagcn")
        if version > FORMAT_VERSION:
            raise UserError(f"cache {self.path} has format version {version}, newer than this iagcn "
                            f"understands ({FORMAT_VERSION}); upgrade iagcn")
        missing = [a for a in REQUIRED_ATTRS if a not in self.attrs]
        missing += [f for f in list(ROW_FIELDS) + ["label_embeddings"] if f not in self._h5]
        if missing:
            raise UserError(f"cache {self.path} lacks {', '.join(missing)}; re-extract it")
        self._labels, self._image_ids = validate_contents(self._h5, self.attrs, where=f"cache {self.path}")

    # -- shape facts --------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return list(self.attrs["class_names"])

    @property
    def num_images(self) -> int:
        return int(self._h5["global"].shape[0])

    @property
    def num_rois(self) -> int:
        return int(self._h5["regions"].shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self._h5["global"].shape[1])

    @property
    def num_classes(self) -> int:
        return int(self._h5["labels"].shape[1])

    def dataset(self, name: str) -> h5py.Dataset:
        return self._h5[name]

    def nbytes(self, names: Iterable[str]) -> int:
        return int(sum(self._h5[n].size * self._h5[n].dtype.itemsize for n in names))

    # -- reading --------------------------------------------------------------------------------
    def read(self, name: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one dataset (contiguous slice: fast)."""
        ds = self._h5[name]
        arr = ds[slice(start, stop)] if name != "label_embeddings" else ds[...]
        if name == "image_ids":
            arr = np.asarray([s.decode() if isinstance(s, bytes) else str(s) for s in arr], dtype=object)
        return arr

    def read_into(self, name: str, out: np.ndarray, start: int, stop: int) -> None:
        """Read rows ``start:stop`` of ``name`` straight into a preallocated array (no extra copy)."""
        self._h5[name].read_direct(out, source_sel=np.s_[start:stop])

    def image_ids(self) -> list[str]:
        """The image ids (validated unique on open)."""
        return list(self._image_ids)

    def labels(self) -> np.ndarray:
        """(n, C) int8 labels in {-1, 0, 1} (validated on open); a fresh copy."""
        return self._labels.copy()

    def label_embeddings(self) -> tuple[np.ndarray, str]:
        ds = self._h5["label_embeddings"]
        return ds[...].astype(np.float32), json.loads(ds.attrs.get("source", '"unknown"'))

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of what identifies this cache's content without reading its features: the
        extraction config hash, the backbone and proposer weight hashes, the class names, image ids, labels and
        label embeddings. Two caches with the same fingerprint hold the same images, labels and extraction."""
        import hashlib

        h = hashlib.sha256()
        ident = {k: self.attrs.get(k) for k in ("extract_config_hash", "backbone_weights_sha256",
                                                 "proposer_weights_sha256", "class_names", "num_rois", "feature_dim")}
        h.update(json.dumps(ident, sort_keys=True).encode())
        h.update("\n".join(self._image_ids).encode())
        h.update(np.ascontiguousarray(self._labels).tobytes())
        h.update(np.ascontiguousarray(self._h5["label_embeddings"][...]).tobytes())
        return h.hexdigest()[:16]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, n={self.num_images}, N={self.num_rois}, D={self.feature_dim}, C={self.num_classes})"


def check_compatible(train: FeatureCache, other: FeatureCache, *, role: str = "validation") -> None:
    """Refuse, with one line, a pair of caches that disagree on what must match for training + evaluation."""
    for key in COMPATIBILITY_ATTRS:
        a, b = train.attrs.get(key), other.attrs.get(key)
        if a != b:
            if key == "class_names":
                diff = f"{len(a)} vs {len(b)} classes" if len(a) != len(b) else \
                    f"first difference {next((x, y) for x, y in zip(a, b) if x != y)}"
                detail = diff
            else:
                detail = f"{a!r} vs {b!r}"
            if key == "class_names":
                raise UserError(f"train cache {train.path} and {role} cache {other.path} disagree on {key} "
                                f"({detail}); extract both with the same --classes (a CSV dataset: extract the "
                                f"{role} split with `--classes-from {train.path}`)")
            raise UserError(f"train cache {train.path} and {role} cache {other.path} disagree on {key} "
                            f"({detail}); extract both with the same config")


def iter_row_blocks(n: int, block: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, block):
        yield s, min(n, s + block)
