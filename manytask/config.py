"""Configs are dataclasses with small, runnable defaults; the CLI overrides them with `key=value`.

Every field is declared once with `option(default, help, range or choices)`. That one declaration serves
the parser (values are type-checked against the annotation: int, float, bool, str, Literal choices,
tuples and lists written comma-separated, None for optional fields), the range check, and
`manytask list NAME`, which prints each key with its type, default and help. A bad key or value is a
ConfigError whose one-line message says what is wrong and what is valid.

    @dataclass
    class MyConfig:
        widths: tuple[int, ...] = option((128,), "hidden layer widths", low=1, min_len=1)
        dropout: float = option(0.0, "dropout probability", low=0.0, high=1.0, high_open=True,
                                search=("float", 0.0, 0.5))

`search=` declares the field's range for `manytask tune` (manytask/tune.py): ("float", low, high) or
("int", low, high) uniform, ("log", low, high) log-uniform (an int field gets integers), or
("choice", (value, ...)) (values of the field's type: a tuple field lists tuples).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Sequence


class ConfigError(ValueError):
    """A bad key, value, method, data set or file: the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Spec:
    """What a field accepts beyond its type: a numeric range (per element for tuples), a set of
    choices, a minimum length for tuples."""

    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    min_len: int = 0
    search: tuple | None = None  # what `manytask tune` samples (see the module docstring); None: not tuned

    def describe(self) -> str:
        """The valid values in words, e.g. '>= 1', 'in [0, 1)', 'one of adam, sgd'."""
        parts = []
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        if self.low is not None and self.high is not None:
            parts.append(f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}")
        elif self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        elif self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        if self.min_len:
            parts.append(f"at least {self.min_len} value{'s' if self.min_len > 1 else ''}")
        return ", ".join(parts)

    def searched(self) -> str:
        """What `manytask tune` samples, in words: 'log 0.0001..0.01', 'one of 512 / 1024,512'; '' if nothing."""
        if self.search is None:
            return ""
        kind, *args = self.search
        if kind == "choice":
            return "one of " + " / ".join(",".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in args[0])
        return f"{kind} {args[0]:g}..{args[1]:g}"

    def violation(self, value: Any) -> str | None:
        """None when `value` is valid, else why not."""
        if value is None:
            return None
        items = value if isinstance(value, (tuple, list)) else (value,)
        if isinstance(value, (tuple, list)) and len(value) < self.min_len:
            return f"need {self.describe()}"
        for v in items:
            if self.choices is not None and v not in self.choices:
                return "choose one of " + ", ".join(map(str, self.choices))
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if math.isnan(v) or (self.low is not None and (v < self.low or (self.low_open and v == self.low))) \
                        or (self.high is not None and (v > self.high or (self.high_open and v == self.high))):
                    return f"must be {self.describe() or 'a number'}"
                if math.isinf(v):
                    return "must be a finite number" + (f", {self.describe()}" if self.describe() else "")
        return None


def option(default: Any, help: str = "", *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, choices: Sequence | None = None, min_len: int = 0,
           search: tuple | None = None) -> Any:
    """A dataclass field with its help line, valid values and tuning range (see the module docstring)."""
    spec = Spec(help, low, high, low_open, high_open, tuple(choices) if choices is not None else None, min_len,
                _search(search))
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


SEARCH_KINDS = ("float", "int", "log", "choice")


def _search(search: tuple | None) -> tuple | None:
    """A field's search= declaration, checked for its shape: (kind, low, high) with low < high, or
    ("choice", values) with at least two values; a malformed one is a ValueError where it is declared."""
    if search is None:
        return None
    kind, *args = search
    if kind == "choice" and len(args) == 1 and len(args[0]) >= 2:
        return ("choice", tuple(args[0]))
    if kind in SEARCH_KINDS[:3] and len(args) == 2 and args[0] < args[1] and (kind != "log" or args[0] > 0):
        return (kind, *args)
    raise ValueError(f"search={search!r}: expected (kind, low, high) with kind one of float, int, log and "
                     "low < high (low > 0 for log), or ('choice', (value, value, ...))")


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec", Spec())


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _parse(text: str, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(text, inner[0], key)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [s for s in text.split(",") if s.strip() != ""]
        vals = [_parse(s.strip(), inner, key) for s in items]
        return tuple(vals) if origin is tuple else vals
    if origin is typing.Literal:
        if text.strip() not in args:
            raise ConfigError(f"{key}={text}: choose one of {', '.join(map(str, args))}")
        return text.strip()
    if tp is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ConfigError(f"{key}={text}: expected true or false")
    if tp in (int, float):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"{key}={text}: expected {'an integer' if tp is int else 'a number'}, "
                              f"e.g. {key}={'3' if tp is int else '0.5'}") from None
    return text


