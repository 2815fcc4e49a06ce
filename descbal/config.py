"""Typed configuration: dataclasses are the schema, TOML gives values, ``--set`` overrides.

``load_config(cls, toml_text_or_path, overrides)`` builds a (nested) dataclass from a TOML
document whose tables mirror the dataclass fields, then applies ``section.key=value``
overrides. Values are parsed as TOML literals (``3``, ``1e-3``, ``true``, ``"hynet"``,
``[0.9, 0.99]``), and a bare word is taken as a string; nothing is ever ``eval``-ed. Unknown
keys and wrong types are errors naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from descbal.errors import BadInputError, DataMissingError

T = TypeVar("T")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word, e.g. model.name=hynet


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise BadInputError(f"config key {key!r} must be a table")
        return from_dict(tp, value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except BadInputError:
                continue
        raise BadInputError(f"config key {key!r}: {value!r} does not fit {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise BadInputError(f"config key {key!r} must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise BadInputError(f"config key {key!r} needs {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise BadInputError(f"config key {key!r} must be a list")
        (elem,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, elem, key) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise BadInputError(f"config key {key!r} must be a table")
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):  # named tables of one schema, in order
            return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp in (int, float) and isinstance(value, bool):
        raise BadInputError(f"config key {key!r} must be {tp.__name__}, got {value!r}")
    if tp is float and isinstance(value, int | float):
        return float(value)
    if tp is Any:
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise BadInputError(f"config key {key!r} must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, with defaults for absent keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    moved = getattr(cls, "_moved_keys", {})
    for u in sorted(unknown):
        if u in moved:
            raise BadInputError(f"config key {prefix + u!r}: {moved[u]}")
    if unknown:
        raise BadInputError(f"unknown config key(s) {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as plain nested dicts/lists (for TOML/JSON output)."""
    out = dataclasses.asdict(obj)

    def fix(v: Any) -> Any:
        if isinstance(v, tuple):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items() if x is not None}
        return v

    return fix(out)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested dict (in place; also returned)."""
    for item in overrides:
        if "=" not in item:
            raise BadInputError(f"--set expects section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise BadInputError(f"--set {path}: {k!r} is not a table")
        node[keys[-1]] = _parse_value(raw.strip())
    return data


Source = str | Path | Mapping[str, Any]


def _read_source(source: Source) -> dict[str, Any]:
    """A mapping as is; a ``Path`` as a TOML file; a ``str`` as TOML text."""
    if isinstance(source, Mapping):
        return _deep_copy(source)
    where = source if isinstance(source, Path) else None
    if where is not None:
        try:
            text = where.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataMissingError("config file not found", where) from None
        except OSError as e:
            raise BadInputError(f"cannot read config ({e.strerror})", where) from None
    else:
        text = str(source)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"invalid TOML: {e}", where) from None


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``top`` into ``base`` (in place; also returned): tables merge, values replace."""
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = _deep_copy(v) if isinstance(v, Mapping) else v
    return base


def load_config(cls: type[T], source: Source | Sequence[Source] | None = None, overrides: Iterable[str] = ()) -> T:
    """Resolve a config: dataclass defaults < TOML sources (in order: ``Path`` files, ``str``
    TOML text, or mappings) < ``--set`` overrides."""
    sources: Sequence[Source] = [] if source is None else (
        list(source) if isinstance(source, list | tuple) else [source])  # type: ignore[list-item]
    data: dict[str, Any] = {}
    for src in sources:
        merge(data, _read_source(src))
    apply_overrides(data, overrides)
    return from_dict(cls, data)


def _deep_copy(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in m.items()}


def dump_toml(data: Mapping[str, Any]) -> str:
    """A small TOML writer for resolved configs (tables, scalars, lists of scalars)."""
    lines: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # JSON string escapes are valid TOML basic strings
        if isinstance(v, list | tuple):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(type(v))

    def table(prefix: str, m: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in m.items() if not isinstance(v, Mapping) and v is not None}
        subs = {k: v for k, v in m.items() if isinstance(v, Mapping)}
        if prefix and (plain or not subs):
            lines.append(f"[{prefix}]")
        for k, v in plain.items():
            lines.append(f"{k} = {scalar(v)}")
        if plain:
            lines.append("")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"
