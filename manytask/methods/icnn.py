"""Interconnected neural network (ICNN; Ramabaja, Interconnected Neural Networks for Multi Task
Learning, 2018, sections 3 and 6).

One subnetwork per task, all reading the same input x:

    a(1, i) = f( W(1, i) x + b(1, i) )                                   first layer: roots only (*)
    a(j, i) = f( sum_k W(j, k->i) a(j-1, k) + b(j, i) ),  j = 2..L        inter-layers (nn/interconnected.py)
    y_i     = head_i( a(L, i) )

with gradient isolation: task i's loss reaches only subnetwork i's roots, biases and the connectors into
i (the sources a(j-1, k), k != i, are detached on the connector paths). `isolate=False` trains the same
network jointly (ablation). `targets=` gives connectors only into the listed tasks (section 6.1);
`connector_l1=` adds lambda * sum |connector| to the loss (sections 6.2 and 8).

(*) every subnetwork's input layer is the same x, so connectors from the input would only add a second
copy of the root weight (W(1,i) x + sum_k W(1,k->i) x = (sum of them) x); the first layer has roots only.

Magnitude pruning after training (section 6.2) and the connector heatmap (Figs. 5-7) work on a trained
model: `prune_connectors` in nn/interconnected.py and `connector_heatmap` below; the experiments in
experiments/icnn.py call them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import ConfigError, option
from ..nn.interconnected import InterLayer, connector_l1, connector_matrices
from ..nn.mlp import Activation, activation, mlp_params
from ..registry import register_method
from ..report import Matrix
from ..tasks import Task
from ..train import Hooks


@dataclass
class ICNNConfig:
    widths: tuple[int, ...] = option((128, 64), "units per subnetwork; the second and later widths are inter-layers",
                                     low=1, min_len=2)
    activation: Activation = option("relu", "activation after every layer")
    dropout: float = option(0.25, "dropout probability after every layer", low=0, high=1, high_open=True)
    isolate: bool = option(True, "gradient isolation (the thesis's backward rule); false trains the same network "
                                 "jointly (ablation)")
    targets: tuple[str, ...] = option((), "task names that receive connectors (section 6.1); empty: every task")
    connector_l1: float = option(0.0, "lambda of the L1 penalty on connector weights", low=0)


class ICNN(nn.Module):
    """forward(x: (batch, *shape)) -> {task: (batch, task.outputs)}; every task reads the same input."""

    def __init__(self, tasks: list[Task], in_dim: int, widths: tuple[int, ...], act: str = "relu",
                 dropout: float = 0.0, isolate: bool = True, targets: list[int] | None = None):
        super().__init__()
        self.tasks, self.widths = tasks, tuple(widths)
        N = len(tasks)
        self.first = nn.Linear(in_dim, N * widths[0])  # N root weights from the shared input, side by side
        self.inter = nn.ModuleList(InterLayer(N, a, b, isolate, targets) for a, b in zip(widths[:-1], widths[1:]))
        self.act = activation(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(widths[-1], t.outputs) for t in tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1)  # (batch, d)
        a = self.drop(self.act(self.first(x))).reshape(x.shape[0], len(self.tasks), self.widths[0])  # (batch, N, w0)
        for layer in self.inter:
            a = self.drop(self.act(layer(a)))  # (batch, N, w_j)
        return {t.name: head(a[:, i]) for i, (t, head) in enumerate(zip(self.tasks, self.heads))}  # (batch, outputs)

    def artifacts(self) -> tuple[dict, list[Matrix]]:
        """The last inter-layer's connector heatmap: every run directory gets connectors.csv/.png."""
        return {}, [connector_heatmap(self, [t.name for t in self.tasks])]

    def root_params_per_subnetwork(self, task: int = 0) -> int:
        """Root weights and biases of one subnetwork (first layer, inter-layer roots, head): the size of
        the thesis's NN2 STL network."""
        d = self.first.in_features
        return mlp_params(d, self.widths, self.tasks[task].outputs)


class ConnectorL1(Hooks):
    """The loss is the mean task loss plus lam * sum |connector weights| (nn/interconnected.connector_l1);
    the logged train loss therefore includes the penalty."""

    def __init__(self, lam: float):
        self.lam = lam

    def loss(self, trainer, out, y) -> torch.Tensor:
        return super().loss(trainer, out, y) + self.lam * connector_l1(trainer.model)


@register_method("icnn", ICNNConfig, "interconnected subnetworks, one per task, with gradient isolation "
                 "(Ramabaja 2018)", multi_input=False)
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: ICNNConfig):
    inputs = sorted({t.input for t in tasks})
    if len(inputs) != 1:
        raise ConfigError(f"icnn needs every task to read the same input, got inputs {inputs}; "
                          "train each input's tasks separately or use hard_sharing")
    names = [t.name for t in tasks]
    unknown = [t for t in cfg.targets if t not in names]
    if unknown:
        raise ConfigError(f"targets={','.join(cfg.targets)}: unknown task(s) {unknown}; tasks are {', '.join(names)}")
    targets = [names.index(t) for t in cfg.targets] or None
    try:
        model = ICNN(tasks, math.prod(input_shapes[inputs[0]]), tuple(cfg.widths), cfg.activation, cfg.dropout,
                     cfg.isolate, targets)
    except ValueError as e:  # e.g. targets= with a single task: no other subnetwork to connect from
        raise ConfigError(str(e)) from None
    return (model, ConnectorL1(cfg.connector_l1)) if cfg.connector_l1 > 0 else model


def connector_heatmap(model: nn.Module, task_names: list[str], layer: int = -1, name: str = "connectors") -> Matrix:
    """sum |W(k->i)| for every ordered pair (source k = row, target i = column) of one inter-layer
    (default the last) as a report.Matrix (N_src, N_dst), thesis Figs. 5-7: report.write_matrix writes
    NAME.csv (diagonal = roots) and NAME.png (diagonal blank, so that the connectors' contrast shows)."""
    mats = connector_matrices(model)  # one (N_src, N_dst) per inter-layer
    if not mats:
        raise ValueError("connector_heatmap: the model has no inter-layer (is it an icnn model?)")
    if len(task_names) != mats[0].shape[0]:
        raise ValueError(f"connector_heatmap: {len(task_names)} task names for {mats[0].shape[0]} subnetworks")
    j = range(1, len(mats) + 1)[layer]  # 1-based number of the inter-layer
    return Matrix(name, mats[layer].astype(float), task_names, task_names,
                  title=f"sum |W(source->target)|, inter-layer {j} of {len(mats)} (diagonal = roots, omitted)",
                  xlabel="target subnetwork", ylabel="source subnetwork", hide_diagonal=True, corner="source")
