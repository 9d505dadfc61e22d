"""The one device resolver of every command (extract, train, sweep, eval, predict, explain).

Vocabulary of ``--device``: ``auto`` (the first CUDA device when one is visible, else the CPU), ``cpu``,
``cuda`` (the current CUDA device, index 0 unless CUDA_VISIBLE_DEVICES says otherwise) and ``cuda:k``.
Every caller moves the model *and* its batches to the ``torch.device`` returned here.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from iagcn.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto | cpu | cuda[:k]"
_PATTERN = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def resolve_device(name: "str | torch.device", *, option: str = "--device") -> "torch.device":
    """``name`` (auto | cpu | cuda | cuda:k, or a torch.device) -> the torch.device to run on.

    Refused with a one-line UserError naming ``option``: malformed names, ``cpu:k``/``auto:k``, CUDA when
    torch sees no CUDA device, and ``cuda:k`` beyond the visible devices.
    """
    import torch

    text = str(name).strip().lower()
    m = _PATTERN.fullmatch(text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UserError(f"{option} {name}: unknown device; use {DEVICE_CHOICES}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if kind == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if available else torch.device("cpu")
    if not available:
        raise UserError(f"{option} {name}: CUDA is not available here (torch sees no CUDA device); "
                        f"use {option} cpu or {option} auto")
    count = torch.cuda.device_count()
    k = torch.cuda.current_device() if index is None else int(index)
    if k >= count:
        raise UserError(f"{option} {name}: there {'is' if count == 1 else 'are'} {count} visible CUDA device(s) "
                        f"(cuda:0 .. cuda:{count - 1}); choose one of them")
    return torch.device("cuda", k)
