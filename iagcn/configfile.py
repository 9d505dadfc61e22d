"""``--config FILE`` for ``iagcn train`` and ``iagcn sweep``: TrainConfig values from a YAML or JSON file.

Two shapes are accepted:

* a flat mapping of TrainConfig fields (``lr: 0.02``, ``gcn_widths: [512, 1024]``, ``preset: mlgcn``), optionally
  with ``train_cache`` / ``eval_cache`` paths;
* a run's own ``config.json`` (the record ``iagcn train`` writes): its ``config`` mapping gives the fields and its
  ``train_cache`` / ``eval_cache`` entries the cache paths; the record's other keys (git commit, class names, ...)
  describe that run and are not read.

Precedence, lowest first: the preset's values < the recipe's (the file's ``recipe:`` unless ``--recipe`` is given)
< the file < options on the command line < ``--set`` (``iagcn.train.cli.resolve_config``; docs/training.md,
"Resolution order"). The resolved config is what the run saves in its config.json, as without a file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iagcn.errors import UserError

#: keys of a flat file that are not TrainConfig fields but name the caches (val_cache: the old name of eval_cache)
CACHE_KEYS = {"train_cache": "train_cache", "eval_cache": "eval_cache", "val_cache": "eval_cache"}


@dataclass(frozen=True)
class ConfigFile:
    """What a ``--config`` file sets: TrainConfig field values and (optionally) the two cache paths."""

    path: str
    fields: dict[str, Any]
    train_cache: str | None = None
    eval_cache: str | None = None
    is_run_record: bool = False


#: a config file is a few hundred bytes; anything far larger is not one (and would cost memory to parse)
MAX_CONFIG_BYTES = 1 << 20


def _yaml_loader():
    """A safe YAML loader that refuses aliases (``*x``: a 368-byte file of nested aliases expanded to 593 MB) and
    a mapping naming one key twice (the later value would silently win)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"alias *{event.anchor} (anchors and aliases are not "
                                                  f"accepted in a config: write the values out)", event.start_mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, typing.Hashable):
                    continue                                   # SafeLoader refuses unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def read_mapping(path: str | os.PathLike, *, option: str = "--config") -> dict[str, Any]:
    """The top-level mapping of a YAML (.yaml/.yml) or JSON file (other suffixes: JSON, else YAML).

    Refused, one line each: a file over MAX_CONFIG_BYTES, YAML aliases, a key given twice in one mapping."""
    from iagcn.configio import loads_json_unique

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file; pass a YAML or JSON config (e.g. a run's config.json)")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"{option} {path}: {size:,} bytes, more than a config can be ({MAX_CONFIG_BYTES:,}); pass "
                        f"a YAML or JSON config of TrainConfig fields")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{option} {path}: cannot read it ({e})") from e
    import yaml

    def load_yaml(text: str) -> Any:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 -- a SafeLoader subclass

    try:
        if path.suffix.lower() == ".json":
            data = loads_json_unique(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            data = load_yaml(text)
        else:
            try:
                data = loads_json_unique(text)
            except ValueError:
                data = load_yaml(text)
    except (ValueError, RecursionError, yaml.YAMLError) as e:
        first = " ".join(str(e).split())[:160] if not isinstance(e, RecursionError) else "nested too deeply"
        raise UserError(f"{option} {path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML/JSON'} "
                        f"({first}); fix the file") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{option} {path}: expected a mapping of field: value at the top level, got "
                        f"{type(data).__name__}")
    return data


def _cache_path(value: Any, key: str, path: Path, option: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):                      # a run record: {"path": ..., "extract_config_hash": ...}
        value = value.get("path")
    if not isinstance(value, str) or not value:
        raise UserError(f"{option} {path}: {key} must be a cache file path")
    return value


