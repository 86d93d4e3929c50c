"""Hard parameter sharing (Caruana 1997): a shared MLP trunk and one linear head per task.

    h = trunk(encoder_g(x_g)),  y_t = head_t(h)   for task t reading input g

With one input the encoder is simply the trunk's first layer; with several inputs (digits + a table)
each input gets its own first layer into the shared width, and the rest of the trunk is shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..config import option
from ..nn.mlp import Activation, mlp
from ..registry import register_method
from ..tasks import Task, module_key


@dataclass
class HardSharingConfig:
    widths: tuple[int, ...] = option((1024, 512), "trunk widths; the first is each input's own first layer",
                                     low=1, min_len=1)
    activation: Activation = option("relu", "activation after every hidden layer")
    dropout: float = option(0.25, "dropout probability after every hidden layer", low=0, high=1, high_open=True)


class HardSharing(nn.Module):
    """forward(x) -> {task: (batch, task.outputs)}; x is (batch, *shape) or {input: (batch, *shape)}."""

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: tuple[int, ...],
                 act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if not widths:
            raise ValueError("hard_sharing needs at least one hidden width, e.g. widths=512")
        self.tasks = tasks
        used = sorted({t.input for t in tasks})
        self.inputs = used
        self.encoders = nn.ModuleDict({module_key(g): mlp(math.prod(input_shapes[g]), widths[:1], act, dropout)
                                       for g in used})
        self.trunk = mlp(widths[0], widths[1:], act, dropout)
        self.heads = nn.ModuleDict({module_key(t.name): nn.Linear(widths[-1], t.outputs) for t in tasks})

    def forward(self, x):
        h = {g: self.trunk(self.encoders[module_key(g)](x[g] if isinstance(x, dict) else x)) for g in self.inputs}
        return {t.name: self.heads[module_key(t.name)](h[t.input]) for t in self.tasks}  # (batch, outputs) each


@register_method("hard_sharing", HardSharingConfig, "shared MLP trunk, one linear head per task")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: HardSharingConfig) -> nn.Module:
    return HardSharing(tasks, input_shapes, tuple(cfg.widths), cfg.activation, cfg.dropout)
