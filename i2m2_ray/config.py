"""Typed configs loaded from YAML with dotted ``key=value`` overrides, checked before any work starts.

Unknown keys, keys given twice, wrong types, non-finite numbers and values outside a field's
declared range are errors naming the dotted key, so a typo never silently falls back to a default.

Each dataclass field declares its range once, in its metadata, and ``from_dict`` / ``check_fields``
check it for every config class alike (cross-field rules stay in each class's ``validate``):

    ``ge`` / ``gt`` / ``le`` / ``lt``  numeric bounds (inclusive / exclusive); for a list or mapping,
                                       every item / value is checked
    ``path``: True                     a filesystem path: ``~`` is expanded (every item / value too)
    ``hint``: str                      added to the range error, e.g. ``"-1 = unlimited"``
    ``flag``: str                      the name errors use instead of the key (a CLI flag such as ``--val-size``)

e.g. ``lr: float = field(default=0.01, metadata={"gt": 0})``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from i2m2_ray.errors import ConfigError

T = TypeVar("T")
INT_LIMIT = 2**63  # every integer must fit in 64 bits (torch, numpy and Arrow take no more)
MERGE_TAG = "tag:yaml.org,2002:merge"


@functools.cache
def _loader_class() -> type:
    import yaml  # lazy: models and the in-process loop import this module without needing yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last)."""

        source = "<yaml>"
        lines = True

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable key: SafeLoader reports it itself
                    continue
                if duplicate:
                    where = f"{self.source}:{key_node.start_mark.line + 1}" if self.lines else self.source
                    raise ConfigError(f"{where}: duplicate key {key!r}")
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def safe_load(text: str, source: str, lines: bool = True) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys, naming ``source`` (and the line)."""
    loader = _loader_class()(text)
    loader.source, loader.lines = source, lines
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a malformed file fails naming the file and line."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = safe_load(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML ({problem})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"{path}: unreadable config file ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``a.b=1`` strings into a nested dict; values are parsed as YAML scalars."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = safe_load(raw, f"override {item!r}", lines=False) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Merge ``extra`` into a copy of ``base``; nested mappings merge, everything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_finite(value: Any, where: str, parents: tuple[int, ...] = ()) -> Any:
    """Untyped values (``Any``) still may not hide an inf or NaN anywhere inside."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    if isinstance(value, (dict, list, tuple)):
        if id(value) in parents:  # a YAML alias inside itself
            raise ConfigError(f"{where}: a value may not contain itself")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            _check_finite(v, f"{where}.{k}" if isinstance(value, dict) else f"{where}[{k}]", (*parents, id(value)))
    return value


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    return out


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return _check_finite(value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):  # an instance built in code: check it like a mapping
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(annotation, value, where)
    if origin is typing.Literal:
        if isinstance(value, bool) or value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        val_type = args[1] if len(args) == 2 else Any
        return {str(k): _check_type(v, val_type, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        return _to_float(value, where)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{where}: {value} does not fit in 64 bits")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _range_text(meta: typing.Mapping[str, Any]) -> str | None:
    low = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    high = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return None


def _in_range(value: float, meta: typing.Mapping[str, Any]) -> bool:
    return (("ge" not in meta or value >= meta["ge"]) and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"]) and ("lt" not in meta or value < meta["lt"]))


def _apply_meta(value: Any, meta: typing.Mapping[str, Any], where: str, optional: bool) -> Any:
    """Check one value against its field's declared range; expand ``~`` in paths."""
    if value is None or not meta:
        return value
    if isinstance(value, list):
        return [_apply_meta(v, meta, f"{where}[{i}]", False) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _apply_meta(v, meta, f"{where}.{k}", False) for k, v in value.items()}
    if meta.get("path") and isinstance(value, str) and value:
        return os.path.expanduser(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not _in_range(value, meta):
        text = _range_text(meta)
        hint = f" ({meta['hint']})" if "hint" in meta else ""
        raise ConfigError(f"{where}: must be {text}{' or null' if optional else ''}{hint}, got {value}")
    return value


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _checked_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Type- and range-checked constructor arguments for dataclass ``cls``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{_join(where, key)}' (known here: {known})")
    kwargs = {}
    for name, f in fields.items():
        path = f.metadata.get("flag") or _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: missing (required)")
            continue
        value = _check_type(data[name], hints[name], path)
        optional = type(None) in typing.get_args(hints[name]) and "flag" not in f.metadata  # a flag has no null
        kwargs[name] = _apply_meta(value, f.metadata, path, optional)
    return kwargs


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with their dotted path."""
    obj = cls(**_checked_fields(cls, data, where))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def check_fields(obj: Any, where: str = "") -> None:
    """Type and range checks for a config dataclass built in code (a CLI's flags), as ``from_dict`` does."""
    _checked_fields(type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}, where)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict view of a config dataclass (for saving next to results)."""
    return dataclasses.asdict(obj)


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a resolved config atomically (resume and report read it back)."""
    import yaml

    from i2m2_ray.fsutil import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
