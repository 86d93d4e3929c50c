"""Losses and metrics skip missing labels (stacked_mean_loss, many tasks in a few operations, equals
mean_loss); a regression task's loss on the standardised target and its predictions and metrics in the
target's units; ROC-AUC and PRC-AUC as scikit-learn's, NaN without a warning on
a one-class split (reported once per split by undefined_note); a task's chosen primary metric; delta-m."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from manytask.metrics import covered, delta_m, mean_over_tasks, primary, task_metrics, undefined_note
from manytask.report import mean_label
from manytask.tasks import Task, mean_loss, stacked_mean_loss


def test_binary_loss_ignores_nan_labels():
    t = Task("a", "binary")
    pred = torch.tensor([[2.0], [-1.0], [100.0]])
    y = torch.tensor([1.0, 0.0, float("nan")])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pred[:2, 0], y[:2])
    assert torch.allclose(t.loss(pred, y), expected)


def test_loss_without_labels_is_zero_and_differentiable():
    pred = torch.randn(4, 3, requires_grad=True)
    loss = Task("m", "multiclass", 3).loss(pred, torch.full((4,), float("nan")))
    loss.backward()
    assert loss.item() == 0.0 and pred.grad is not None


def test_multiclass_and_regression_losses():
    pred = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0.0, float("nan")])
    assert torch.allclose(Task("m", "multiclass", 2).loss(pred, y),
                          torch.nn.functional.cross_entropy(pred[:1], torch.tensor([0])))
    r = Task("r", "regression")
    assert torch.allclose(r.loss(torch.tensor([[1.0], [5.0]]), torch.tensor([3.0, float("nan")])), torch.tensor(4.0))


def test_a_regression_task_learns_the_standardised_target_and_predicts_in_its_units():
    """shift 10, scale 2: the loss compares the output with (y - 10) / 2, predict gives output * 2 + 10, and the
    metrics of those predictions are in the target's units, nrmse = RMSE / 2."""
    t = Task("r", "regression", shift=10.0, scale=2.0)
    out, y = torch.tensor([[1.0], [-1.0], [7.0]]), torch.tensor([13.0, 7.0, float("nan")])
    assert t.loss(out, y).item() == pytest.approx(((1 - 1.5) ** 2 + (-1 + 1.5) ** 2) / 2)
    assert t.model_target(y)[:2].tolist() == [1.5, -1.5]
    assert t.predict(out).tolist() == [12.0, 8.0, 24.0]
    m = task_metrics(t, t.predict(out).numpy(), y.numpy())
    assert (m["n"], m["mse"], m["rmse"], m["nrmse"]) == (2, 1.0, 1.0, 0.5)
    plain = Task("r", "regression")  # shift 0, scale 1: the output is the value, nrmse = rmse
    assert plain.predict(out).tolist() == [1.0, -1.0, 7.0] and plain.loss(out, y).item() == pytest.approx(104.0)
    assert task_metrics(plain, out[:, 0].numpy(), y.numpy())["nrmse"] == pytest.approx(math.sqrt(104.0))
    b = Task("b", "binary")
    assert torch.equal(b.model_target(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


def test_stacked_mean_loss_is_mean_loss():
    """stacked_mean_loss against mean_loss on random outputs: binary, regression (shift/scale) and multiclass
    tasks, labels of two lengths, NaN labels (one task all NaN), per-task weights: the same value and the same
    gradients, none at a missing label even where the output there is not finite."""
    g = torch.Generator().manual_seed(0)
    tasks = ([Task(f"b{i}", "binary") for i in range(5)] + [Task("m", "multiclass", 3), Task("b_short", "binary")]
             + [Task(f"r{i}", "regression", shift=float(i), scale=0.5 + i) for i in range(3)])
    n = {t.name: 5 if t.name.endswith("short") else 9 for t in tasks}
    y = {}
    for t in tasks:
        raw = torch.randint(0, t.outputs if t.kind == "multiclass" else 2, (n[t.name],), generator=g).float()
        raw = raw if t.kind != "regression" else 3 * torch.randn(n[t.name], generator=g) + t.shift
        y[t.name] = raw.masked_fill(torch.rand(n[t.name], generator=g) < 0.3, float("nan"))
    y["b1"] = torch.full((9,), float("nan"))
    out = {t.name: torch.randn(n[t.name], t.outputs, generator=g) for t in tasks}
    missing = int(torch.isnan(y["b0"]).nonzero()[0])
    out["b0"][missing] = float("inf")
    weights = {t.name: 0.5 + i for i, t in enumerate(tasks) if i % 2}
    results = []
    for fn in (mean_loss, stacked_mean_loss):
        leaves = {k: v.clone().requires_grad_() for k, v in out.items()}
        value = fn(tasks, leaves, y, weights)
        value.backward()
        results.append((value, {k: v.grad for k, v in leaves.items()}))
    (want, want_grads), (got, got_grads) = results
    got, want = float(got.detach()), float(want.detach())
    assert math.isfinite(got) and abs(got - want) <= 1e-6 * abs(want)
    for k in out:
        assert torch.allclose(got_grads[k], want_grads[k], atol=1e-7), k
    assert float(got_grads["b0"][missing].abs().sum()) == 0.0 and float(got_grads["b1"].abs().sum()) == 0.0


@pytest.mark.parametrize("kw,msg", [
    ({"scale": 0.0}, "scale > 0"), ({"scale": -1.0}, "scale > 0"), ({"scale": math.nan}, "finite"),
    ({"shift": math.inf}, "finite"), ({"kind": "binary", "scale": 2.0}, "regression tasks only"),
    ({"kind": "multiclass", "outputs": 3, "shift": 1.0}, "regression tasks only"),
])
def test_bad_shift_and_scale_are_rejected(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Task("r", **{"kind": "regression", **kw})


def test_bad_task_definitions_are_rejected():
    with pytest.raises(ValueError, match="unknown kind"):
        Task("x", "ranking")
    with pytest.raises(ValueError, match="outputs >= 2"):
        Task("x", "multiclass", 1)


def test_auc_skips_missing_and_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    s = np.array([0.1, 0.9, 0.8, 0.3, 0.5])
    y = np.array([0, 1, np.nan, 0, 1])
    m = task_metrics(Task("a", "binary"), s, y)
    assert m["auc"] == pytest.approx(roc_auc_score([0, 1, 0, 1], [0.1, 0.9, 0.3, 0.5]))
    assert m["n"] == 4


def test_prc_auc_is_sklearns_average_precision_over_the_labelled_examples():
    from sklearn.metrics import average_precision_score
    s = np.array([0.1, 0.9, 0.8, 0.3, 0.5, 0.7, 0.2])
    y = np.array([0, 1, np.nan, 0, 1, 0, 1])
    m = task_metrics(Task("a", "binary"), s, y)
    known = ~np.isnan(y)
    assert m["prc_auc"] == pytest.approx(average_precision_score(y[known], s[known]))
    assert m["prc_auc"] != pytest.approx(m["auc"])  # a metric of its own, not ROC-AUC under another name


def test_aucs_with_one_class_are_nan_and_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails: the one note per split is the caller's
        for labels in ([1.0, 1.0], [0.0, 0.0], [np.nan, np.nan]):
            m = task_metrics(Task("a", "binary"), np.array([0.2, 0.7]), np.array(labels))
            assert math.isnan(m["auc"]) and math.isnan(m["prc_auc"])


def test_a_tasks_metric_is_its_primary_metric():
    assert [primary(Task("a", "binary")), primary(Task("a", "binary", metric="prc_auc"))] == ["auc", "prc_auc"]
    assert primary(Task("r", "regression", metric="mse")) == "mse" and primary(Task("r", "regression")) == "rmse"
    with pytest.raises(ValueError, match="no metric of a regression task; use one of rmse, mse"):
        Task("r", "regression", metric="prc_auc")


def test_undefined_note_names_the_tasks_once_per_split():
    tasks = [Task(f"t{i}", "binary") for i in range(15)]
    s = np.array([0.2, 0.7, 0.4, 0.9])
    two, one = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 1.0, 1.0, np.nan])  # two classes; one class
    table = {t.name: task_metrics(t, s, two if i < 3 else one) for i, t in enumerate(tasks)}
    table["t14"] = task_metrics(tasks[14], s, np.full(4, np.nan))  # no labels at all
    assert covered(table, tasks, "auc") == 3 and covered(table, tasks, "accuracy") == 14
    assert undefined_note("test", table, tasks) == (
        "test: ROC-AUC undefined for 12 of 15 tasks (11 with one class only, 1 with no labels): "
        "t3, t4, t5, t6, t7, t8, ... (12 in all)")
    chosen = [Task(t.name, "binary", metric="prc_auc") for t in tasks[:5]]
    assert undefined_note("val", table, chosen) == "val: PRC-AUC undefined for 2 of 5 tasks (one class only): t3, t4"
    assert undefined_note("val", table, tasks[:3]) is None


def test_mean_label_says_how_many_tasks_the_mean_covers():
    assert mean_label([602, 602, 602], 617) == "mean over 602 of 617 tasks"
    assert mean_label([617, 610, 602], 617) == "mean over 617/610/602 of 617 tasks"
    assert mean_label([1], 1, "auc") == "mean auc over 1 of 1 task"


def test_accuracy_rmse_and_mean_over_tasks():
    tasks = [Task("c", "multiclass", 3), Task("r", "regression")]
    table = {"c": task_metrics(tasks[0], np.eye(3)[[0, 1, 1]], np.array([0, 1, 2.0])),
             "r": task_metrics(tasks[1], np.array([1.0, 2.0]), np.array([1.0, 4.0]))}
    assert table["c"]["accuracy"] == pytest.approx(2 / 3)
    assert table["r"]["rmse"] == pytest.approx(math.sqrt(2.0))
    assert mean_over_tasks(table, tasks)["accuracy"] == pytest.approx(2 / 3)


def test_delta_m_is_sign_corrected():
    tasks = [Task("a", "binary"), Task("r", "regression")]
    base = {"a": {"auc": 0.8}, "r": {"rmse": 2.0}}
    run = {"a": {"auc": 0.88}, "r": {"rmse": 1.0}}  # +10% AUC, -50% RMSE (an improvement)
    assert delta_m(run, base, tasks) == pytest.approx(100 * (0.1 + 0.5) / 2)
    assert delta_m(base, base, tasks) == 0.0
