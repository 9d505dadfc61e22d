"""Checks shared by every stage: value ranges of config fields, unique ids, user text files.

* :class:`Range` / :func:`check_ranges`: each frozen config dataclass (``TrainConfig``, ``ExtractConfig``,
  ``EvalConfig``, the synth options) keeps a table ``{field: Range(...)}`` next to it and checks it in
  ``__post_init__``, so a config that makes no sense cannot even be built: a negative seed, ``lr_gamma=-1``,
  ``tau=nan``, ``eval_batch_size=0`` ... are refused before any file is read or any epoch runs.
  :func:`check_table_covers` lets a test prove that every field has an entry.
* :func:`require_unique`: duplicate image ids (or class names) are refused wherever a list of them is read.
* :func:`check_numpy_file`: a user's ``.npy`` / ``.npz`` is checked before ``np.load`` reads it: every array's
  declared shape against the bytes it holds, and every ``.npz`` member's expansion (a 3 MB zip bomb took 3.2 GB).
* :func:`read_user_text`: user text files (split files, CSVs, class lists) are read as UTF-8 with a leading
  byte-order mark stripped, so it never leaks into the first id or class name.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from iagcn.errors import UserError


@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric config field (bounds inclusive unless ``*_open``).

    ``none_ok``: None is allowed (an "unset / default" value). ``each``: the field is a tuple and every element
    must be in range; ``min_len`` is then the least number of elements. Every float must be finite unless
    ``finite=False``. Non-numeric fields (choices, paths) use ``Range(kind="any")``: their check lives elsewhere
    (a Literal type, a file lookup) and the entry only records that the field was considered.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none_ok: bool = False
    each: bool = False
    min_len: int = 1
    finite: bool = True
    kind: str = "number"          # "number" | "any"
    note: str = ""                # the unit or meaning shown in the message (e.g. "0 = torch default")

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            text = "a finite number"
        return text + (f" ({self.note})" if self.note else "")

    def problem(self, value: Any) -> str | None:
        """None when ``value`` is allowed, else a phrase saying what is wrong."""
        if self.kind == "any":
            return None
        if value is None:
            return None if self.none_ok else f"must be {self.describe()}, not None"
        if self.each:
            if not isinstance(value, (tuple, list)):
                return f"must be a list of numbers {self.describe()}"
            if len(value) < self.min_len:
                return f"needs at least {self.min_len} value(s)"
            for v in value:
                bad = dataclasses.replace(self, each=False).problem(v)
                if bad:
                    return f"value {v!r} {bad}"
            return None
        if _is_bool(value) or not isinstance(value, numbers.Real):
            return f"must be a number {self.describe()}, not {value!r}"
        if not math.isfinite(float(value)):
            if self.finite:
                return f"must be a finite number {self.describe()}, not {value}"
            return None
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return f"must be {self.describe()}"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return f"must be {self.describe()}"
        return None


ANY = Range(kind="any")


def check_ranges(cfg: Any, table: Mapping[str, Range], *, where: str, option_names: Mapping[str, str] | None = None,
                 hint: str = "fix the option or --set value") -> None:
    """Refuse (one UserError) the first field of ``cfg`` whose value is outside its Range.

    ``option_names`` maps a field to the command-line option that sets it (``num_threads`` -> ``--threads``), so the
    message names what the user typed; the field name is always given too.
    """
    option_names = option_names or {}
    for f in dataclasses.fields(cfg):
        rng = table.get(f.name)
        if rng is None:
            continue
        value = getattr(cfg, f.name)
        bad = rng.problem(value)
        if bad:
            opt = option_names.get(f.name)
            raise UserError(f"{where}: {f.name}={_show(value)}{f' (option {opt})' if opt else ''} {bad}; {hint}")


def check_types(cfg: Any, *, where: str, hint: str = "fix the option or --set value") -> None:
    """Refuse a field whose value does not have its annotated type (a config.json edited by hand, a recorded config
    of another version): bool, int, float (an int is accepted), str, Literal choices, tuple[int, ...], Optional."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        bad = _type_problem(value, hints.get(f.name, Any))
        if bad:
            raise UserError(f"{where}: {f.name}={value!r} {bad}; {hint}")


