"""JSON values from NumPy results: the one NaN-to-None cleaner every JSON writer uses (core layer)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_or_none(x: Any) -> float | None:
    """A finite number as a Python float; None for None, NaN and +-Inf (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def to_json(x: Any) -> Any:
    """``x`` with NumPy scalars/arrays turned into Python values and non-finite floats into None, recursively.

    Arrays become flat lists of floats; dicts keep their keys; tuples become lists; bools stay bools.
    """
    if isinstance(x, dict):
        return {k: to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    if isinstance(x, np.ndarray):
        return [finite_or_none(v) for v in x.astype(float).ravel()]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return finite_or_none(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return x
