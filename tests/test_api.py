"""The public API: create_model and load_dataset validate their keys, the model trains, every exported name
resolves, and runs build their models through create_model."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import manytask
from manytask import ConfigError, Hooks, MultiTaskData, TrainConfig, Trainer, create_model, load_dataset
from manytask.runs import build, resolve
from manytask.train import seed_everything


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_create_model_trains_a_step(shared_data):
    model, hooks = create_model("hard_sharing", shared_data.tasks, shared_data.input_shapes, widths=(16, 8),
                                dropout=0.0)
    assert isinstance(hooks, Hooks)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [16, 8, 1, 3, 1]
    before = weights(model)
    trainer = Trainer(model, shared_data, TrainConfig(epochs=1, batch_size=64, progress=False, device="cpu"), hooks)
    trainer.fit()
    assert trainer.step == 1 and all(not torch.equal(a, b) for a, b in zip(before, weights(model)))
    out = model(shared_data.test.inputs["x"])
    assert {k: tuple(v.shape) for k, v in out.items()} == {"bin": (16, 1), "multi": (16, 3), "reg": (16, 1)}


def test_create_model_takes_text_like_the_cli_and_seeds_nothing(shared_data):
    args = ("hard_sharing", shared_data.tasks, shared_data.input_shapes)
    torch.manual_seed(0)
    typed, _ = create_model(*args, widths=(16, 8))
    then, _ = create_model(*args, widths=(16, 8))  # the global generator moved on: other weights
    torch.manual_seed(0)
    text, _ = create_model(*args, widths="16,8")
    assert all(torch.equal(a, b) for a, b in zip(weights(typed), weights(text)))
    assert not torch.equal(weights(typed)[0], weights(then)[0])


@pytest.mark.parametrize("cfg,msg", [
    ({"width": (16,)}, "unknown hard_sharing method key 'width'; did you mean widths=?; valid keys: activation, "
                       "dropout, encoder_aggregation, "
                       "encoder_batch_norm, encoder_depth, encoder_dropout, encoder_hidden, widths"),
    ({"widths": (16, 0)}, "widths=16,0: must be >= 1"),
    ({"dropout": 1.0}, "dropout=1.0: must be in [0, 1)"),
    ({"widths": "many"}, "widths=many: expected an integer"),
])
def test_create_model_rejects_bad_keys_and_values(shared_data, cfg, msg):
    with pytest.raises(ConfigError) as e:
        create_model("hard_sharing", shared_data.tasks, shared_data.input_shapes, **cfg)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_unknown_method_and_data_set_list_the_choices(shared_data):
    with pytest.raises(ConfigError, match="unknown method 'hard'; choose one of: .*hard_sharing"):
        create_model("hard", shared_data.tasks, shared_data.input_shapes)
    with pytest.raises(ConfigError, match="unknown data set 'digit'; choose one of: .*digits"):
        load_dataset("digit")


def test_load_dataset_applies_and_checks_its_keys():
    data = load_dataset("digits", split_seed=1, val_fraction="0.2")
    assert isinstance(data, MultiTaskData) and data.input_shapes == {"x": (1, 8, 8)}
    assert data.val.size("x") == round(0.2 * 1797)
    with pytest.raises(ConfigError, match="unknown digits data key 'seed'; valid keys: split_seed, test_fraction, "
                                          "val_fraction"):
        load_dataset("digits", seed=1)
    with pytest.raises(ConfigError, match=r"val_fraction=1.5: must be in \(0, 1\)"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ConfigError, match="data.fractions=-0.2,0.5,0.7: need three fractions"):
        load_dataset("digits", val_fraction=0.5, test_fraction=0.7)  # each in range, together too much


def test_runs_build_their_models_through_create_model():
    data = load_dataset("digits")
    spec = resolve("digits", "hard_sharing", {"widths": "8", "seed": "3"})
    model, _ = build(spec, data)
    seed_everything(3)
    direct, _ = create_model("hard_sharing", data.tasks, data.input_shapes, widths=(8,))
    assert all(torch.equal(a, b) for a, b in zip(weights(model), weights(direct)))


@pytest.mark.parametrize("package", ["manytask", "manytask.nn"])
def test_every_exported_name_resolves(package):
    code = (f"import importlib; m = importlib.import_module('{package}'); "
            "missing = [n for n in m.__all__ if getattr(m, n, None) is None]; "
            "assert not missing, missing; assert set(m.__all__) <= set(dir(m)); print(len(m.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 15


def test_an_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        manytask.nothing  # noqa: B018
    assert manytask.__version__ and "create_model" in manytask.__all__
