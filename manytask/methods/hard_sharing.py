"""Hard parameter sharing (Caruana 1997): a shared MLP trunk and one linear head per task.

    h = trunk(encoder_g(x_g)),  y_t = head_t(h)   for task t reading input g

With one input the encoder is simply the trunk's first layer; with several inputs (digits + a table)
each input gets its own first layer into the shared width, and the rest of the trunk is shared (with one
width, the default 512, tasks of different inputs share nothing, and a warning says so). A graph
input (molecules with data.encoder=dmpnn) is first encoded by a learned D-MPNN (nn/dmpnn.py, the encoder_*
keys), shared by every task that reads it: encoder_g = first layer(dmpnn(graph)). With widths=300 and
dropout=0 this is chemprop's default model: D-MPNN, one hidden layer of 300, a linear output per task.
Several processes (torchrun): plain data parallelism, nothing of its own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ..config import option
from ..nn.dmpnn import DescriptorStats, DMPNNConfig, needs_descriptor_stats, with_encoder
from ..nn.mlp import Activation, mlp
from ..registry import register_method
from ..tasks import Task, module_key


@dataclass
class HardSharingConfig(DMPNNConfig):
    widths: tuple[int, ...] = option((512,), "trunk widths; the first is each input's own first layer",
                                     low=1, min_len=1,
                                     search=("choice", ((512,), (1024, 512), (2048, 1024), (512, 256, 128))))
    activation: Activation = option("relu", "activation after every hidden layer")
    dropout: float = option(0.288, "dropout probability after every hidden layer", low=0, high=1, high_open=True,
                             search=("float", 0.0, 0.5))
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 hard_sharing` chose: docs/tuning-tox21.md
    train_defaults: ClassVar[dict] = {"batch_size": 32, "lr": 2.71e-3, "weight_decay": 1e-4}
    # on graphs (data.encoder=dmpnn) keys not given take these instead, the recipe chosen on Tox21's validation
    # split over three seeds: docs/encoders.md
    graph_defaults: ClassVar[dict] = {"widths": (300,), "dropout": 0.0, "encoder_aggregation": "mean",
                                      "batch_size": 50, "lr": 1e-3, "weight_decay": 0.0, "epochs": 50,
                                      "patience": 50, "lr_schedule": "noam"}


class HardSharing(nn.Module):
    """forward(x) -> {task: (batch, task.outputs)}; x is (batch, *shape) or {input: (batch, *shape)}."""

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: tuple[int, ...],
                 act: str = "relu", dropout: float = 0.0, graphs: DMPNNConfig = DMPNNConfig()):
        super().__init__()
        if not widths:
            raise ValueError("hard_sharing needs at least one hidden width, e.g. widths=512")
        self.tasks = tasks
        used = sorted({t.input for t in tasks})
        self.inputs = used
        if len(used) > 1 and len(widths) == 1:
            logging.getLogger("manytask").warning(
                "hard_sharing: widths=%d is only each input's own first layer, so the tasks of the %d inputs share "
                "nothing; give a shared layer too, e.g. widths=%d,%d", widths[0], len(used), widths[0], widths[0])

        self.encoders = nn.ModuleDict({module_key(g): with_encoder(g, input_shapes[g], graphs,
                                                                   lambda d: mlp(d, widths[:1], act, dropout))
                                       for g in used})
        self.trunk = mlp(widths[0], widths[1:], act, dropout)
        self.heads = nn.ModuleDict({module_key(t.name): nn.Linear(widths[-1], t.outputs) for t in tasks})

    def forward(self, x):
        h = {g: self.trunk(self.encoders[module_key(g)](x[g] if isinstance(x, dict) else x)) for g in self.inputs}
        return {t.name: self.heads[module_key(t.name)](h[t.input]) for t in self.tasks}  # (batch, outputs) each


@register_method("hard_sharing", HardSharingConfig, "shared MLP trunk, one linear head per task")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: HardSharingConfig):
    model = HardSharing(tasks, input_shapes, tuple(cfg.widths), cfg.activation, cfg.dropout, cfg)
    return (model, DescriptorStats()) if needs_descriptor_stats(model) else model
