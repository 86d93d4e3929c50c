"""Every registered method, driven by the registry: builds on tiny tasks, returns the right output
shape for every task, gives a gradient to every trainable parameter, and lowers its loss on tiny data.
A new method gets these checks by registering itself."""
from __future__ import annotations

import pytest

from manytask.data.base import model_input
from manytask.registry import METHODS, load_all
from manytask.runs import RunSpec, build
from manytask.train import TrainConfig, Trainer

from .conftest import tiny_multi, tiny_shared

load_all()
CASES = [(m, "shared") for m in sorted(METHODS)] + [(m, "multi") for m in sorted(METHODS) if METHODS[m].multi_input]


def make(method, shape, **train):
    data = tiny_shared() if shape == "shared" else tiny_multi()
    spec = RunSpec("tiny", method, None, METHODS[method].config(),
                   TrainConfig(epochs=train.pop("epochs", 30), batch_size=16, patience=0, progress=False, lr=3e-3, **train))
    model, hooks = build(spec, data)
    return data, spec, model, hooks


@pytest.mark.parametrize("method,shape", CASES)
def test_output_shapes(method, shape):
    data, _, model, _ = make(method, shape)
    model.eval()
    x = model_input(data.test.inputs)
    out = model(x)
    assert set(out) == {t.name for t in data.tasks}
    for t in data.tasks:
        assert out[t.name].reshape(data.test.size(t.input), -1).shape == (data.test.size(t.input), t.outputs)


@pytest.mark.parametrize("method,shape", CASES)
def test_every_parameter_gets_a_gradient(method, shape):
    data, spec, model, hooks = make(method, shape)
    tr = Trainer(model, data, spec.train, hooks)
    seen = set()
    step = tr.optimizer.step

    def spy(*a, **k):
        seen.update(id(p) for g in tr.optimizer.param_groups for p in g["params"] if p.grad is not None)
        return step(*a, **k)

    tr.optimizer.step = spy
    hooks.before_training(tr)
    tr.epoch = 2  # a step of the second epoch: evolving's default schedule (lin_t1) weights the labels 0 in the first
    x, y = next(tr.batches("train"))
    hooks.training_step(tr, x, y)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    assert trainable and not missing, f"{method}: no gradient for {missing}"


@pytest.mark.parametrize("method,shape", CASES)
def test_loss_goes_down(method, shape):
    data, spec, model, hooks = make(method, shape)
    tr = Trainer(model, data, spec.train, hooks)
    before = tr.evaluate("train")[1]
    tr.fit()
    after = tr.evaluate("train")[1]
    assert after < 0.9 * before, f"{method}: train loss {before:.4f} -> {after:.4f}"