def _type_problem(value: Any, hint: Any) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, a) for a in args]
        return None if any(p is None for p in problems) else f"must be one of {', '.join(_name(a) for a in args)}"
    if hint is type(None):
        return None if value is None else "must be None"
    if origin is typing.Literal:
        return None if value in args and type(value) in {type(a) for a in args} else \
            f"must be one of {', '.join(map(str, args))}"
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return f"must be a list ({_name(hint)})"
        inner = args[0] if args else Any
        for v in value:
            bad = _type_problem(v, inner)
            if bad:
                return f"element {v!r} {bad}"
        return None
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:  # numbers.Integral: Python and NumPy integers, never bools
        return None if isinstance(value, numbers.Integral) and not _is_bool(value) else "must be an integer"
    if hint is float:
        return None if isinstance(value, numbers.Real) and not _is_bool(value) else "must be a number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    return None


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _name(hint: Any) -> str:
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def check_values(values: Mapping[str, Any], table: Mapping[str, Range], *, where: str,
                 option_names: Mapping[str, str] | None = None, hint: str = "fix the option") -> None:
    """:func:`check_ranges` for plain keyword values (options that have no dataclass, e.g. ``iagcn synth``)."""
    option_names = option_names or {}
    for name, value in values.items():
        rng = table.get(name)
        bad = rng.problem(value) if rng is not None else None
        if bad:
            opt = option_names.get(name, name)
            raise UserError(f"{where}: {opt} {_show(value)} {bad}; {hint}")


def check_table_covers(cls: type, table: Mapping[str, Range]) -> list[str]:
    """Fields of dataclass ``cls`` without an entry in ``table`` (a test asserts this is empty)."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in table]


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) if value else "(empty)"
    return str(value)


def require_unique(items: Sequence[str], *, what: str, where: str, fix: str = "each must appear once") -> None:
    """Refuse a list with repeated entries: ``<where>: duplicate <what> 'x' (positions i and j; k repeats); fix``."""
    if len(set(items)) == len(items):
        return
    seen: dict[str, int] = {}
    for k, item in enumerate(items):
        if item in seen:
            extra = len(items) - len(set(items))
            raise UserError(f"{where}: duplicate {what} {item!r} (positions {seen[item]} and {k}; {extra} repeated "
                            f"entr{'y' if extra == 1 else 'ies'}); {fix}")
        seen[item] = k


BOM = "\ufeff"


def strip_bom(text: str) -> str:
    """``text`` without a leading UTF-8 byte-order mark (Excel and Notepad write one)."""
    return text[1:] if text.startswith(BOM) else text


def read_user_text(path: str | os.PathLike, *, what: str) -> str:
    """A user's text file as UTF-8, a leading byte-order mark removed; unreadable or non-UTF-8 -> UserError."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    except OSError as e:
        raise UserError(f"{what} {path}: cannot read ({e.strerror or e})") from e


def unique_list(items: Iterable[str]) -> list[str]:
    """``items`` in order with repeats removed."""
    return list(dict.fromkeys(items))


#: an .npz member may expand freely up to this size; above it, at most NPZ_MAX_RATIO times its compressed size
NPZ_FREE_BYTES = 64 << 20
NPZ_MAX_RATIO = 50


def check_numpy_file(path: str | os.PathLike, *, where: str) -> None:
    """Refuse, before ``np.load`` allocates anything, a ``.npy`` / ``.npz`` whose arrays would cost far more memory
    than the file's size: an ``.npz`` member that expands more than NPZ_MAX_RATIO times past NPZ_FREE_BYTES (a zip
    bomb), or an array header that declares more bytes than follow it. One UserError naming ``where``.

    A file that is not an .npy/.npz at all is left to ``np.load`` (the caller's own message)."""
    import zipfile

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
        if magic.startswith(b"PK"):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.file_size > NPZ_FREE_BYTES and info.file_size > NPZ_MAX_RATIO * max(1, info.compress_size):
                        raise UserError(f"{where}: member {info.filename!r} expands from {info.compress_size:,} to "
                                        f"{info.file_size:,} bytes (over {NPZ_MAX_RATIO}x: a zip bomb?); save the "
                                        f"arrays with numpy.savez")
                    with z.open(info) as member:
                        _check_npy_header(member, info.file_size, where=f"{where}: member {info.filename!r}")
        elif magic == b"\x93NUMPY":
            with open(path, "rb") as fh:
                _check_npy_header(fh, path.stat().st_size, where=where)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError):
        return                                  # unreadable: np.load reports it with the caller's message


def _check_npy_header(fh: Any, nbytes: int, *, where: str) -> None:
    import numpy as np
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(fh)
    reader = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}.get(version)
    if reader is None:
        return
    shape, _, dtype = reader(fh)
    if dtype.hasobject:
        return                                  # np.load(allow_pickle=False) refuses it
    declared = math.prod(shape) * dtype.itemsize
    held = nbytes - fh.tell()
    if declared > held:
        raise UserError(f"{where}: its header declares shape {shape} {np.dtype(dtype).name} ({declared:,} bytes) "
                        f"but only {max(held, 0):,} bytes follow; the file is damaged, save it again with numpy")
