"""Interconnected neural network (ICNN; Ramabaja 2018, "Interconnected Neural Networks for Multi Task
Learning", thesis 000, sections 3 and 6).

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
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..nn.interconnected import InterLayer, connector_l1, connector_matrices
from ..nn.mlp import activation, mlp_params
from ..registry import register_method
from ..report import heatmap, write_csv
from ..tasks import Task, mean_loss
from ..train import Hooks


@dataclass
class ICNNConfig:
    widths: tuple[int, ...] = (128, 64)  # units per subnetwork; widths[1:] are inter-layers (>= 2 widths)
    activation: str = "relu"
    dropout: float = 0.25
    isolate: bool = True  # the thesis's backward rule; false = plain jointly trained network (ablation)
    targets: tuple[str, ...] = ()  # task names that receive connectors (section 6.1); empty = every task
    connector_l1: float = 0.0  # lambda of the L1 penalty on connector weights


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

    def write_artifacts(self, run_dir: Path) -> dict:
        """Every run directory gets the last inter-layer's connector heatmap (connectors.csv/.png)."""
        paths = connector_heatmap(self, [t.name for t in self.tasks], Path(run_dir) / "connectors")
        return {"connector_heatmap": [p.name for p in paths]}

    def root_params_per_subnetwork(self, task: int = 0) -> int:
        """Root weights and biases of one subnetwork (first layer, inter-layer roots, head): the size of
        the thesis's NN2 STL network."""
        d = self.first.in_features
        return mlp_params(d, self.widths, self.tasks[task].outputs)


class ConnectorL1(Hooks):
    """Adds lam * sum |connector weights| (nn/interconnected.connector_l1) to the mean task loss."""

    def __init__(self, lam: float):
        self.lam = lam

    def training_step(self, trainer, x, y) -> float:
        out = trainer.model(x)
        loss = mean_loss(trainer.tasks, out, y, trainer.task_weights)
        total = loss + self.lam * connector_l1(trainer.model)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.before_optimizer_step(trainer)
        trainer.optimizer.step()
        return float(loss.detach())  # the task loss, comparable with runs without the penalty


@register_method("icnn", ICNNConfig, "interconnected subnetworks, one per task, with gradient isolation (thesis 000)",
                 multi_input=False)
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: ICNNConfig):
    inputs = sorted({t.input for t in tasks})
    if len(inputs) != 1:
        raise ConfigError(f"icnn needs every task to read the same input, got inputs {inputs}; "
                          "train each input's tasks separately or use hard_sharing")
    if len(cfg.widths) < 2 or min(cfg.widths) < 1:
        raise ConfigError(f"icnn widths={','.join(map(str, cfg.widths))}: need at least two positive widths "
                          "(the second and later are inter-layers), e.g. widths=128,64")
    if cfg.connector_l1 < 0:
        raise ConfigError(f"connector_l1={cfg.connector_l1}: the penalty must be >= 0")
    names = [t.name for t in tasks]
    targets = None
    if cfg.targets:
        unknown = [t for t in cfg.targets if t not in names]
        if unknown:
            raise ConfigError(f"targets={','.join(cfg.targets)}: unknown task(s) {unknown}; tasks are {', '.join(names)}")
        targets = [names.index(t) for t in cfg.targets]
    model = ICNN(tasks, math.prod(input_shapes[inputs[0]]), tuple(cfg.widths), cfg.activation, cfg.dropout,
                 cfg.isolate, targets)
    return (model, ConnectorL1(cfg.connector_l1)) if cfg.connector_l1 > 0 else model


def connector_heatmap(model: nn.Module, task_names: list[str], path_stem: Path | str,
                      layers: str = "last") -> list[Path]:
    """Write the sum of |W(k->i)| for every ordered pair (source k = row, target i = column) of each
    inter-layer as PATH_STEM[_layerJ].csv and .png (thesis Figs. 5-7). layers: "last" or "all".
    The CSV keeps the diagonal (root weights); the PNG leaves it blank so the connectors' contrast shows.
    Returns the written paths."""
    mats = connector_matrices(model)  # one (N_src, N_dst) per inter-layer
    if not mats:
        raise ConfigError("connector_heatmap: the model has no inter-layer (is it an icnn model?)")
    if layers not in ("last", "all"):
        raise ConfigError(f"layers={layers!r}: use 'last' or 'all'")
    if len(task_names) != mats[0].shape[0]:
        raise ConfigError(f"connector_heatmap: {len(task_names)} task names for {mats[0].shape[0]} subnetworks")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    picks = [(len(mats), mats[-1])] if layers == "last" else list(enumerate(mats, start=1))
    written = []
    for j, m in picks:
        s = stem if layers == "last" else stem.with_name(f"{stem.name}_layer{j}")
        write_csv(s.with_suffix(".csv"), ("source", *task_names),
                  [(src, *(float(v) for v in row)) for src, row in zip(task_names, m)])
        shown = m.astype(float).copy()
        np.fill_diagonal(shown, np.nan)
        heatmap(shown, task_names, task_names, s.with_suffix(".png"),
                title=f"sum |W(source->target)|, inter-layer {j} of {len(mats)} (diagonal = roots, omitted)",
                xlabel="target subnetwork", ylabel="source subnetwork")
        written += [s.with_suffix(".csv"), s.with_suffix(".png")]
    return written
