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

Many tasks. The dense inter-layer has N^2 blocks (12.5 GB for one 128 -> 64 inter-layer at N=617, ToxCast),
so above DENSE_UP_TO tasks every subnetwork reads only `connectors=k` source subnetworks (default
AUTO_CONNECTORS; `connectors=0` is this automatic rule, an explicit k < N-1 forces it at any N and k = N-1
is the dense layer at any N). The builder does
not see labels, so the `SourceRule` hooks choose the sources in before_training from the training split
(`sources=`): `correlation` the k tasks with the largest |Pearson correlation| of the labels over the
examples labelled for both (the phi coefficient for two binary tasks; pairs with fewer than MIN_JOINT such
examples score 0), `random` k uniform others (seeded by the training seed), `learned` the k largest
sum |W(k->i)| per destination of a dense ICNN trained `learn_epochs` epochs with the connector L1 (Ramabaja
2018, section 6.2: learn, then prune; only where the dense network fits in memory). The sources are a
persistent buffer of each inter-layer, so saved weights and resumed runs keep them.
Rule for large N: the per-subnetwork first layer is N * d * w0 weights, held five times in training
(weights, gradient, Adam's two moments, the best weights so far) and again in the checkpoint: at N=617,
d=2048 the default widths 128,64 make that 0.65 GB per copy and the run exceeds 5 GB, so from a few hundred
tasks on N * w0 is kept within max_units (20,000): above it every width is scaled by one factor,
w -> max(1, floor(w * max_units / (N * w0))), which gives widths=32,16 for ToxCast's 617 tasks (docs/icnn.md
has the measured peak memory); up to 156 tasks the default widths are unchanged.

A molecule graph input (data.encoder=dmpnn) is first encoded by ONE learned D-MPNN (nn/dmpnn.py, the
encoder_* keys) below the subnetworks: x = dmpnn(graph), (batch, encoder_hidden [+ descriptors]), and the
subnetworks read x as they read a fingerprint. Gradient isolation starts above the encoder: every task's
loss trains the encoder, as it trains hard sharing's trunk, and isolation holds for everything from the
first layer up. Ramabaja (2018) isolates the task-specific layers over a shared input; a D-MPNN inside each
isolated subnetwork would multiply the encoder (its parameters and its message passing) N times, which is
single-task learning's cost (stl with data.encoder=dmpnn builds exactly that).

(*) every subnetwork's input layer is the same x, so connectors from the input would only add a second
copy of the root weight (W(1,i) x + sum_k W(1,k->i) x = (sum of them) x); the first layer has roots only.

Magnitude pruning after training (section 6.2) and the connector heatmap (Figs. 5-7) work on a trained
model: `prune_connectors` in nn/interconnected.py and `connector_heatmap` below; the experiments in
experiments/icnn.py call them.

Several processes (torchrun): the isolation is in each process's own backward (the connector paths'
autograd functions in nn/interconnected.py treat the sources as detached), so each process gives task i's
loss no gradient outside subnetwork i's roots, biases and connectors into i, and DDP's average of such
gradients has the same zeros. The sources are chosen from the whole training split, which
every process holds, with the seeded generator: the same connectors everywhere.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar, Literal

import torch
from torch import nn

from ..config import ConfigError, option
from ..nn.dmpnn import DMPNN, DMPNNConfig, encoded_input, standardise_descriptors
from ..nn.interconnected import InterLayer, connector_l1, connector_matrices, interlayers, random_sources, top_sources
from ..nn.mlp import Activation, activation, mlp_params
from ..registry import register_method
from ..report import Matrix
from ..tasks import Task
from ..train import Hooks, Trainer

log = logging.getLogger("manytask")

DENSE_UP_TO = 64  # connectors=0: dense inter-layers up to this many tasks
AUTO_CONNECTORS = 16  # connectors=0 above DENSE_UP_TO tasks: sources per subnetwork
MIN_JOINT = 10  # sources=correlation: fewer examples labelled for both tasks than this score 0
HEATMAP_UP_TO = 64  # more tasks: no connectors.png (report.heatmap's figure grows with N: 12 GB at N=617)


