"""Frozen dataclass configs: JSON round-trip, a stable hash, and `--set key=value` overrides."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

from iagcn.errors import UserError

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_to_json(cfg: Any) -> str:
    return json.dumps(config_to_dict(cfg), sort_keys=True, default=str)


def config_hash(cfg: Any) -> str:
    """sha256 (first 16 hex digits) of the config's canonical JSON."""
    return hashlib.sha256(config_to_json(cfg).encode()).hexdigest()[:16]


class DuplicateKeyError(ValueError):
    """A JSON/YAML mapping names one key twice (the later value would silently win)."""


def _refuse_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key!r} appears twice in one mapping")
        out[key] = value
    return out


def loads_json_unique(text: str) -> Any:
    """``json.loads`` that refuses a mapping naming a key twice (DuplicateKeyError, a ValueError)."""
    return json.loads(text, object_pairs_hook=_refuse_duplicate_pairs)


def config_from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{source}: unknown field(s) {', '.join(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and "tuple" in str(hints.get(k, "")):
            v = tuple(v)
        kwargs[k] = v
    if source.startswith("preset "):
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except UserError as e:  # a recorded config (config.json, a checkpoint) that is out of range: name the file
        raise UserError(f"{source}: {e}") from e


def _parse_value(text: str, hint: Any, key: str, option: str = "--set") -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:        # Optional[X], Union[X, None], X | None
        non_none = [a for a in args if a is not type(None)]
        # "null" always means None; "none" too unless the field holds strings, where "none" is a value
        # (e.g. ExtractConfig.proposer_weights=none: no weights, while None: the proposer's default)
        nulls = ("null",) if str in non_none else ("none", "null")
        if type(None) in args and text.lower() in nulls:
            return None
        if len(non_none) != 1:
            raise UserError(f"{option} {key}={text}: a field of type {hint} cannot be set from the command line")
        return _parse_value(text, non_none[0], key, option)
    if origin is typing.Literal:
        if text not in [str(a) for a in args]:
            raise UserError(f"{option} {key}={text}: choose one of {', '.join(map(str, args))}")
        return type(args[0])(text)
    if origin in (tuple, list):
        inner = args[0] if args else str
        parts = [p for p in text.replace(",", " ").split() if p]
        vals = [_parse_value(p, inner, key, option) for p in parts]
        return tuple(vals) if origin is tuple else vals
    try:
        if hint is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
    except ValueError:
        raise UserError(f"{option} {key}={text}: expected a {hint.__name__}") from None
    return text


def parse_field_value(cls: type, key: str, text: str, *, option: str = "--set") -> Any:
    """The value ``text`` gives field ``key`` of dataclass ``cls``, parsed as ``--set key=text`` parses it
    (messages name ``option``)."""
    hints = typing.get_type_hints(cls)
    if key not in hints:
        raise UserError(f"{option} {key}: unknown field; known fields: {', '.join(sorted(hints))}")
    return _parse_value(text.strip(), hints[key], key, option)


def apply_overrides(cfg: T, pairs: typing.Iterable[str]) -> T:
    """Apply ``key=value`` strings (from ``--set``) to a frozen dataclass, with type checking."""
    hints = typing.get_type_hints(type(cfg))
    changes: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set {pair!r}: expected key=value")
        key, text = pair.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=3, cutoff=0.6)
            if close:
                raise UserError(f"--set {key}: unknown field of {type(cfg).__name__}; did you mean "
                                f"{' or '.join(close)}?")
            known = ", ".join(sorted(hints))
            raise UserError(f"--set {key}: unknown field; known fields: {known}")
        changes[key] = _parse_value(text.strip(), hints[key], key)
    return dataclasses.replace(cfg, **changes)
