"""Stage three's inputs: score and target matrices from .npy / .npz / .csv / cache files, matched by image id."""
from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from iagcn.errors import UserError


@dataclass
class ScoreTable:
    """A (n, C) matrix read from a file, with the image ids / class names the file carried (or None)."""

    values: np.ndarray
    image_ids: list[str] | None
    class_names: list[str] | None
    path: Path


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_csv_matrix(path: Path, *, option: str) -> ScoreTable:
    """A CSV of numbers; an optional header row of class names and an optional first column of image ids.

    The header is recognised when its cells (after the id column) are not all numbers; the id column when the
    first cells of the data rows are not all numbers or the header names it ``image_id`` / ``id``.
    """
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {path}: cannot read ({e}); pass a .npy, .npz or .csv file") from e
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise UserError(f"{option} {path}: empty file; write one row per image")
    header = None
    first = rows[0][0].strip()
    if not all(_is_number(c) for c in rows[0][1:]) or not first or first.lower() in ("image_id", "id", "image") or \
            (not _is_number(first) and len(rows) > 1 and _is_number(rows[1][0])):
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    if not rows:
        raise UserError(f"{option} {path}: a header but no data rows")
    has_ids = (header is not None and header[0].lower() in ("image_id", "id", "image", "")) or \
        not all(_is_number(r[0]) for r in rows)
    ids = [r[0].strip() for r in rows] if has_ids else None
    body = [r[1:] if has_ids else r for r in rows]
    widths = {len(r) for r in body}
    if len(widths) != 1:
        raise UserError(f"{option} {path}: rows have different numbers of columns {sorted(widths)}; "
                        "write one value per class on every row")
    try:
        values = np.array([[float(c) for c in r] for r in body], dtype=np.float64)
    except ValueError as e:
        raise UserError(f"{option} {path}: non-numeric value ({e}); only the header and id column may be text") from e
    names = None
    if header is not None:
        names = header[1:] if has_ids else header
        if len(names) != values.shape[1]:
            raise UserError(f"{option} {path}: header names {len(names)} columns but rows hold {values.shape[1]}")
    return ScoreTable(values, ids, names, path)


def read_matrix(path: str | os.PathLike, *, option: str, key: str = "scores") -> ScoreTable:
    """Read scores or targets from .npy, .npz (``key``, optional ``image_ids``/``class_names``), .csv or a cache .h5."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{option} {path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from iagcn.cache.format import FeatureCache

        with FeatureCache(path) as c:
            return ScoreTable(c.read("labels").astype(np.int8), c.image_ids(), c.class_names, path)
    if suffix == ".csv":
        return read_csv_matrix(path, option=option)
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{option} {path}: not a readable .npy/.npz file ({type(e).__name__}); "
                        "pass .npy, .npz or .csv") from e
    if isinstance(loaded, np.ndarray):
        return ScoreTable(loaded, None, None, path)
    with loaded:
        keys = list(loaded.keys())
        name = key if key in keys else ("labels" if "labels" in keys else (keys[0] if len(keys) == 1 else None))
        if name is None:
            raise UserError(f"{option} {path}: .npz has arrays {keys} but no {key!r}; save it as {key}=...")
        ids = [str(i) for i in loaded["image_ids"]] if "image_ids" in keys else None
        names = [str(c) for c in loaded["class_names"]] if "class_names" in keys else None
        return ScoreTable(np.asarray(loaded[name]), ids, names, path)


def parse_class_names(text: str | None) -> list[str] | None:
    """``--class-names``: a file of names (one a line) or a comma-separated list."""
    if not text:
        return None
    p = Path(text)
    names = p.read_text().splitlines() if p.is_file() else text.split(",")
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError(f"--class-names {text}: no names found; give a comma-separated list or a file of names")
    return names


def align_by_ids(scores: ScoreTable, targets: ScoreTable) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Rows of scores and targets for the same images: matched by image id when both carry ids, else by order."""
    s, t = scores.values, targets.values
    if scores.image_ids is not None and targets.image_ids is not None:
        index = {i: r for r, i in enumerate(targets.image_ids)}
        missing = [i for i in scores.image_ids if i not in index]
        if missing:
            raise UserError(f"--scores {scores.path}: {len(missing)} image id(s) not in the targets "
                            f"(first: {missing[0]!r}); score the same images as --targets/--cache")
        rows = np.array([index[i] for i in scores.image_ids], dtype=np.int64)
        if len(rows) != len(targets.image_ids):
            warnings.warn(f"evaluating {len(rows)} of the {len(targets.image_ids)} target images (those scored)",
                          stacklevel=2)
        return s, t[rows], list(scores.image_ids)
    if s.shape[0] != t.shape[0]:
        raise UserError(f"--scores {scores.path} has {s.shape[0]} rows but --targets {targets.path} has "
                        f"{t.shape[0]}; pass one row per image, in the same order")
    return s, t, scores.image_ids or targets.image_ids


def resolve_class_names(given: list[str] | None, *candidates: list[str] | None, n_classes: int) -> list[str]:
    """The class names: explicit ``--class-names``, else the first file that carried them, else ``class00`` ..."""
    for names in (given, *candidates):
        if names is not None:
            if len(names) != n_classes:
                raise UserError(f"--class-names: {len(names)} names for {n_classes} score columns; "
                                "give one name per column, in column order")
            return list(names)
    return [f"class{c:02d}" for c in range(n_classes)]




def cache_targets(cache_path: Path) -> ScoreTable:
    return read_matrix(cache_path, option="--cache")


def rows_for_ids(table: ScoreTable, image_ids: Sequence[str], *, what: str) -> np.ndarray:
    """Rows of ``table`` (which carries image ids) for ``image_ids``, in that order."""
    index = {i: r for r, i in enumerate(table.image_ids or [])}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise UserError(f"{what}: {len(missing)} image id(s) not in {table.path} (first {missing[0]!r}); "
                        "use the cache the run was scored on")
    return table.values[np.array([index[i] for i in image_ids], dtype=np.int64)]