@dataclass
class ICNNConfig(DMPNNConfig):
    widths: tuple[int, ...] = option((128, 64), "units per subnetwork; the second and later widths are inter-layers "
                                     "(scaled down at many tasks, see max_units)", low=1, min_len=2,
                                     search=("choice", ((64, 32), (128, 64), (256, 128))))
    max_units: int = option(20_000, "cap on N*w0, the first layer's units over all N subnetworks (its weights are "
                                    "N*w0*d): above it every width is scaled by one factor; 0 = no cap", low=0)
    activation: Activation = option("relu", "activation after every layer")
    dropout: float = option(0.308, "dropout probability after every layer", low=0, high=1, high_open=True,
                             search=("float", 0.0, 0.5))
    isolate: bool = option(True, "gradient isolation (the thesis's backward rule); false trains the same network "
                                 "jointly (ablation)")
    targets: tuple[str, ...] = option((), "task names that receive connectors (section 6.1); empty: every task")
    connector_l1: float = option(0.0, "lambda of the L1 penalty on connector weights", low=0,
                                 search=("choice", (0.0, 1e-5, 1e-4, 1e-3)))
    connectors: int = option(0, f"source subnetworks feeding each subnetwork (sparse connectors, memory and time "
                                f"O(N*k)); N-1 is the dense layer; 0 = auto: N-1 up to {DENSE_UP_TO} tasks, else "
                                f"{AUTO_CONNECTORS}", low=0)
    sources: Literal["correlation", "random", "learned"] = option(
        "correlation", "how sparse connectors choose their sources, on the training split: largest |label "
                       "correlation|, random, or the largest blocks of a dense ICNN trained learn_epochs epochs")
    learn_epochs: int = option(3, "sources=learned: epochs of the dense ICNN (with connector_l1) that picks them", low=1)
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 icnn` chose: docs/tuning-tox21.md
    # (trained up to 100 epochs, not the tuning's 40, at which its runs were still improving: docs/tuning-tox21.md)
    # weight_decay: of each subnetwork's own objective (ICNNHooks); the tuned 1e-3 under Tox21's 12-task mean
    train_defaults: ClassVar[dict] = {"batch_size": 32, "lr": 2.63e-4, "weight_decay": 12 * 1e-3}


class ICNN(nn.Module):
    """forward(x: (batch, *shape)) -> {task: (batch, task.outputs)}; every task reads the same input.
    encoder: a DMPNN for a graph input (x a GraphBatch of `batch` molecules), shared by every subnetwork and
    outside the isolation; in_dim is then its out_dim."""

    def __init__(self, tasks: list[Task], in_dim: int, widths: tuple[int, ...], act: str = "relu",
                 dropout: float = 0.0, isolate: bool = True, targets: list[int] | None = None,
                 connectors: int | None = None, encoder: DMPNN | None = None):
        super().__init__()
        self.tasks, self.widths, self.isolate = tasks, tuple(widths), isolate
        N = len(tasks)
        if encoder is not None and encoder.out_dim != in_dim:
            raise ValueError(f"in_dim={in_dim}, but the encoder gives {encoder.out_dim} features")
        self.encoder = encoder
        self.first = nn.Linear(in_dim, N * widths[0])  # N root weights from the shared input, side by side
        self.inter = nn.ModuleList(InterLayer(N, a, b, isolate, targets, connectors)
                                   for a, b in zip(widths[:-1], widths[1:]))
        self.act = activation(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.ModuleList(nn.Linear(widths[-1], t.outputs) for t in tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.flatten(1) if self.encoder is None else self.encoder(x)  # (batch, d)
        a = self.drop(self.act(self.first(x))).reshape(x.shape[0], len(self.tasks), self.widths[0])  # (batch, N, w0)
        for layer in self.inter:
            a = self.drop(self.act(layer(a)))  # (batch, N, w_j)
        return {t.name: head(a[:, i]) for i, (t, head) in enumerate(zip(self.tasks, self.heads))}  # (batch, outputs)

    def artifacts(self) -> tuple[dict, list[Matrix]]:
        """The last inter-layer's connector heatmap: every run directory gets connectors.csv/.png. Above
        HEATMAP_UP_TO tasks, results.json gets each task's strongest sources instead (strongest_sources)."""
        names = [t.name for t in self.tasks]
        if len(names) <= HEATMAP_UP_TO:
            return {}, [connector_heatmap(self, names)]
        return {"connector_sources": strongest_sources(self, names)}, []

    def root_params_per_subnetwork(self, task: int = 0) -> int:
        """Root weights and biases of one subnetwork (first layer, inter-layer roots, head): the size of
        the thesis's NN2 STL network."""
        d = self.first.in_features  # with a graph input: the shared encoder's out_dim (the encoder not counted)
        return mlp_params(d, self.widths, self.tasks[task].outputs)


class ICNNHooks(Hooks):
    """The loss is the mean task loss plus lam * sum |connector weights| (nn/interconnected.connector_l1);
    the logged train loss therefore includes the penalty. With gradient isolation every weight above a graph
    encoder serves one task, so its weight decay is that of its task's own objective (make_optimizer's
    "tasks" groups: weight_decay / N with Adam's L2); the shared encoder's is weight_decay. Before training,
    a graph encoder that takes descriptors standardises them with the training split
    (nn.dmpnn.standardise_descriptors)."""

    def __init__(self, lam: float):
        self.lam = lam

    def parameters(self, model: "ICNN"):
        own, shared = [], []
        for name, p in model.named_parameters():
            (own if model.isolate and not name.startswith("encoder.") else shared).append(p)
        return [g for g in ({"params": own, "tasks": len(model.tasks)}, {"params": shared}) if g["params"]]

    def before_training(self, trainer) -> None:
        standardise_descriptors(trainer.model, trainer.data)

    def loss(self, trainer, out, y) -> torch.Tensor:
        if self.lam == 0:
            return super().loss(trainer, out, y)
        return super().loss(trainer, out, y) + self.lam * connector_l1(trainer.model)


def label_correlation(labels: torch.Tensor, min_joint: int = MIN_JOINT) -> torch.Tensor:
    """labels: (n, N) with NaN = missing -> (N, N) |Pearson correlation| of every pair of columns over the rows
    labelled in both (for 0/1 labels the phi coefficient); 0 where fewer than min_joint rows are labelled in
    both or a column is constant on them."""
    known = ~torch.isnan(labels)
    y, m = torch.where(known, labels, 0.0).double(), known.double()  # (n, N)
    count = m.T @ m  # (N, N): rows labelled in both
    sx, sxx, sxy = y.T @ m, (y * y).T @ m, y.T @ y  # sx[i, j] = sum of y_i over rows labelled in i and j
    c = count.clamp(min=1)
    cov = sxy - sx * sx.T / c
    var_i, var_j = sxx - sx * sx / c, (sxx - sx * sx / c).T
    r = cov / (var_i * var_j).sqrt()
    ok = (count >= min_joint) & (var_i > 1e-12) & (var_j > 1e-12)
    return torch.where(ok, r.abs(), torch.zeros_like(r)).float()


class SourceRule(ICNNHooks):
    """Chooses the sources of every sparse inter-layer in before_training (see the module docstring); the
    loss is ICNNHooks'. A resumed run chooses again (for `learned`: trains the dense twin again), then the
    saved buffers replace the choice (Trainer.fit loads the state after before_training)."""

    def __init__(self, lam: float, rule: str, dense_twin: Callable[[], nn.Module], learn_epochs: int):
        super().__init__(lam)
        self.rule, self.dense_twin, self.learn_epochs = rule, dense_twin, learn_epochs

    def before_training(self, trainer) -> None:
        super().before_training(trainer)
        layers = interlayers(trainer.model)
        N, k = layers[0].n_tasks, layers[0].sources.shape[1]
        names = [t.name for t in trainer.model.tasks]
        if self.rule == "correlation":
            scores = label_correlation(torch.stack([trainer.data.train.labels[n] for n in names], dim=1))
            chosen = [top_sources(scores, k)] * len(layers)
        elif self.rule == "random":
            chosen = [random_sources(N, k, torch.Generator().manual_seed(trainer.cfg.seed))] * len(layers)
        else:
            chosen = [top_sources(lay.blocks_abs_sum(), k) for lay in interlayers(self.learned(trainer))]
        for lay, src in zip(layers, chosen):
            lay.set_sources(src[lay.targets.cpu()])

    def learned(self, trainer) -> nn.Module:
        """A dense twin trained learn_epochs epochs with this loss, the global random state left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer.cfg.seed)
            dense = self.dense_twin()
            cfg = replace(trainer.cfg, epochs=self.learn_epochs, patience=0, progress=False, val_every=self.learn_epochs)
            Trainer(dense, trainer.data, cfg, ICNNHooks(self.lam), tasks=trainer.tasks).fit()
        return dense


def capped_widths(widths: tuple[int, ...], n_tasks: int, max_units: int) -> tuple[int, ...]:
    """widths scaled by one factor so that n_tasks * widths[0] <= max_units (unchanged within it, or when
    max_units is 0); says so in one line when it scales."""
    if max_units == 0 or n_tasks * widths[0] <= max_units:
        return widths
    scale = max_units / (n_tasks * widths[0])
    scaled = tuple(max(1, math.floor(w * scale)) for w in widths)
    log.warning("icnn: %d tasks x %d units exceed max_units=%d: widths %s -> %s (set widths= or max_units=0 to choose)",
                n_tasks, widths[0], max_units, ",".join(map(str, widths)), ",".join(map(str, scaled)))
    return scaled


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
    N = len(tasks)
    if cfg.connectors > N - 1:
        raise ConfigError(f"connectors={cfg.connectors}: a subnetwork has only {N - 1} others to read from; "
                          f"use connectors=1..{N - 1}, or 0 for the automatic rule")
    k = cfg.connectors or (AUTO_CONNECTORS if N > DENSE_UP_TO else N - 1)
    k = k if k < N - 1 else None  # all N-1 others: the dense layer

    widths = capped_widths(tuple(cfg.widths), N, cfg.max_units)

    def make(connectors: int | None) -> ICNN:
        encoder, in_dim = encoded_input(inputs[0], input_shapes[inputs[0]], cfg)  # a D-MPNN for a graph input
        return ICNN(tasks, in_dim, widths, cfg.activation, cfg.dropout, cfg.isolate, targets, connectors, encoder)
    try:
        model = make(k)
    except ValueError as e:  # e.g. targets= with a single task: no other subnetwork to connect from
        raise ConfigError(str(e)) from None
    if k is not None:
        return model, SourceRule(cfg.connector_l1, cfg.sources, lambda: make(None), cfg.learn_epochs)
    return model, ICNNHooks(cfg.connector_l1)


def strongest_sources(model: nn.Module, task_names: list[str], k: int = AUTO_CONNECTORS) -> dict[str, dict[str, float]]:
    """{target task: {source task: sum |W(source->target)|}} of the last inter-layer, the k strongest sources
    of each task, strongest first (at most the sources a sparse layer has)."""
    last = interlayers(model)[-1]
    mat = last.blocks_abs_sum().cpu()  # (N_src, N_dst)
    k = min(k, len(task_names) - 1 if last.full else last.sources.shape[1])
    top = top_sources(mat, k).tolist()  # (N_dst, k)
    return {task_names[i]: {task_names[j]: float(mat[j, i]) for j in row} for i, row in enumerate(top)}


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
