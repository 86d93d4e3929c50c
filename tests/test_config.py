"""key=value overrides are type-checked; unknown keys, methods and data sets are one-line errors."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from manytask.config import ConfigError, apply, check, describe, did_you_mean, option, split_overrides
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


@pytest.mark.parametrize("kv,msg", [({"n": "x"}, "n=x: expected an integer"), ({"flag": "maybe"}, "true or false"),
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


@pytest.mark.parametrize("key,hint", [("encoder", "did you mean data.encoder=?"), ("epoch", "did you mean epochs=?"),
                                      ("descriptors", "did you mean data.descriptors=?")])
def test_unknown_key_suggests_the_nearest(key, hint):
    with pytest.raises(ConfigError, match=re.escape(f"unknown key {key!r} for tox21/hard_sharing; {hint}; valid keys")):
        resolve("tox21", "hard_sharing", {key: "1"})


def test_unknown_key_without_a_near_one_has_no_hint():
    with pytest.raises(ConfigError) as err:
        resolve("tox21", "hard_sharing", {"zzzzqqq": "1"})
    assert "did you mean" not in str(err.value)


def test_did_you_mean_prefers_the_key_with_its_prefix_then_the_nearest_spelling():
    valid = ["data.encoder", "data.path", "epochs", "widths"]
    assert did_you_mean("encoder", valid) == "; did you mean data.encoder=?"
    assert did_you_mean("data.encoderr", valid) == "; did you mean data.encoder=?"
    assert did_you_mean("widht", valid) == "; did you mean widths=?"
    assert did_you_mean("zzzzqqq", valid) == ""


def test_unknown_data_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match=re.escape("unknown tox21 data key 'data.radiuss'; did you mean data.radius=?")):
        resolve("tox21", "hard_sharing", {"data.radiuss": "3"})


def test_unknown_method_and_dataset():
    with pytest.raises(ConfigError, match="unknown method 'hardsharing'; choose one of: .*hard_sharing"):
        resolve("tox21", "hardsharing", {})
    with pytest.raises(ConfigError, match="unknown data set 'tox22'; choose one of: .*tox21"):
        resolve("tox22", "stl", {})


def test_choice_fields():
    with pytest.raises(ConfigError, match="choose one of adam, adamw, sgd"):
        resolve("tox21", "stl", {"optimizer": "rmsprop"})


@dataclass
class Ranged:
    epochs: int = option(10, "training epochs", low=1)
    dropout: float = option(0.0, "dropout probability", low=0.0, high=1.0, high_open=True)
    widths: tuple[int, ...] = option((8,), "hidden widths", low=1, min_len=1)
    kind: str = option("a", "which one", choices=("a", "b"))


@pytest.mark.parametrize("kv,msg", [({"epochs": "0"}, r"epochs=0: must be >= 1 \(training epochs\)"),
                                    ({"dropout": "1"}, r"dropout=1.0: must be in \[0, 1\)"),
                                    ({"dropout": "nan"}, "dropout=nan: must be in"),
                                    ({"widths": ""}, "widths=: need >= 1, at least 1 value"),
                                    ({"widths": "8,0"}, "widths=8,0: must be >= 1"),
                                    ({"kind": "c"}, "kind=c: choose one of a, b")])
def test_ranges_and_choices_are_checked_with_the_valid_values_in_the_message(kv, msg):
    with pytest.raises(ConfigError, match=msg):
        apply(Ranged(), kv, "test")


def test_valid_edges_pass_and_describe_lists_type_default_help():
    c = apply(Ranged(), {"epochs": "1", "dropout": "0.999", "widths": "1,2", "kind": "b"}, "test")
    assert (c.epochs, c.dropout, c.widths, c.kind) == (1, 0.999, (1, 2), "b")
    rows = {r[0]: r for r in describe(Ranged)}
    assert rows["epochs"] == ("epochs", "int", "10", "training epochs (>= 1)")
    assert rows["widths"][1:3] == ("int,...", "8")
    assert rows["dropout"][3] == "dropout probability (in [0, 1))"


def test_every_registered_default_config_passes_its_own_check():
    from manytask.registry import DATASETS, EXPERIMENTS, METHODS, load_all
    from manytask.train import TrainConfig
    load_all()
    for entry in [*METHODS.values(), *DATASETS.values(), *EXPERIMENTS.values()]:
        check(entry.config())
    check(TrainConfig())


@pytest.mark.parametrize("key,value", [("epochs", "0"), ("epochs", "-1"), ("batch_size", "-3"), ("batch_size", "0"),
                                       ("lr", "0"), ("lr", "-1"), ("weight_decay", "-1"), ("patience", "-1"),
                                       ("device", "tpu")])
def test_out_of_range_training_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"{key}={value}"):
        spec = resolve("tox21", "hard_sharing", {key: value})
        from manytask.train import resolve_device
        resolve_device(spec.train.device)
