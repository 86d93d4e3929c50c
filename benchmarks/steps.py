"""The training step the layer benchmarks time: mean loss over the tasks, zero_grad, backward and an Adam
step (make_optimizer with the default TrainConfig: lr 1e-3, no weight decay), in training mode."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from manytask.tasks import Task, mean_loss
from manytask.train import TrainConfig, make_optimizer


def step_fn(model: nn.Module, tasks: list[Task], x: torch.Tensor, y: dict[str, torch.Tensor],
            loss: Callable = mean_loss, optimizer: Callable = make_optimizer):
    """-> a function of no arguments that runs one training step of `model` on (x, y). loss(tasks, out, y):
    the objective (tasks.mean_loss or a function of its signature); optimizer(params, TrainConfig()) builds
    the optimizer (default make_optimizer, what training uses)."""
    opt = optimizer(model.parameters(), TrainConfig())
    model.train()

    def step():
        value = loss(tasks, model(x), y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
    return step
