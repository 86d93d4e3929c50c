"""Losses and metrics skip missing labels; AUC on a one-class split is NaN with a warning; delta-m."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manytask.metrics import delta_m, mean_over_tasks, task_metrics
from manytask.tasks import Task


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


def test_auc_with_one_class_is_nan_with_a_warning():
    with pytest.warns(UserWarning, match="only one class"):
        m = task_metrics(Task("a", "binary"), np.array([0.2, 0.7]), np.array([1.0, 1.0]))
    assert math.isnan(m["auc"])


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