def coerce_fields(cls: type, fields: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Field values of ``cls`` from a file: names checked, lists -> tuples, ints where floats go, text parsed
    like ``--set`` where the field is not text; a value of the wrong kind is a one-line error naming it."""
    from iagcn.configio import _parse_value

    hints = typing.get_type_hints(cls)
    unknown = sorted(k for k in fields if k not in hints)
    if unknown:
        listed = ", ".join(str(k)[:40] for k in unknown[:10])
        listed += f" ... ({len(unknown) - 10} more)" if len(unknown) > 10 else ""
        raise UserError(f"{source}: unknown field(s) {listed}; known fields: {', '.join(sorted(hints))}")
    out: dict[str, Any] = {}
    for key, value in fields.items():
        hint = hints[key]
        if isinstance(value, str) and not _is_textual(hint):
            try:
                value = _parse_value(value, hint, key)            # "0.01" for a float, "512,1024" for a tuple
            except UserError:
                raise UserError(f"{source}: {key}: {_short(value)} is not {_hint_name(hint)}") from None
        elif isinstance(value, list) and "tuple" in str(hint):
            value = tuple(value)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = _matches(value, hint)
        if not ok:
            raise UserError(f"{source}: {key}: {_short(value)} is not {_hint_name(hint)}")
        out[key] = value
    return out


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (an error line stays short whatever the file holds)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = r.maxlong = limit
    text = " ".join(r.repr(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_union(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    return origin is typing.Union or str(origin) == "<class 'types.UnionType'>" or type(hint).__name__ == "UnionType"


def _is_textual(hint: Any) -> bool:
    """Whether text is a valid value as it is (str, a Literal of strings, or a union with str)."""
    if hint is str:
        return True
    if typing.get_origin(hint) is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(hint))
    return _is_union(hint) and any(_is_textual(a) for a in typing.get_args(hint))


def _hint_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    name = getattr(hint, "__name__", str(hint))
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}.get(name, f"a {name}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if _is_union(hint):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple:
        inner = args[0] if args else Any
        return isinstance(value, tuple) and all(_matches(v, inner) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def load_config_file(path: str | os.PathLike, cls: type, *, option: str = "--config") -> ConfigFile:
    """Read ``path`` (a flat YAML/JSON mapping, or a run's config.json) into :class:`ConfigFile` for ``cls``."""
    path = Path(path)
    data = read_mapping(path, option=option)
    source = f"{option} {path}"
    if isinstance(data.get("config"), dict):           # a run record written by `iagcn train`
        fields = dict(data["config"])
        train = _cache_path(data.get("train_cache"), "train_cache", path, option)
        evaluation = _cache_path(data.get("eval_cache"), "eval_cache", path, option)
        return ConfigFile(str(path), coerce_fields(cls, fields, source=source), train, evaluation, is_run_record=True)
    caches = {CACHE_KEYS[k]: _cache_path(v, k, path, option) for k, v in data.items() if k in CACHE_KEYS}
    fields = {k: v for k, v in data.items() if k not in CACHE_KEYS}
    return ConfigFile(str(path), coerce_fields(cls, fields, source=source), caches.get("train_cache"),
                      caches.get("eval_cache"))


def preset_fields(presets: dict[str, dict[str, Any]]) -> set[str]:
    """The fields some preset sets (the model's structure): a file's values for them follow its own preset."""
    return {k for values in presets.values() for k in values} | {"preset"}


def fields_for_preset(file: ConfigFile, preset: str, presets: dict[str, dict[str, Any]]) -> tuple[dict[str, Any],
                                                                                                  list[str]]:
    """(the file's fields to apply on top of ``preset``, the names left out).

    When the file names another preset (a run's config.json of ``iagcn``, used for an ``mlgcn`` run or a sweep),
    its structure fields (what the presets set) are left out so that ``preset`` keeps its own structure; the
    recipe (lr, epochs, widths that no preset sets, ...) is taken.
    """
    file_preset = file.fields.get("preset")
    if file_preset is None or file_preset == preset:
        return dict(file.fields), []
    structural = preset_fields(presets)
    kept = {k: v for k, v in file.fields.items() if k not in structural}
    return kept, sorted(k for k in file.fields if k in structural)


def apply_file(cfg: Any, fields: dict[str, Any]) -> Any:
    """``cfg`` with the file's field values (dataclasses.replace; the config's own checks run)."""
    return dataclasses.replace(cfg, **fields)
