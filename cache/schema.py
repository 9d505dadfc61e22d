"""What a cache file must hold: the format version, per-image datasets, required attributes, and the check of
every dataset against them (:func:`validate_contents`, run by ``FeatureCache`` on open). The layout table is in
``cache/format.py``'s docstring; reading and writing are there too."""
from __future__ import annotations

import json

from typing import Any

import h5py
import numpy as np

from iagcn.errors import UserError

FORMAT_VERSION = 1

#: per-image datasets: name -> (shape after n, dtype); ``N``/``D``/``C`` are filled in per file
ROW_FIELDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "global": (("D",), np.float16),
    "regions": (("N", "D"), np.float16),
    "boxes": (("N", 4), np.float32),
    "box_scores": (("N",), np.float32),
    "box_valid": (("N",), np.bool_),
    "labels": (("C",), np.int8),
    "image_ids": ((), h5py.string_dtype("utf-8")),
    "image_sizes": ((2,), np.int32),
}

#: root attributes every cache carries (the writer fills format_version, git_commit and created)
REQUIRED_ATTRS = (
    "format_version", "dataset", "split", "class_names", "extract_config", "extract_config_hash",
    "backbone", "backbone_weights", "backbone_weights_sha256", "proposer", "proposer_weights_sha256",
    "num_rois", "feature_dim", "image_size", "git_commit", "created",
)

#: attributes two caches must agree on before one trains and the other evaluates
COMPATIBILITY_ATTRS = ("class_names", "feature_dim", "num_rois", "backbone", "backbone_weights_sha256", "image_size")


def _fail(where: str, problem: str, fix: str = "re-extract it") -> UserError:
    return UserError(f"{where}: {problem}; {fix}")


def validate_contents(h5: h5py.File | h5py.Group, attrs: dict[str, Any], *, where: str
                      ) -> tuple[np.ndarray, list[str]]:
    """Check every dataset of a cache against the contract; return (labels (n, C) int8, image ids).

    Checked: the dtype and rank of every dataset (ROW_FIELDS, label_embeddings (C, E) float32), that n, N, D and
    C agree across datasets and with the attributes (num_rois, feature_dim, class_names), that class names are
    unique non-empty strings, labels are int8 in {-1, 0, 1}, image ids are unique non-empty strings, and label
    embeddings are finite. Raises UserError naming ``where`` and the first problem found.
    """
    dims: dict[str, tuple[int, str]] = {}    # symbol -> (size, the dataset that fixed it)
    n = None
    for name, (shape, dtype) in ROW_FIELDS.items():
        ds = h5[name]
        if not isinstance(ds, h5py.Dataset):
            raise _fail(where, f"{name} is not a dataset")
        if name == "image_ids":
            if h5py.check_string_dtype(ds.dtype) is None:
                raise _fail(where, f"dataset image_ids has dtype {ds.dtype}, expected strings")
        elif ds.dtype != np.dtype(dtype):
            raise _fail(where, f"dataset {name} has dtype {ds.dtype}, expected {np.dtype(dtype)}")
        if ds.ndim != 1 + len(shape):
            raise _fail(where, f"dataset {name} has shape {ds.shape}, expected {1 + len(shape)} dimensions "
                               f"(n, {', '.join(map(str, shape))})".replace(", )", ")"))
        if n is None:
            n = ds.shape[0]
        elif ds.shape[0] != n:
            raise _fail(where, f"dataset {name} has {ds.shape[0]} rows, expected {n} (as global)")
        for axis, sym in enumerate(shape, start=1):
            size = ds.shape[axis]
            if isinstance(sym, int):
                if size != sym:
                    raise _fail(where, f"dataset {name} has shape {ds.shape}; axis {axis} must be {sym}")
            elif sym in dims and dims[sym][0] != size:
                raise _fail(where, f"dataset {name} has {sym}={size} (shape {ds.shape}) but {dims[sym][1]} has "
                                   f"{sym}={dims[sym][0]}")
            else:
                dims.setdefault(sym, (size, name))
    emb = h5["label_embeddings"]
    if not isinstance(emb, h5py.Dataset) or emb.ndim != 2 or emb.dtype != np.float32:
        raise _fail(where, f"label_embeddings has shape {getattr(emb, 'shape', None)} dtype "
                           f"{getattr(emb, 'dtype', None)}, expected (C, E) float32")
    if "source" in emb.attrs:
        try:
            json.loads(emb.attrs["source"])
        except (TypeError, json.JSONDecodeError):
            raise _fail(where, "label_embeddings attribute 'source' is not JSON; the file was not written by iagcn",
                        "re-extract it") from None
    C = dims["C"][0]
    if emb.shape[0] != C or emb.shape[1] < 1:
        raise _fail(where, f"label_embeddings has shape {emb.shape}, expected ({C}, E) with one row per class")
    names = attrs.get("class_names")
    if not isinstance(names, list) or not all(isinstance(c, str) and c.strip() for c in names):
        raise _fail(where, "class_names is not a list of non-empty strings")
    if len(names) != C:
        raise _fail(where, f"class_names has {len(names)} entries but labels has {C} columns")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise _fail(where, f"class_names lists {', '.join(map(repr, dup[:5]))} more than once")
    for key, sym in (("num_rois", "N"), ("feature_dim", "D")):
        if attrs.get(key) != dims[sym][0]:
            raise _fail(where, f"attribute {key}={attrs.get(key)!r} but the datasets have {sym}={dims[sym][0]}")
    if C < 1 or dims["D"][0] < 1 or dims["N"][0] < 1:
        raise _fail(where, f"empty axis: C={C}, D={dims['D'][0]}, N={dims['N'][0]}")
    labels = h5["labels"][...]                                                          # (n, C) int8
    bad = (labels < -1) | (labels > 1)
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        raise _fail(where, f"labels must be 1 (present), 0 (absent) or -1 (ignore), found {int(labels[r, c])} "
                           f"at row {r}, class {names[c]!r} ({int(bad.sum())} such entries)")
    ids = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["image_ids"][...]]
    if any(not i for i in ids):
        raise _fail(where, f"image id at row {next(k for k, i in enumerate(ids) if not i)} is empty")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for k, i in enumerate(ids):
            if i in seen:
                count = len(ids) - len(set(ids))
                raise _fail(where, f"duplicate image id {i!r} (rows {seen[i]} and {k}; {count} duplicate row(s)): "
                                   f"every image must appear once")
            seen[i] = k
    values = emb[...]
    if not np.isfinite(values).all():
        row = int(np.nonzero(~np.isfinite(values).all(1))[0][0])
        raise _fail(where, f"label_embeddings hold NaN/Inf (first in the row of class {names[row]!r})",
                    "re-extract it with finite --label-embeddings")
    return labels, ids
