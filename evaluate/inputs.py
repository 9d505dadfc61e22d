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
from iagcn.validation import check_numpy_file, read_user_text, require_unique


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
    text = read_user_text(path, what=option)  # UTF-8, a leading byte-order mark removed
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
    """Read scores or targets from .npy, .npz (``key``, optional ``image_ids``/``class_names``), .csv or a cache .h5.

    A file that names its image ids or classes must name each once (a repeated id would be counted twice)."""
    table = _read_matrix(Path(path), option=option, key=key)
    if table.values.ndim != 2:
        raise UserError(f"{option} {path}: expected a 2-D (images, classes) array, got shape {table.values.shape}")
    n, C = table.values.shape
    if table.image_ids is not None:
        if len(table.image_ids) != n:
            raise UserError(f"{option} {path}: {len(table.image_ids)} image ids for {n} rows; give one id per row")
        require_unique(table.image_ids, what="image id", where=f"{option} {path}",
                       fix="each image must appear once (a repeated image would be counted twice)")
    if table.class_names is not None:
        if len(table.class_names) != C:
            raise UserError(f"{option} {path}: {len(table.class_names)} class names for {C} columns; "
                            "give one name per column")
        require_unique(table.class_names, what="class name", where=f"{option} {path}")
    return table


def _read_matrix(path: Path, *, option: str, key: str) -> ScoreTable:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{option} {path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from iagcn.cache.format import FeatureCache

        with FeatureCache(path) as c:
            return ScoreTable(c.labels(), c.image_ids(), c.class_names, path)
    if suffix == ".csv":
        return read_csv_matrix(path, option=option)
    check_numpy_file(path, where=f"{option} {path}")     # sizes bounded before np.load allocates
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


def warn_rows_by_position(scores: ScoreTable, targets: ScoreTable) -> None:
    """Warn when only one of the files carries image ids: its rows were matched to the other's by position, an
    assumption the files cannot confirm (called once the inputs are accepted)."""
    if (scores.image_ids is None) != (targets.image_ids is None):
        named, unnamed = (scores, targets) if scores.image_ids is not None else (targets, scores)
        warnings.warn(f"{unnamed.path.name} carries no image ids: its rows are matched to {named.path.name}'s by "
                      f"position (save image_ids with both files to match them by id)", stacklevel=2)


def align_columns(scores: ScoreTable, targets: ScoreTable, s: np.ndarray, t: np.ndarray,
                  given: list[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Score and target columns for the same classes, in one order, with their names.

    Columns are matched by class NAME whenever the files name them (a CSV header, an npz ``class_names``, a
    cache's class list); only a file that names none is taken in column order. The order is the targets' own
    when they carry names, else ``--class-names``, else the scores', else ``class00 ...``. ``--class-names``
    names the columns of files that carry no names; with a file that does, it must list the same classes.
    Any disagreement (another class set, a different count) is refused.
    """
    C_s, C_t = s.shape[1], t.shape[1]
    order = targets.class_names or given or scores.class_names
    if order is None:
        if C_s != C_t:
            raise UserError(f"--scores {scores.path} has {C_s} columns but --targets {targets.path} has {C_t}; "
                            "give one column per class in both")
        return s, t, [f"class{c:02d}" for c in range(C_s)]
    order = list(order)
    for label, names, path in (("--class-names", given, None), ("--scores", scores.class_names, scores.path),
                               ("--targets", targets.class_names, targets.path)):
        if names is not None and set(names) != set(order):
            where = label if path is None else f"{label} {path}"
            missing = [c for c in order if c not in names]
            extra = [c for c in names if c not in order]
            raise UserError(f"{where}: its classes differ from the reference class list ({len(names)} vs "
                            f"{len(order)} names; missing {missing[:5]}, unexpected {extra[:5]}); "
                            "score and label the same classes")

    def reorder(values: np.ndarray, names: list[str] | None, label: str, path: Path) -> np.ndarray:
        if names is None:  # positional: the file's columns are the reference order
            if values.shape[1] != len(order):
                raise UserError(f"{label} {path}: {values.shape[1]} columns for {len(order)} classes "
                                f"({', '.join(order[:5])}{' ...' if len(order) > 5 else ''}); give one column "
                                "per class, or name the columns (CSV header / npz class_names)")
            return values
        position = {c: k for k, c in enumerate(names)}
        return values[:, [position[c] for c in order]]

    return (reorder(s, scores.class_names, "--scores", scores.path),
            reorder(t, targets.class_names, "--targets", targets.path), order)


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
