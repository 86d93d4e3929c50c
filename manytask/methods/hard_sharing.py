"""Hard parameter sharing (Caruana 1997): a shared MLP trunk and one linear head per task.

    h = trunk(encoder_g(x_g)),  y_t = head_t(h)   for task t reading input g

With one input the encoder is simply the trunk's first layer; with several inputs (digits + a table)
each input gets its own first layer into the shared width, and the rest of the trunk is shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..nn.mlp import mlp
from ..registry import register_method
from ..tasks import Task


@dataclass
class HardSharingConfig:
    widths: tuple[int, ...] = (1024, 512)  # the trunk; widths[0] is the (per-input) first layer
    activation: str = "relu"
    dropout: float = 0.25


class HardSharing(nn.Module):
    """forward(x) -> {task: (batch, task.outputs)}; x is (batch, *shape) or {input: (batch, *shape)}."""

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: tuple[int, ...],
                 act: str = "relu", dropout: float = 0.0):
        super().__init__()
        if not widths:
            raise ValueError("hard_sharing needs at least one hidden width, e.g. widths=512")
        self.tasks = tasks
        used = sorted({t.input for t in tasks})
        self.encoders = nn.ModuleDict({g: mlp(math.prod(input_shapes[g]), widths[:1], act, dropout) for g in used})
        self.trunk = mlp(widths[0], widths[1:], act, dropout)
        self.heads = nn.ModuleDict({t.name: nn.Linear(widths[-1], t.outputs) for t in tasks})

    def forward(self, x):
        h = {g: self.trunk(enc(x[g] if isinstance(x, dict) else x)) for g, enc in self.encoders.items()}
        return {t.name: self.heads[t.name](h[t.input]) for t in self.tasks}  # (batch, outputs) each


@register_method("hard_sharing", HardSharingConfig, "shared MLP trunk, one linear head per task")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: HardSharingConfig) -> nn.Module:
    return HardSharing(tasks, input_shapes, tuple(cfg.widths), cfg.activation, cfg.dropout)
