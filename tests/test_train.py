"""The training loop: determinism, early stopping restoring the best weights, hooks, task subsets, progress,
resuming from a state, stopping on a diverging loss or a signal."""
from __future__ import annotations

import copy
import math
import os
import signal

import numpy as np
import pytest
import torch

from manytask import get_method
from manytask.config import ConfigError
from manytask.runs import RunSpec, build
from manytask.tasks import Task
from manytask.train import (Hooks, TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted, evaluate_split,
                            stop_on_signals)

from .conftest import tiny_multi, tiny_shared


def trained(seed=0, **cfg):
    data = tiny_shared()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(16,)),
                   TrainConfig(**{"progress": False, "batch_size": 16, "seed": seed, **cfg}))
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



def test_a_run_still_improving_at_its_epoch_cap_is_told_so():
    """runs.still_improving: true when training ran to the cap with the best epoch in its last tenth; not when
    early stopping ended it, nor with early stopping off."""
    from manytask.runs import still_improving
    capped = trained(epochs=3, patience=5)
    assert capped.epoch == 3 and capped.best_epoch == 3 and still_improving(capped)
    stopped = trained(epochs=200, patience=3, lr=0.05)
    assert stopped.epoch < 200 and not still_improving(stopped)
    assert not still_improving(trained(epochs=3, patience=0)) and not still_improving(trained(epochs=1, patience=5))
    tenth = trained(epochs=3, patience=5)
    tenth.best_epoch = 2  # the last tenth of 3 epochs is the last epoch
    assert not still_improving(tenth)


def test_resuming_an_optimizer_state_that_does_not_fit_the_weights_is_refused():
    """A checkpoint whose Adam moments have another shape than their weights (a layout an earlier version stored
    differently) is a ConfigError, not moments paired with the wrong weights."""
    tr = trained(epochs=1, patience=0)
    state = copy.deepcopy(tr.state_dict())
    moments = state["optimizer"]["state"][0]
    assert moments["exp_avg"].dim() == 2 and moments["exp_avg"].shape[0] != moments["exp_avg"].shape[1]
    again = trained(epochs=1, patience=0)
    again.load_state_dict(copy.deepcopy(state))  # as written: fits
    moments["exp_avg"] = moments["exp_avg"].T.contiguous()
    with pytest.raises(ConfigError, match="optimizer state .* does not fit its weight"):
        trained(epochs=1, patience=0).load_state_dict(state)

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
    def weights(task):  # one task's network, as plain tensors
        return torch.cat([p.detach().flatten() for p in model.task_network(task).parameters()])

    before = {t: weights(t) for t in ("bin", "reg")}
    Trainer(model, data, spec.train, hooks, tasks=[data.tasks[0]]).fit()
    assert not torch.equal(before["bin"], weights("bin"))
    assert torch.equal(before["reg"], weights("reg"))


def test_evaluation_handles_inputs_of_very_different_sizes():
    """Chunks past the end of the smaller input carry 0 rows; every task still gets all its rows."""
    from .conftest import tiny_multi
    data = tiny_multi()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False))
    model, _ = build(spec, data)
    table, _ = evaluate_split(model, data.train, data.tasks, batch_size=20)  # img has 48 rows, tab 32
    assert table["img"]["n"] == 48 and table["tab_bin"]["n"] == 32


def test_a_loss_hook_changes_the_objective_through_the_one_optimizer_step():
    """A hook that only overrides `loss` trains through Trainer.optimizer_step: scaling the loss by 0 leaves
    every weight where it was (Adam with zero gradients does not move), scaling by 1 is the default run."""
    class Zero(Hooks):
        def loss(self, trainer, out, y):
            return 0.0 * super().loss(trainer, out, y)

    data = tiny_shared()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=2, patience=0))
    model, _ = build(spec, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, data, spec.train, Zero()).fit()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model, hooks = build(spec, data)
    Trainer(model, data, spec.train, hooks).fit()
    assert not torch.equal(model.state_dict()["heads.bin.weight"], before["heads.bin.weight"])


