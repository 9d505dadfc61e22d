"""Label embeddings H0 (C, E): the inputs of the label GCN (paper Eq. 5-6).

Specs:
  ``glove:PATH``  a GloVe text file (``word v1 ... vE`` per line). A class name of several words is
                  the average of its words' vectors, as the paper says; VOC's compound names are split
                  first (``pottedplant`` -> ``potted plant``, ``diningtable`` -> ``dining table``,
                  ``tvmonitor`` -> ``tv monitor``); COCO names with spaces (``traffic light``) and
                  names with ``_``/``-`` are split on them. Words are looked up lower-case (an exact
                  lower-case entry wins over a cased one, e.g. in the cased 840B vectors).
  ``onehot``      the C x C identity (no semantic prior).
  ``npy:PATH``    a NumPy array of shape (C, E) in the dataset's class order.

The returned source string records what was used (with the file's sha256 for files); the cache
stores it next to the array.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from iagcn.errors import UserError
from iagcn.fsutil import sha256_file
from iagcn.validation import check_numpy_file

COMPOUND_NAMES: dict[str, str] = {
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv monitor",
}
"""Class names written as one word in the VOC devkit, split into their words for GloVe lookup."""


def class_name_words(name: str) -> list[str]:
    """The lower-case words of a class name: ``'tvmonitor'`` -> ``['tv', 'monitor']``."""
    name = COMPOUND_NAMES.get(name.lower(), name)
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w]
    if not words:
        raise UserError(f"class name {name!r} has no words to look up; rename the class")
    return words


def _trailing_numbers(fields: list[str]) -> int:
    """How many of the last fields parse as numbers (at most all but the first, which is the word)."""
    count = 0
    for f in reversed(fields[1:]):
        try:
            float(f)
        except ValueError:
            break
        count += 1
    return count


#: the longest GloVe line read (characters): 300 values take ~3,000; a far longer "line" is not GloVe
MAX_GLOVE_LINE = 1 << 20


def read_glove_vectors(path: Path, words: set[str]) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of ``words`` from a GloVe text file, and the file's dimension E.

    Every line must have the dimension of the first line (a word may itself contain spaces, as in
    the 840B file, so the vector is the last E fields); a short line is an error naming it.
    """
    found: dict[str, np.ndarray] = {}
    exact: set[str] = set()
    dim = None
    try:
        with open(path, encoding="utf-8-sig", errors="strict") as fh:  # a byte-order mark is stripped
            for line_no, line in enumerate(iter(lambda: fh.readline(MAX_GLOVE_LINE + 1), ""), start=1):
                if len(line) > MAX_GLOVE_LINE:            # read no further: a 240 MB first line took 5 GB
                    raise UserError(f"{path} line {line_no}: longer than {MAX_GLOVE_LINE:,} characters; not a "
                                    "GloVe text file ('word v1 ... vE' per line)")
                line = line.rstrip("\n").rstrip(" \r")
                if not line:
                    continue
                if dim is None:
                    dim = _trailing_numbers(line.split(" "))
                    if dim < 1:
                        raise UserError(f"{path} line 1: no vector values; expected 'word v1 ... vE' GloVe lines")
                if line.count(" ") < dim:
                    raise UserError(f"{path} line {line_no}: {line.count(' ')} values, expected {dim} "
                                    "(the first line's dimension); the file is ragged or truncated")
                word = line[: line.index(" ")] if line.count(" ") == dim else line.rsplit(" ", dim)[0]
                key = word.lower()
                if key not in words or key in exact:
                    continue
                if key in found and word != key:
                    continue  # keep the first cased entry until an exact lower-case one appears
                try:
                    vec = np.array(line.rsplit(" ", dim)[1:], dtype=np.float32)   # (E,)
                except ValueError as e:
                    raise UserError(f"{path} line {line_no}: non-numeric vector value ({e})") from e
                found[key] = vec
                if word == key:
                    exact.add(key)
    except FileNotFoundError as e:
        raise UserError(f"GloVe file {path} not found; pass --label-embeddings glove:PATH to an existing file") from e
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file ({e}); expected a GloVe .txt file") from e
    if dim is None:
        raise UserError(f"{path}: empty GloVe file")
    return found, dim


def glove_embeddings(path: Path, class_names: list[str]) -> np.ndarray:
    """(C, E) float32: each class the mean of its words' GloVe vectors; all missing words in one error."""
    words_of = [class_name_words(c) for c in class_names]
    vectors, dim = read_glove_vectors(path, {w for ws in words_of for w in ws})
    missing = [f"{w!r} (class {c!r})" for c, ws in zip(class_names, words_of) for w in ws if w not in vectors]
    if missing:
        raise UserError(f"{path}: {len(missing)} words not in the GloVe vocabulary: {', '.join(missing)}; "
                        "rename those classes or use --label-embeddings npy:PATH / onehot")
    out = np.stack([np.mean([vectors[w] for w in ws], axis=0) for ws in words_of])  # (C, E)
    return out.astype(np.float32)


def load_label_embeddings(spec: str, class_names: list[str]) -> tuple[np.ndarray, str]:
    """(C, E) float32 label embeddings for ``class_names`` and a source string naming what was used."""
    C = len(class_names)
    kind, _, arg = spec.partition(":")
    if kind == "onehot" and not arg:
        return np.eye(C, dtype=np.float32), "onehot"                                   # (C, C)
    if kind == "glove" and arg:
        path = Path(arg)
        emb = glove_embeddings(path, class_names)                                      # (C, E)
        return emb, f"glove:{os.path.abspath(path)} sha256={sha256_file(path)} dim={emb.shape[1]}"
    if kind == "npy" and arg:
        path = Path(arg)
        check_numpy_file(path, where=str(path))
        try:
            arr = np.load(path, allow_pickle=False)
        except FileNotFoundError as e:
            raise UserError(f"label-embedding file {path} not found; pass npy:PATH to an existing .npy") from e
        except (ValueError, OSError) as e:
            raise UserError(f"{path}: not a NumPy .npy array ({e})") from e
        if arr.ndim != 2 or arr.shape[0] != C:
            raise UserError(f"{path}: label embeddings have shape {arr.shape}, expected ({C}, E) "
                            f"for the {C} classes in dataset order")
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise UserError(f"{path}: label embeddings must be finite numbers")
        return arr.astype(np.float32), f"npy:{os.path.abspath(path)} sha256={sha256_file(path)}"
    raise UserError(f"--label-embeddings {spec!r} is not valid; use glove:PATH, onehot or npy:PATH")
