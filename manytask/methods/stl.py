"""Single-task learning: one independent MLP per task, nothing shared (the baseline every MTL method
must beat). With params_per_task > 0 each task's hidden layers get the one width that gives that many
parameters: the "NN2 STL" of Ramabaja (Interconnected Neural Networks for Multi Task Learning, 2018,
section 4), matched to the root weights of an ICNN subnetwork.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..config import option
from ..nn.mlp import Activation, mlp, width_for_params
from ..registry import register_method
from ..tasks import Task, module_key


@dataclass
class STLConfig:
    widths: tuple[int, ...] = option((512,), "hidden widths of every task's network", low=1, min_len=1)
    activation: Activation = option("relu", "activation after every hidden layer")
    dropout: float = option(0.25, "dropout probability after every hidden layer", low=0, high=1, high_open=True)
    params_per_task: int = option(0, "> 0: every task gets len(widths) hidden layers of the one width that gives "
                                     "this many parameters; 0: the widths as given", low=0)


class PerTaskMLP(nn.Module):
    """{task: MLP}; forward(x) -> {task: (batch, task.outputs)} where x is (batch, *shape) or a dict."""

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: dict[str, tuple[int, ...]],
                 act: str, dropout: float):
        super().__init__()
        self.tasks = tasks
        self.nets = nn.ModuleDict({
            module_key(t.name): mlp(math.prod(input_shapes[t.input]), widths[t.name], act, dropout, out_dim=t.outputs)
            for t in tasks})

    def forward(self, x):
        return {t.name: self.nets[module_key(t.name)](t.select(x)) for t in self.tasks}


@register_method("stl", STLConfig, "single-task baseline: one independent MLP per task")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: STLConfig) -> nn.Module:
    widths = {}
    for t in tasks:
        d = math.prod(input_shapes[t.input])
        if cfg.params_per_task > 0:
            w = width_for_params(d, len(cfg.widths), t.outputs, cfg.params_per_task)
            widths[t.name] = (w,) * len(cfg.widths)
        else:
            widths[t.name] = tuple(cfg.widths)
    return PerTaskMLP(tasks, input_shapes, widths, cfg.activation, cfg.dropout)
