"""Per-method training defaults: a method config's `train_defaults` replace TrainConfig's defaults for that
method only, the user's keys replace both, and `manytask list METHOD` shows them."""
from __future__ import annotations

import dataclasses

import pytest

from manytask.cli import main
from manytask.runs import create_model
from manytask.registry import METHODS, load_all
from manytask.runs import method_training, resolve
from manytask.train import TrainConfig

load_all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_train_defaults_are_valid_training_keys(method):
    own = getattr(METHODS[method].config, "train_defaults", {})
    train = method_training(method)  # a bad key or value would be a ConfigError here
    assert all(getattr(train, k) == pytest.approx(v) if isinstance(v, float) else getattr(train, k) == v
               for k, v in own.items())
    others = {f.name for f in dataclasses.fields(TrainConfig)} - set(own)
    assert all(getattr(train, k) == getattr(TrainConfig(), k) for k in others)


def test_resolve_starts_from_the_methods_training_defaults(monkeypatch):
    own = METHODS["icnn"].config.train_defaults
    assert own and resolve("tox21", "icnn", {}).train.lr == own["lr"]
    assert resolve("tox21", "icnn", {"lr": "0.01"}).train.lr == 0.01  # the user's key wins
    assert resolve("tox21", "icnn", {}).train.batch_size == own["batch_size"]
    monkeypatch.delattr(METHODS["muir"].config, "train_defaults")
    assert resolve("tox21", "muir", {}).train == TrainConfig()  # no train_defaults: TrainConfig's
    # a run resumed or re-evaluated keeps its saved training config, not today's method defaults
    saved = resolve("tox21", "icnn", {"lr": "0.05"})
    assert resolve("tox21", "icnn", {}, base=saved).train.lr == 0.05


def test_list_shows_the_methods_own_training_defaults(capsys, monkeypatch):
    main(["list", "stl"])
    out = capsys.readouterr().out
    own = METHODS["stl"].config.train_defaults
    assert "this method's own defaults" in out and all(f"{k}=" in out for k in own)
    monkeypatch.delattr(METHODS["muir"].config, "train_defaults")  # a method without them says nothing of them
    main(["list", "muir"])
    assert "own defaults" not in capsys.readouterr().out


def test_hard_sharing_says_when_several_inputs_share_nothing(caplog):
    """The default (one width) gives each input its own layer and nothing shared: a warning says so."""
    from .conftest import tiny_multi
    data = tiny_multi()
    create_model("hard_sharing", data.tasks, data.input_shapes, widths=(8,))
    assert "share nothing" in caplog.text
    caplog.clear()
    create_model("hard_sharing", data.tasks, data.input_shapes, widths=(8, 8))
    assert "share nothing" not in caplog.text
