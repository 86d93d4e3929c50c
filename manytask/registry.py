"""One registry for methods, data sets and experiments; it drives the CLI and the conformance test.

    @register_method("hard_sharing", HardSharingConfig)
    def build(tasks, input_shapes, cfg) -> nn.Module | tuple[nn.Module, Hooks]: ...

    @register_dataset("tox21", MoleculeNetConfig)
    def load(cfg) -> MultiTaskData: ...

    @register_experiment("demo", "Tox21: hard sharing vs single-task")
    def run(overrides: list[str], out_dir: Path) -> ExperimentResult: ...

Modules under manytask/methods, manytask/data and manytask/experiments register themselves on import;
`load_all()` imports them all, so adding a method is adding one file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from .config import ConfigError


@dataclass(frozen=True)
class Entry:
    name: str
    config: type | None
    fn: Callable[..., Any]
    description: str = ""
    featurize: Callable[..., Any] | None = None  # data sets only: raw strings -> model inputs (predict)
    multi_input: bool = True  # methods only: False when every task must read the same input


METHODS: dict[str, Entry] = {}
DATASETS: dict[str, Entry] = {}
EXPERIMENTS: dict[str, Entry] = {}


def _register(table: dict[str, Entry], kind: str, name: str, config: type | None, description: str,
              featurize: Callable[..., Any] | None = None, multi_input: bool = True):
    def deco(fn):
        if name in table and table[name].fn.__module__ != fn.__module__:
            raise RuntimeError(f"{kind} {name!r} registered twice ({table[name].fn.__module__}, {fn.__module__})")
        doc = description or next(iter((fn.__doc__ or "").strip().splitlines()), "")
        table[name] = Entry(name, config, fn, doc, featurize, multi_input)
        return fn
    return deco


def register_method(name: str, config: type, description: str = "", multi_input: bool = True):
    """multi_input=False: the method needs every task to read one shared input."""
    return _register(METHODS, "method", name, config, description, multi_input=multi_input)


def register_dataset(name: str, config: type, description: str = "", featurize: Callable[..., Any] | None = None):
    """featurize(strings, cfg) -> (inputs (n, ...), valid (n,) bool), for `manytask predict`."""
    return _register(DATASETS, "data set", name, config, description, featurize)


def register_experiment(name: str, config: type, description: str = ""):
    """config: an ExperimentConfig subclass (manytask.experiments.runner)."""
    return _register(EXPERIMENTS, "experiment", name, config, description)


_LOADED = False


def load_all() -> None:
    """Import every module of manytask.data, manytask.methods and manytask.experiments."""
    global _LOADED
    if _LOADED:
        return
    for pkg in ("manytask.data", "manytask.methods", "manytask.experiments"):
        mod = importlib.import_module(pkg)
        for info in pkgutil.iter_modules(mod.__path__):
            importlib.import_module(f"{pkg}.{info.name}")
    _LOADED = True


def lookup(table: dict[str, Entry], name: str, kind: str) -> Entry:
    load_all()
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(table))}")
    return table[name]


def get_method(name: str) -> Entry:
    return lookup(METHODS, name, "method")


def get_dataset(name: str) -> Entry:
    return lookup(DATASETS, name, "data set")


def get_experiment(name: str) -> Entry:
    return lookup(EXPERIMENTS, name, "experiment")


def find(name: str) -> tuple[str, Entry]:
    """The method, data set or experiment called `name` -> (kind, entry)."""
    load_all()
    for kind, table in (("method", METHODS), ("data set", DATASETS), ("experiment", EXPERIMENTS)):
        if name in table:
            return kind, table[name]
    raise ConfigError(f"{name!r} is no method, data set or experiment; `manytask list` shows them all")
