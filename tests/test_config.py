"""key=value overrides are type-checked; unknown keys, methods and data sets are one-line errors."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from manytask.config import ConfigError, apply, split_overrides
from manytask.runs import resolve


@dataclass
class C:
    n: int = 1
    lr: float = 0.1
    flag: bool = False
    name: str = "a"
    widths: tuple[int, ...] = (4,)
    opt: int | None = None


def test_values_are_parsed_by_type():
    c = apply(C(), {"n": "3", "lr": "1e-3", "flag": "true", "name": "b", "widths": "8,4", "opt": "none"}, "test")
    assert (c.n, c.lr, c.flag, c.name, c.widths, c.opt) == (3, 1e-3, True, "b", (8, 4), None)


@pytest.mark.parametrize("kv,msg", [({"n": "x"}, "expected int"), ({"flag": "maybe"}, "true or false"),
                                    ({"nope": "1"}, "valid keys: flag, lr, n, name, opt, widths")])
def test_bad_values_and_keys(kv, msg):
    with pytest.raises(ConfigError, match=msg):
        apply(C(), kv, "test")


def test_overrides_need_equals_sign():
    with pytest.raises(ConfigError, match="expected key=value"):
        split_overrides(["epochs"])


def test_resolve_routes_keys():
    spec = resolve("tox21", "hard_sharing", {"epochs": "7", "dropout": "0.5", "data.radius": "3", "method.widths": "64"})
    assert spec.train.epochs == 7 and spec.method_cfg.dropout == 0.5 and spec.data_cfg.radius == 3
    assert spec.method_cfg.widths == (64,)


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*epochs"):
        resolve("tox21", "hard_sharing", {"epoch": "3"})


def test_unknown_method_and_dataset():
    with pytest.raises(ConfigError, match="unknown method 'hardsharing'; choose one of: .*hard_sharing"):
        resolve("tox21", "hardsharing", {})
    with pytest.raises(ConfigError, match="unknown data set 'tox22'; choose one of: .*tox21"):
        resolve("tox22", "stl", {})


def test_choice_fields():
    with pytest.raises(ConfigError, match="choose one of adam, sgd"):
        resolve("tox21", "stl", {"optimizer": "rmsprop"})
