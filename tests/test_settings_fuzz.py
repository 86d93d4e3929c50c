"""Fuzzing the settings with Hypothesis: values for every key of every registered method, of the training
config and of the molecule data config, in range, out of range, of the wrong type, empty lists, given as
the command line gives them (text) or as Python values (create_model, load_dataset). Each draw either
stops with a ConfigError whose message is one line and names a key (or quotes the value, or names the data
file whose content does not fit the settings), or trains one epoch to finite metrics, or stops with
TrainingDiverged (the command line reports that as a failed run). No other exception gets out.

Methods train on the in-memory data of conftest.py (one shared input with a binary, a 3-class and a
regression task; or images and a table as two inputs, for methods that take several inputs); the data
config loads a small molecule CSV."""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import manytask.runs as runs
from manytask.config import ConfigError, field_types, spec_of
from manytask.data.moleculenet import MoleculeNetConfig
from manytask.registry import METHODS, get_dataset, get_method, load_all
from manytask.train import TrainConfig, TrainingDiverged

from .conftest import tiny_multi, tiny_shared
from .data.test_moleculenet import SMILES

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SMALL = {"epochs": "1", "batch_size": "16", "progress": "false", "device": "cpu"}
load_all()

JUNK = ["", "x", "1.5", "-1", "nan", "inf", "1e400", " ", "a,b", "none", "0x10"]
# names that reach the valid part of string keys: task and input names of the data, architectures, groups
NAMES = ["bin", "multi", "reg", "img", "tab_bin", "tab_reg", "x", "img:conv", "tab:mlp", "x:mlp", "x:lstm", "task",
         "input", "g:bin+multi,reg", "A", "B", "smiles", "relu", "lin", "exp", "stairs"]
integers = st.integers(-2, 24)  # sizes stay small: a width of 10**6 would only test the memory
floats = st.one_of(st.floats(-2, 3), st.sampled_from([0.0, 1.0, 0.5, 1e30, -1e-9, math.nan, math.inf, -math.inf]))


def values(tp, choices: tuple | None) -> st.SearchStrategy:
    """Python values of type `tp`, valid or not (out of range, not finite, empty lists, unknown names)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.none(), values([a for a in args if a is not type(None)][0], choices))
    if origin in (tuple, list):
        return st.lists(values(args[0] if args else str, choices), max_size=4).map(tuple if origin is tuple else list)
    if origin is typing.Literal:
        return st.sampled_from([*args, "nope"])
    if tp is bool:
        return st.booleans()
    if tp is int:
        return integers
    if tp is float:
        return floats
    return st.sampled_from([*(choices or ()), *NAMES, "", "nope"])


def text(value) -> str:
    """A Python value as the command line writes it: lists comma-separated, None as none."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(text, value))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def overrides(cfg_cls: type, prefix: str = "") -> st.SearchStrategy:
    """{key: value} for one to three keys of cfg_cls: its text (mostly), junk text, or a Python value of
    its type or of another field's type."""
    fields = {f.name: (tp, spec_of(f).choices) for f, tp in zip(dataclasses.fields(cfg_cls),
                                                                   field_types(cfg_cls).values())}

    @st.composite
    def draw(draw_) -> dict:
        keys = draw_(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))
        out = {}
        for k in keys:
            tp, choices = fields[k]
            how = draw_(st.sampled_from(["text"] * 5 + ["junk", "python", "other type"]))
            if how == "junk":
                out[prefix + k] = draw_(st.sampled_from(JUNK))
            elif how == "python":
                out[prefix + k] = draw_(values(tp, choices))
            elif how == "other type":
                out[prefix + k] = draw_(values(draw_(st.sampled_from([int, float, bool, tuple[int, ...], str])), None))
            else:
                out[prefix + k] = text(draw_(values(tp, choices)))
        return out
    return draw()


def names_a_key(message: str, spec_keys: set[str], drawn: dict, source: str = "") -> bool:
    """Whether the message names a key of the run's configs (as KEY or data.KEY, e.g. rsn2's "keep=0.33 ...
    leaves task 'bin' no weight" after widths=1), quotes a drawn value (or an item of a list value, as "no
    task column(s) ['x']" does), or names the data file `source` whose content does not fit the settings
    (data.smiles_col=A makes the SMILES column a task column: "mols.csv, line 2, column 'smiles': 'CCO' is
    not a number")."""
    named = any(re.search(rf"(?<![\w.]){re.escape(k)}\b", message) for k in spec_keys)
    quoted = any(f"'{item}'" in message for v in drawn.values() for item in {str(v), *str(v).split(",")})
    return named or quoted or bool(source) and source in message


def config_keys(data_name: str, method: str) -> set[str]:
    """Every key of the training, method and data configs, as KEY and data.KEY."""
    data_keys = field_types(get_dataset(data_name).config)
    return {*field_types(TrainConfig), *field_types(get_method(method).config), *data_keys,
            *(f"data.{k}" for k in data_keys)}


def finite(tables: dict, data) -> None:
    """Every metric of every split finite; an AUC may be NaN where the split's labels have one class."""
    for split, table in tables.items():
        for task, metrics in table.items():
            labels = data.split(split).labels[task]
            classes = len(torch.unique(labels[~torch.isnan(labels)]))
            for metric, value in metrics.items():
                assert math.isfinite(value) or (metric in ("auc", "prc_auc") and classes < 2), (split, task, metric, value)


def train_or_stop(data_name: str, method: str, drawn: dict, fixed: dict | None = None, data=None) -> str:
    """resolve + train_run (one epoch) with SMALL, then `fixed`, then the `drawn` keys -> "trained",
    "diverged" or "config error"; a ConfigError must be one line naming one of the drawn keys (or the data
    file fixed as data.path), and any other exception fails the test."""
    keys = {**SMALL, **(fixed or {}), **drawn}
    try:
        spec = runs.resolve(data_name, method, keys)
        result = runs.train_run(spec, data=data, out=None, echo=False)
    except ConfigError as e:
        source = (fixed or {}).get("data.path", "")
        assert "\n" not in str(e) and names_a_key(str(e), config_keys(data_name, method), drawn, source), (keys, str(e))
        return "config error"
    except TrainingDiverged:
        return "diverged"
    finite(result.tables, result.trainer.data)
    return "trained"


@pytest.mark.parametrize("method", sorted(METHODS))
@FUZZ
@given(data=st.data())
def test_method_keys(method, data):
    keys = data.draw(overrides(get_method(method).config))
    keys.update(data.draw(overrides(TrainConfig)) if data.draw(st.booleans()) else {})
    multi = get_method(method).multi_input and data.draw(st.booleans())
    event(train_or_stop("tox21", method, keys, data=tiny_multi() if multi else tiny_shared()))


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "mols.csv"
    path.write_text("smiles,A,B\n" + "".join(f"{s},{i % 2},{(i // 3) % 2}\n" for i, s in enumerate(SMILES * 4)))
    return path


@FUZZ
@given(data=st.data())
def test_molecule_data_keys(molecules, data):
    keys = data.draw(overrides(MoleculeNetConfig, "data."))
    if data.draw(st.booleans()):
        keys.pop("data.path", None)  # the file, with the drawn keys
    event(train_or_stop("moleculenet", "hard_sharing", keys, {"data.path": str(molecules), "data.bits": "64",
                                                              "widths": "8"}))
