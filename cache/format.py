"""Read one feature-cache file (one dataset split, one extraction config); cache/writer.py writes it.

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
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from iagcn.errors import UserError
from iagcn.cache.schema import COMPATIBILITY_ATTRS, FORMAT_VERSION, REQUIRED_ATTRS, ROW_FIELDS, validate_contents


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
            check_storage(self._h5, where=f"cache {self.path}", file_bytes=self.path.stat().st_size)
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


def check_storage(h5: h5py.File, *, where: str, file_bytes: int) -> None:
    """Refuse, before anything is read, a file whose data is not stored inside it, or declares more than it holds.

    Walks every link and object of the file: an external or soft link, a virtual dataset, a dataset with external
    raw storage (each would make iagcn read another file: ``info`` reported the bytes of a system file as
    features), a filtered (compressed) dataset (the writer never compresses), or a dataset whose declared
    shape needs more bytes than the whole file has (a 36 KB file declaring 400M rows) is one ``UserError``.
    """
    seen: set = set()

    def walk(group: h5py.Group, prefix: str) -> None:
        for key in group:
            name = f"{prefix}{key}"
            link = group.get(key, getlink=True)
            if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else link.path
                raise UserError(f"{where}: {name} is a link to {target}, not data stored in the file (iagcn never "
                                f"writes links); re-extract it")
            obj = group[key]
            if obj.id in seen:
                continue
            seen.add(obj.id)
            if isinstance(obj, h5py.Group):
                walk(obj, name + "/")
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(obj, name, where=where, file_bytes=file_bytes)

    walk(h5, "/")


def _check_dataset(ds: h5py.Dataset, name: str, *, where: str, file_bytes: int) -> None:
    if ds.is_virtual:
        raise UserError(f"{where}: dataset {name} is a virtual dataset that reads other files, not data stored "
                        f"in the file; re-extract it")
    plist = ds.id.get_create_plist()
    if plist.get_external_count() > 0:
        other = plist.get_external(0)[0].decode(errors="replace")
        raise UserError(f"{where}: dataset {name} keeps its data in another file ({other}), not in the cache; "
                        f"re-extract it")
    if plist.get_nfilters() > 0:
        raise UserError(f"{where}: dataset {name} is compressed or filtered (iagcn writes uncompressed caches); "
                        f"re-extract it")
    declared = math.prod(ds.shape) * ds.id.get_type().get_size() if ds.shape else 0
    if declared > file_bytes:
        raise UserError(f"{where}: dataset {name} declares shape {ds.shape} ({declared:,} bytes) but the file has "
                        f"only {file_bytes:,} bytes (truncated, or not written by iagcn); re-extract it")


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