def _typed(value: Any, tp: Any, key: str) -> Any:
    """A Python value given for a field of type `tp` (create_model(widths=(64,)), a contender's typed key):
    itself if of that type (ints pass for floats, lists become tuples, NumPy integers ints); else a ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return None if value is None else _typed(value, next(a for a in args if a is not type(None)), key)
    if origin in (tuple, list) and isinstance(value, (tuple, list)):
        items = [_typed(v, args[0] if args else str, key) for v in value]
        return tuple(items) if origin is tuple else items
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if (origin is typing.Literal and value in args) or (tp is float and number) \
            or (tp in (bool, str) and isinstance(value, tp)):
        return value
    if tp is int and number and isinstance(value, numbers.Integral):
        return int(value)
    if origin not in (tuple, list, typing.Literal) and tp not in (int, float, bool, str):
        return value  # a type the command line does not write (dict, ...)
    raise ConfigError(f"{key}={value!r}: expected {type_name(tp)}")


def type_name(tp: Any) -> str:
    """int, float, bool, str, int,... (comma-separated), one of a|b, or X|none."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return f"{type_name(inner[0])}|none"
    if origin in (tuple, list):
        return f"{type_name(args[0] if args else str)},..."
    if origin is typing.Literal:
        return "|".join(map(str, args))
    return getattr(tp, "__name__", str(tp))


def field_types(cfg_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cfg_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg_cls)}


def check(cfg: Any, what: str = "", prefix: str = "") -> Any:
    """Every field of dataclass `cfg` within its declared range or choices; else a one-line ConfigError
    with the valid values, naming the key as the user writes it (prefix + field, e.g. data.bits). Returns cfg."""
    types_ = field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        spec = spec_of(f)
        if spec.choices is None and typing.get_origin(types_[f.name]) is typing.Literal:  # the type lists them
            spec = dataclasses.replace(spec, choices=typing.get_args(types_[f.name]))
        why = spec.violation(getattr(cfg, f.name))
        if why:
            value = getattr(cfg, f.name)
            raise ConfigError(f"{prefix}{f.name}={as_text(value)}: {why}" + (f" ({spec.help})" if spec.help else "")
                              + (f" [{what}]" if what else ""))
    return cfg


def as_text(value: Any) -> str:
    """A value as the command line writes it: a tuple or list as "1024,512"."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """"; did you mean K=?" for the valid key nearest to the unknown `key` (a valid "PREFIX.key" first, for a
    key given without its prefix), or "" when none is near."""
    near = ([v for v in valid if v.rpartition(".")[2] == key and v != key]
            or difflib.get_close_matches(key, valid, n=1, cutoff=0.7))
    return f"; did you mean {near[0]}=?" if near else ""


def apply(cfg: Any, overrides: dict[str, Any], what: str, prefix: str = "") -> Any:
    """A copy of dataclass `cfg` with `overrides` ({key: text or value}) parsed, applied and range-checked.
    `prefix` is how the user writes these keys (e.g. "data."), for the error messages."""
    types_ = field_types(type(cfg))
    changes = {}
    for key, text in overrides.items():
        if key not in types_:
            valid = [prefix + k for k in sorted(types_)]
            raise ConfigError(f"unknown {what} key {prefix + key!r}{did_you_mean(prefix + key, valid)}; "
                              f"valid keys: {', '.join(valid)}")
        read = _parse if isinstance(text, str) else _typed  # text from the command line, or a Python value
        changes[key] = read(text, types_[key], prefix + key)
    return check(dataclasses.replace(cfg, **changes), prefix=prefix)


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help with valid values) for every field of a config class (or of an instance,
    whose values are then the defaults shown): what `manytask list NAME` prints."""
    cfg_cls = cfg if isinstance(cfg, type) else type(cfg)
    types_ = field_types(cfg_cls)
    rows = []
    for f in dataclasses.fields(cfg_cls):
        if f.metadata.get("hidden"):
            continue
        if not isinstance(cfg, type):
            default = getattr(cfg, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        shown = as_text(default)
        spec, tp = spec_of(f), types_[f.name]
        valid = spec.describe()
        if typing.get_origin(tp) is typing.Literal:  # the type column lists the choices already
            valid = valid.replace("one of " + ", ".join(map(str, spec.choices or ())), "").strip(", ")
        rows.append((prefix + f.name, type_name(tp), shown, spec.help + (f" ({valid})" if valid else "")
                     + (f" [tune: {spec.searched()}]" if spec.search else "")))
    return rows


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
