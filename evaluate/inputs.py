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
    scores_are: str | None = None   # what an npz says its scores are (``scores_are``, as `iagcn eval` saves it)


#: the arrays an ``.npz`` may hold, per role: the required matrix first, then the optional keys. Anything else is
#: refused (a file without ``scores`` once had its ``labels`` read as scores: mAP 100).
NPZ_KEYS: dict[str, tuple[str, ...]] = {"scores": ("scores", "image_ids", "class_names", "scores_are"),
                                        "labels": ("labels", "image_ids", "class_names")}


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
        if key != "labels":  # a cache holds labels, never scores
            raise UserError(f"{option} {path}: a cache holds labels, not {key}; pass it as --targets (or --cache) "
                            f"and the model's {key} as .npy / .npz / .csv")
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
        allowed = NPZ_KEYS[key]
        unknown = [k for k in keys if k not in allowed]
        if key not in keys or unknown:
            problem = f"unexpected {unknown}" if unknown else f"no {key!r}"
            raise UserError(f"{option} {path}: .npz holds arrays {keys} ({problem}); {option} reads only "
                            f"{key!r} (required), {', '.join(repr(k) for k in allowed[1:])}: save it as "
                            f"np.savez(..., {key}=...)")
        ids = [str(i) for i in loaded["image_ids"]] if "image_ids" in keys else None
        names = [str(c) for c in loaded["class_names"]] if "class_names" in keys else None
        said = str(loaded["scores_are"]) if "scores_are" in keys else None
        return ScoreTable(np.asarray(loaded[key]), ids, names, path, scores_are=said)


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

    Columns are matched by class NAME: a file's own names (a CSV header, an npz ``class_names``, a cache's class
    list), else ``--class-names``, which names the columns of every file that carries none (in that file's
    column order) and must list the same classes as any file that names its own. Only when neither file is
    named (and no ``--class-names``) are the columns taken in order (``class00 ...``). One named file and one
    unnamed one without ``--class-names`` is refused: nothing says which column is which class. The order is the
    targets' names. Any disagreement (another class set, a different count) is refused.
    """
    C_s, C_t = s.shape[1], t.shape[1]
    if given is not None:
        for label, names, path in (("--scores", scores.class_names, scores.path),
                                   ("--targets", targets.class_names, targets.path)):
            if names is not None and set(names) != set(given):
                _refuse_class_sets("--class-names", given, f"{label} {path}", names)
    s_names = scores.class_names or given      # --class-names names the columns of a file that carries none
    t_names = targets.class_names or given
    if s_names is None and t_names is None:
        if C_s != C_t:
            raise UserError(f"--scores {scores.path} has {C_s} columns but --targets {targets.path} has {C_t}; "
                            "give one column per class in both")
        return s, t, [f"class{c:02d}" for c in range(C_s)]
    if s_names is None or t_names is None:
        (label, table, C), (other_label, other) = ((("--scores", scores, C_s), ("--targets", targets))
                                                    if s_names is None else
                                                    (("--targets", targets, C_t), ("--scores", scores)))
        named = list(other.class_names or [])
        raise UserError(f"{label} {table.path}: its {C} columns carry no class names, so they cannot be matched to "
                        f"the {len(named)} classes {other_label} {other.path.name} names ({_preview(named)}); pass "
                        "--class-names in that file's column order, or save the names with it (CSV header / npz "
                        "class_names)")
    if set(s_names) != set(t_names):
        _refuse_class_sets(f"--scores {scores.path}", s_names, f"--targets {targets.path}", t_names)

    def reorder(values: np.ndarray, names: list[str], label: str, path: Path) -> np.ndarray:
        if values.shape[1] != len(names):  # only --class-names can disagree here (a file's own names are checked)
            raise UserError(f"{label} {path}: {values.shape[1]} columns for the {len(names)} classes of "
                            f"--class-names ({_preview(names)}); give one column per class")
        position = {c: k for k, c in enumerate(names)}
        return values[:, [position[c] for c in order]]

    order = list(t_names)
    return (reorder(s, list(s_names), "--scores", scores.path),
            reorder(t, list(t_names), "--targets", targets.path), order)


def _preview(names: Sequence[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (" ..." if len(names) > k else "")


def _refuse_class_sets(where: str, names: Sequence[str], ref_where: str, ref: Sequence[str]) -> None:
    missing = [c for c in ref if c not in names]
    extra = [c for c in names if c not in ref]
    raise UserError(f"{where}: its classes differ from those of {ref_where} ({len(names)} vs {len(ref)} names; "
                    f"missing {missing[:5]}, unexpected {extra[:5]}); score and label the same classes")


def cache_targets(cache_path: Path) -> ScoreTable:
    return read_matrix(cache_path, option="--cache", key="labels")


def rows_for_ids(table: ScoreTable, image_ids: Sequence[str], *, what: str) -> np.ndarray:
    """Rows of ``table`` (which carries image ids) for ``image_ids``, in that order."""
    index = {i: r for r, i in enumerate(table.image_ids or [])}
    missing = [i for i in image_ids if i not in index]
    if missing:
        raise UserError(f"{what}: {len(missing)} image id(s) not in {table.path} (first {missing[0]!r}); "
                        "use the cache the run was scored on")
    return table.values[np.array([index[i] for i in image_ids], dtype=np.int64)]