def test_train_stages_records_every_task_trained_so_far():
    from manytask.train import train_stages
    data = tiny_shared()
    spec = RunSpec("tiny", "stl", None, get_method("stl").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=1, patience=0))
    model, hooks = build(spec, data)
    seen = []
    rows = train_stages(model, hooks, data, [[data.tasks[0]], data.tasks[1:]], [spec.train] * 2, on_stage=seen.append)
    assert seen == [1, 2]
    assert [(r["stage"], r["task"]) for r in rows] == [(1, "bin"), (2, "bin"), (2, "multi"), (2, "reg")]


def test_progress_is_one_line_per_epoch_without_a_terminal_and_none_when_off(capsys):
    trained(epochs=3, patience=0, progress=True)
    lines = capsys.readouterr().err.splitlines()  # pytest's stderr is no terminal
    assert [ln.split()[:2] for ln in lines] == [["epoch", "1/3"], ["epoch", "2/3"], ["epoch", "3/3"]]
    assert all(" train_loss " in ln and " val_loss " in ln and " val_auc " in ln and ln.endswith(" s") for ln in lines)
    trained(epochs=3, patience=0, progress=False)
    assert capsys.readouterr().err == ""


def straight_and_resumed(spec: RunSpec, data, at_epoch: int) -> tuple[Trainer, Trainer]:
    """A straight fit, and a fresh trainer fitted from the straight one's state after `at_epoch`."""
    saved = {}

    def keep(trainer):
        if trainer.epoch == at_epoch:
            saved.update(copy.deepcopy(trainer.state_dict()))
    model, hooks = build(spec, data)
    straight = Trainer(model, data, spec.train, hooks, checkpoint=keep).fit()
    torch.manual_seed(123)  # whatever the global generators hold, the state brings them back
    model, hooks = build(spec, data)
    return straight, Trainer(model, data, spec.train, hooks).fit(resume=saved)


@pytest.mark.parametrize("data_fn,method", [(tiny_shared, "hard_sharing"), (tiny_multi, "hard_sharing"),
                                            (tiny_shared, "stl")])
def test_fit_resumed_from_a_state_dict_ends_where_the_straight_fit_does(data_fn, method):
    """The state after epoch 2 of a straight fit, given to a fresh trainer, continues bit for bit: weights,
    Adam moments, minibatch order (two inputs reshuffle on their own), dropout, early stopping."""
    data = data_fn()
    spec = RunSpec("tiny", method, None, get_method(method).config(widths=(16,), dropout=0.3),
                   TrainConfig(progress=False, batch_size=16, epochs=5, patience=2, lr=0.05, seed=3))
    straight, resumed = straight_and_resumed(spec, data, at_epoch=2)
    assert resumed.epoch == straight.epoch and resumed.best_epoch == straight.best_epoch
    untimed = [{k: v for k, v in row.items() if k != "seconds"} for row in straight.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == untimed
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n


def test_a_non_finite_loss_stops_training_at_once():
    class NanAtEpoch2(Hooks):
        def loss(self, trainer, out, y):
            return super().loss(trainer, out, y) * (math.nan if trainer.epoch == 2 else 1.0)

    data = tiny_shared()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=5, patience=0))
    model, _ = build(spec, data)
    trainer = Trainer(model, data, spec.train, NanAtEpoch2())
    with pytest.raises(TrainingDiverged, match="the training loss is nan in epoch 2, minibatch 1") as stopped:
        trainer.fit()
    assert stopped.value.epoch == 2 and len(trainer.history) == 1


def test_signals_stop_after_the_minibatch_and_the_handlers_come_back():
    class SignalAtStep(Hooks):
        def after_step(self, trainer):
            if trainer.step == 6:  # the 2nd minibatch of epoch 2 (4 per epoch)
                os.kill(os.getpid(), signal.SIGTERM)

    data = tiny_shared()
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=5, patience=0))
    model, _ = build(spec, data)
    trainer = Trainer(model, data, spec.train, SignalAtStep())
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGTERM after epoch 1") as stopped:
        with stop_on_signals(trainer):
            trainer.fit()
    assert stopped.value.signum == signal.SIGTERM and trainer.step == 6 and len(trainer.history) == 1
    assert {s: signal.getsignal(s) for s in before} == before


