"""Click options whose defaults come from a config dataclass: the dataclass is the one place a default is written.

``config_option(Cls, "field", "--flag", help=...)`` makes an option with ``default=None`` (so a command can tell
"not given" from "given": a resumed run or a preset keeps its own value) and a help text that ends in
``[default: X]`` read from ``Cls.field``. :func:`given` turns the parsed options back into field values.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from iagcn.device import DEVICE_CHOICES


def field_default(cls: Any, name: str) -> Any:
    """The default of dataclass field ``name`` of ``cls`` (KeyError-free: a typo is a programming error).

    ``cls`` may be an instance: the default a command really starts from (train's preset + recipe) is its value."""
    if not isinstance(cls, type):
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise TypeError(f"{type(cls).__name__} has no field {name!r}")
        return getattr(cls, name)
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise TypeError(f"{cls.__name__}.{name} has no default")
    raise TypeError(f"{cls.__name__} has no field {name!r}")


def default_text(value: Any) -> str:
    """How a default reads in --help: tuples comma-joined, booleans as flags say them, None as 'none'."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    if value is None:
        return "none"
    return str(value)


def config_option(cls: Any, name: str, *decls: str, help: str, none_means: str | None = None,
                  **kwargs: Any) -> Callable:
    """A click option for field ``name`` of ``cls``: default None, help ending in ``[default: <field default>]``.

    ``cls``: the config dataclass, or an instance of it whose values are the command's real defaults.

    ``none_means``: for fields whose default is None, what None stands for (e.g. "the backbone's size").
    Flags (``is_flag=True``) are declared with default None too, so that "not given" stays visible.
    """
    value = field_default(cls, name)
    shown = none_means if (value is None and none_means) else default_text(value)
    decls = decls or ("--" + name.replace("_", "-"),)
    return click.option(*decls, name, default=None, help=f"{help} [default: {shown}]", **kwargs)


def device_option(cls: Any, name: str = "device", *, what: str) -> Callable:
    """``--device`` for field ``name`` of ``cls``: the one vocabulary of iagcn.device."""
    return config_option(cls, name, "--device", help=f"Device for {what}: {DEVICE_CHOICES}.", metavar="DEVICE")


def given(**options: Any) -> dict[str, Any]:
    """The options that were given (not None): the field values they set."""
    return {k: v for k, v in options.items() if v is not None}
