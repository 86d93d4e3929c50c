"""Configs are dataclasses with small, runnable defaults; the CLI overrides them with `key=value`.

Values are parsed and type-checked against the field's annotation (int, float, bool, str, tuples and
lists written comma-separated, and None for optional fields). An unknown key or a wrong type is a
ConfigError whose one-line message lists the valid keys or the expected type.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A bad key, value, method, data set or file: the message says what is wrong and how to fix it."""


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse(text: str, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(text, inner[0], key)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [s for s in text.split(",") if s.strip() != ""]
        vals = [_parse(s.strip(), inner, key) for s in items]
        return tuple(vals) if origin is tuple else vals
    if origin is typing.Literal:
        if text not in args:
            raise ConfigError(f"{key}={text}: choose one of {', '.join(map(str, args))}")
        return text
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{key}={text}: expected true or false")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{key}={text}: expected {tp.__name__}, e.g. {key}={'3' if tp is int else '0.5'}") from None
    return text


def field_types(cfg_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cfg_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_cls)}


def apply(cfg: Any, overrides: dict[str, str], what: str) -> Any:
    """A copy of dataclass `cfg` with `overrides` ({key: text}) parsed and applied."""
    types_ = field_types(type(cfg))
    changes = {}
    for key, text in overrides.items():
        if key not in types_:
            raise ConfigError(f"unknown {what} key {key!r}; valid keys: {', '.join(sorted(types_))}")
        changes[key] = _parse(text, types_[key], key) if isinstance(text, str) else text
    return dataclasses.replace(cfg, **changes)


def split_overrides(args: list[str]) -> dict[str, str]:
    """['a=1', 'data.path=x'] -> {'a': '1', 'data.path': 'x'}; anything without '=' is an error."""
    out = {}
    for a in args:
        if "=" not in a:
            raise ConfigError(f"expected key=value, got {a!r} (for example epochs=20 or data.path=my.csv)")
        k, v = a.split("=", 1)
        out[k.strip()] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cfg_cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config saved with to_dict (tuples come back from JSON lists)."""
    types_ = field_types(cfg_cls)
    unknown = set(values) - set(types_)
    if unknown:
        raise ConfigError(f"saved config has keys {sorted(unknown)} that {cfg_cls.__name__} does not know; "
                          "was it written by another version of manytask?")
    fixed = {}
    for k, v in values.items():
        if typing.get_origin(types_[k]) is tuple and isinstance(v, list):
            v = tuple(v)
        fixed[k] = v
    return cfg_cls(**fixed)