RESUME_CASES = {"icnn": {}, "rsn2": {}, "soft_order": {}, "evolving": {"schedule": "lin"},
                "muir": {"steps_per_generation": 5, "burn_in": 1, "generations": 3, "final": 1}}


@pytest.fixture
def one_thread():
    """Two threads may split a reduction differently from run to run (1e-8 on muir's val loss)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("method", sorted(RESUME_CASES))
def test_every_method_resumes_where_the_straight_fit_is(method, one_thread):
    """As above for the methods with hooks of their own: their hook state (masks, schedule, the EA's
    generation, random generator and which weights train) comes back too; the epoch-2 state of MUiR lies
    in the middle of its first EA generation, after a burn-in one (4 minibatches an epoch, 5 steps a
    generation)."""
    data = tiny_shared()
    spec = RunSpec("tiny", method, None, get_method(method).config(**RESUME_CASES[method]),
                   TrainConfig(progress=False, batch_size=16, epochs=8, patience=0, lr=0.01, seed=1))
    straight, resumed = straight_and_resumed(spec, data, at_epoch=2)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in straight.history]
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n


def test_monitor_val_metric_keeps_the_epoch_with_the_best_validation_metric():
    """monitor=val_metric: the best weights are those of the epoch with the highest mean validation AUC (AUC:
    higher is better; of equal AUCs, the lower validation loss), which need not be the epoch with the lowest
    validation loss."""
    from manytask.data.base import MultiTaskData
    data = tiny_shared(n=96)
    binary = MultiTaskData("bin", [data.tasks[0]], data.train, data.val, data.test)
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=12, patience=12, monitor="val_metric", lr=0.05))
    model, hooks = build(spec, binary)
    trainer = Trainer(model, binary, spec.train, hooks).fit()
    aucs = [r["val_auc"] for r in trainer.history]
    best = min((r for r in trainer.history if r["val_auc"] == max(aucs)), key=lambda r: r["val_loss"])
    assert trainer.best_epoch == best["epoch"]
    table, _ = trainer.evaluate("val")
    assert table["bin"]["auc"] == pytest.approx(max(aucs))


def test_monitor_val_metric_needs_one_primary_metric():
    data = tiny_shared()  # binary, multiclass and regression: auc, accuracy, rmse
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, monitor="val_metric"))
    model, hooks = build(spec, data)
    with pytest.raises(ConfigError, match="monitor=val_metric: the tasks' primary metrics differ"):
        Trainer(model, data, spec.train, hooks)


def test_monitor_follows_the_loss_unless_asked_for_the_metric():
    from manytask.tasks import Task
    from manytask.train import monitored
    binary, reg = [Task("a", "binary"), Task("b", "binary", metric="prc_auc")], [Task("r", "regression")]
    assert monitored(TrainConfig(), binary[:1]) == monitored(TrainConfig(), reg) == "val_loss"
    assert monitored(TrainConfig(monitor="val_metric"), binary[:1]) == "auc"
    assert monitored(TrainConfig(monitor="val_metric"), binary[1:]) == "prc_auc"
    assert monitored(TrainConfig(monitor="val_metric"), reg) == "rmse"


def test_a_saturated_metric_still_improves_when_the_loss_drops():
    """Validation AUC 1.0 from the first epoch on: later epochs with a lower validation loss are better."""
    data = tiny_shared(n=96)
    from manytask.data.base import MultiTaskData
    binary = MultiTaskData("bin", [data.tasks[0]], data.train, data.val, data.test)
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=4, patience=2, monitor="val_metric"))
    model, hooks = build(spec, binary)
    trainer = Trainer(model, binary, spec.train, hooks)
    rows = iter([(0.5, {"auc": 1.0}), (0.4, {"auc": 1.0}), (0.3, {"auc": 1.0}), (0.6, {"auc": 1.0})])
    trainer.validate = lambda: next(rows)
    trainer.fit()
    assert trainer.best_epoch == 3 and trainer.epoch == 4


def test_noam_schedule_warms_up_then_decays_and_resumes_exactly():
    """lr_schedule=noam: lr/10 -> lr over 2 epochs of minibatches, then down to lr/10 at the last one; a run
    resumed from a checkpoint continues the schedule and ends with the weights of the uninterrupted run."""
    data = tiny_shared()  # 64 training rows, batches of 16: 4 minibatches an epoch
    spec = RunSpec("tiny", "hard_sharing", None, get_method("hard_sharing").config(widths=(8,)),
                   TrainConfig(progress=False, batch_size=16, epochs=5, patience=0, lr=0.01, lr_schedule="noam"))
    model, hooks = build(spec, data)
    lrs, states = [], []
    trainer = Trainer(model, data, spec.train, hooks, checkpoint=lambda t: states.append(copy.deepcopy(t.state_dict())))
    step = hooks.after_step
    hooks.after_step = lambda t: (lrs.append(t.optimizer.param_groups[0]["lr"]), step(t))
    trainer.fit()
    assert lrs[0] == pytest.approx(0.01 * (0.1 + 0.9 / 8)) and lrs[7] == pytest.approx(0.01)  # 8 warm-up steps
    assert lrs[-1] == pytest.approx(0.001) and all(a > b for a, b in zip(lrs[7:], lrs[8:]))
    model2, hooks2 = build(spec, data)
    Trainer(model2, data, spec.train, hooks2).fit(resume=states[2])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


def test_weight_decay_of_a_per_task_weight_does_not_grow_with_the_number_of_tasks():
    """The task mean gives a weight that serves one of N tasks 1/N of its task's gradient. With Adam's L2
    at a fixed weight_decay, the L2 term then outweighs that gradient and Adam's normalised steps take the
    weight to 0 at about lr a step (icnn's Tox21 recipe on ToxCast's 617 tasks: first-layer weights near
    1e-19 after 4 epochs). A "tasks": N group takes weight_decay / N: the weight then moves as it would in
    a network trained alone on its task's own loss with weight_decay."""
    from manytask.train import make_optimizer
    N, cfg = 617, TrainConfig(lr=2.63e-4, weight_decay=1e-3)
    grads = torch.randn(1000, 100, generator=torch.Generator().manual_seed(0)) * 1e-3  # (steps, weights), > 1e-3 * w

    def train(group: dict, scale: float) -> torch.Tensor:
        w = torch.nn.Parameter(torch.full((100,), 0.05))  # about 1/sqrt(fan-in) of a fingerprint layer
        opt = make_optimizer([{**group, "params": [w]}], cfg)
        for g in grads:
            w.grad = g * scale  # the task's gradient, times 1/N under the task mean
            opt.step()
        return w.detach()
    alone = train({}, 1.0)  # one network, its own loss
    assert alone.abs().mean() > 0.03
    assert (train({"tasks": N}, 1 / N) - alone).abs().max() < 1e-3  # Adam's eps: the only difference
    assert train({}, 1 / N).abs().mean() < 0.005  # without the 1/N: taken to 0 in under 200 steps, then jitters


@pytest.mark.parametrize("method", ["icnn", "stl"])
def test_per_task_methods_put_every_weight_in_a_tasks_group(method):
    """stl's networks and icnn's isolated subnetworks: every weight in one "tasks": N group, and the default
    weight_decay (of each task's objective) gives Adam at Tox21's 12 tasks exactly the tuned coefficient of
    the task mean (icnn 1e-3, stl 1e-4). icnn isolate=false: one ordinary group."""
    from manytask.runs import method_training
    from manytask.train import make_optimizer
    tasks = [Task(f"t{i}", "binary") for i in range(12)]
    model, hooks = get_method(method).fn(tasks, {"x": (32,)}, get_method(method).config())
    (group,) = hooks.parameters(model)
    assert group["tasks"] == 12 and len(group["params"]) == len(list(model.parameters()))
    opt = make_optimizer(hooks.parameters(model), method_training(method))
    assert opt.param_groups[0]["weight_decay"] == {"icnn": 1e-3, "stl": 1e-4}[method]
    if method == "icnn":
        joint, hooks = get_method(method).fn(tasks, {"x": (32,)}, get_method(method).config(isolate=False))
        assert "tasks" not in hooks.parameters(joint)[0]
