"""The training loop: determinism, early stopping restoring the best weights, hooks, task subsets."""
from __future__ import annotations

import torch

from manytask import get_method
from manytask.runs import RunSpec, build
from manytask.train import Hooks, TrainConfig, Trainer, evaluate_split

from .conftest import tiny_shared


def trained(seed=0, **cfg):
    data = tiny_shared()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(16,)),
                   TrainConfig(progress=False, batch_size=16, seed=seed, **cfg))
    model, hooks = build(spec, data)
    return Trainer(model, data, spec.train, hooks).fit()


def test_same_seed_same_weights_on_cpu():
    a, b = trained(epochs=3, patience=0), trained(epochs=3, patience=0)
    for (n, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p, q), n
    c = trained(seed=1, epochs=3, patience=0)
    assert not torch.equal(a.model.heads["bin"].weight, c.model.heads["bin"].weight)


def test_early_stopping_restores_the_best_epoch():
    tr = trained(epochs=200, patience=3, lr=0.05)
    assert tr.epoch < 200 and tr.epoch == tr.best_epoch + 3
    best = min(r["val_loss"] for r in tr.history)
    _, val_loss = evaluate_split(tr.model, tr.data.val, tr.tasks)
    assert abs(val_loss - best) < 1e-6
    assert [r["epoch"] for r in tr.history] == list(range(1, tr.epoch + 1))


def test_hooks_are_called_in_order():
    calls = []

    class Spy(Hooks):
        def before_training(self, tr): calls.append("before")
        def before_optimizer_step(self, tr): calls.append("pre-step")
        def after_step(self, tr): calls.append("step")
        def after_epoch(self, tr):
            calls.append("epoch")
            tr.stop = tr.epoch == 2

    data = tiny_shared()
    spec = RunSpec("tiny", "stl", None, get_method("stl").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=32, epochs=5, patience=0))
    model, _ = build(spec, data)
    tr = Trainer(model, data, spec.train, Spy()).fit()
    assert tr.epoch == 2
    assert calls == ["before"] + (["pre-step", "step"] * 2 + ["epoch"]) * 2


def test_training_a_task_subset_leaves_other_heads_alone():
    data = tiny_shared()
    spec = RunSpec("tiny", "stl", None, get_method("stl").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=2, patience=0))
    model, hooks = build(spec, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, data, spec.train, hooks, tasks=[data.tasks[0]]).fit()
    after = model.state_dict()
    assert not torch.equal(before["nets.bin.1.weight"], after["nets.bin.1.weight"])
    assert torch.equal(before["nets.reg.1.weight"], after["nets.reg.1.weight"])


def test_evaluation_handles_inputs_of_very_different_sizes():
    """Chunks past the end of the smaller input carry 0 rows; every task still gets all its rows."""
    from .conftest import tiny_multi
    data = tiny_multi()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False))
    model, _ = build(spec, data)
    table, _ = evaluate_split(model, data.train, data.tasks, batch_size=20)  # img has 48 rows, tab 32
    assert table["img"]["n"] == 48 and table["tab_bin"]["n"] == 32
