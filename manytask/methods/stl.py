"""Single-task learning: one independent MLP per task, nothing shared (the baseline every MTL method
must beat). With params_per_task > 0 each task's hidden layers get the one width that gives that many
parameters: the "NN2 STL" of Ramabaja (Interconnected Neural Networks for Multi Task Learning, 2018,
section 4), matched to the root weights of an ICNN subnetwork.

The N networks run as one batched computation (nn/batched.py): tasks whose networks have the same shape
signature (input, input size, hidden widths, output width) form one group whose weights are stored side by
side, a table (in, n, out) per layer, so a step is one GEMM (first layer, shared input) or grouped GEMM (the
layers above it) per layer and group instead of N modules (a group whose largest table would exceed
GROUP_BYTES is split into several). The networks stay
independent: no weight is shared and the gradient of one task's loss reaches only its own network. The
floating-point work is that of N separate networks, except on a mostly-zero input (a fingerprint): the
first layers then sum the weight rows of its nonzero entries (nn.batched.SparseRows, made once per input
for all groups) instead of a dense GEMM. The loss of all tasks is a few stacked operations (STLHooks:
tasks.stacked_mean_loss). See benchmarks/stl.py for the step time against N x one network.
Initial weights are drawn in the order N separately built mlp() modules draw them, so a seed gives the
same initial networks (bit for bit) as N nn.Module MLPs; weights saved in that per-task layout (keys
nets.<task>.<i>.weight) load into this one. Dropout multipliers have F.dropout's distribution (keep
probability rounded to 2**-16) in one fast draw for all tasks (nn.batched.dropout_multipliers), not the
modules' random stream.

Many tasks: max_params caps the parameters of all N networks together (default 32 M, i.e. 128 MB of fp32
weights; training holds weights, gradients, two Adam moments and the best weights, about 5 copies). When
N networks at the given widths would exceed it, every hidden width of every task is scaled by one common
factor, the largest that keeps the total within the cap (widths at least 1). At the defaults (widths=512,
2048-bit fingerprints) the cap is reached beyond 30 tasks: Tox21 (12), SIDER (27) and MUV (17) keep width
512, ToxCast's 617 assays get width 25 each. max_params=0 turns the cap off.

Molecule graphs (data.encoder=dmpnn): single-task networks share nothing, so every task gets its own
learned D-MPNN (nn/dmpnn.py, the encoder_* keys) below its own MLP: y_t = mlp_t(dmpnn_t(graph)), plain
modules (SingleTaskGraphNets), not the batched path above, which stays the path of every other input. That
is N encoders: N times the encoder's parameters (0.23 M each at encoder_hidden=300) and N message passings
per step where hard_sharing and icnn run one. A build says so in one line; above GRAPH_ENCODERS_UP_TO tasks
(nn/dmpnn.py) it is a ConfigError naming the alternatives (one shared D-MPNN, or fingerprints).

Several processes (torchrun): plain data parallelism; every network's gradients are averaged by DDP.
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import ConfigError, option
from ..data.graphs import graph_dims
from ..nn.batched import BatchedMLP, dropout_multipliers, shared_input
from ..nn.dmpnn import DMPNNConfig, check_per_task_encoders, encoded_width, standardise_descriptors, with_encoder
from ..nn.mlp import Activation, mlp, mlp_params, width_for_params
from ..registry import register_method
from ..tasks import Task, module_key, stacked_mean_loss
from ..train import Hooks, Trainer


# Largest stacked fp32 weight of one group: bigger shape groups are split. Adam's temporaries (as large as a
# parameter) then stay below glibc's largest mmap threshold (32 MiB) and are recycled instead of being
# page-faulted in every step: `benchmarks/stl.py --sizes 100 --phases --group-mib 1000` (one 128 MB weight)
# measured an Adam step of 385 ms, 77 ms with the default 16 MiB groups (one thread).
GROUP_BYTES = 16 * 2**20

log = logging.getLogger("manytask")


@dataclass
class STLConfig(DMPNNConfig):
    widths: tuple[int, ...] = option((128,), "hidden widths of every task's network", low=1, min_len=1,
                                     search=("choice", ((128,), (256,), (512,), (256, 128))))
    activation: Activation = option("relu", "activation after every hidden layer")
    dropout: float = option(0.288, "dropout probability after every hidden layer", low=0, high=1, high_open=True,
                             search=("float", 0.0, 0.5))
    params_per_task: int = option(0, "> 0: every task gets len(widths) hidden layers of the one width that gives "
                                     "this many parameters; 0: the widths as given", low=0)
    max_params: int = option(32_000_000, "cap on the parameters of all tasks' networks together: above it every "
                                         "hidden width is scaled down by one common factor (ToxCast's 617 tasks: "
                                         "width 25); 0: no cap", low=0)
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 stl` chose: docs/tuning-tox21.md
    # weight_decay: of each network's own objective (STLHooks); the tuned 1e-4 under Tox21's 12-task mean
    train_defaults: ClassVar[dict] = {"batch_size": 32, "lr": 2.71e-3, "weight_decay": 12 * 1e-4}


class SingleTaskNets(nn.Module):
    """N independent MLPs, one per task, run as one batched MLP per shape signature.

    forward(x) -> {task: (batch, task.outputs)} where x is (batch, *shape) or {input: (batch, *shape)}.
    widths: {task name: its hidden widths}. groups[g] is a BatchedMLP over the tasks members[g].
    """

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: dict[str, tuple[int, ...]],
                 act: str, dropout: float):
        super().__init__()
        self.tasks, self.widths, self.act, self.dropout = tasks, widths, act, dropout
        self.in_dims = {t.name: math.prod(input_shapes[t.input]) for t in tasks}
        by_signature: dict[tuple, list[Task]] = {}
        for t in tasks:
            by_signature.setdefault((t.input, self.in_dims[t.name], tuple(widths[t.name]), t.outputs), []).append(t)
        self.members, shapes = [], []
        for (inp, in_dim, ws, out), ts in by_signature.items():
            dims = (in_dim, *ws, out)
            per_group = max(1, GROUP_BYTES // (4 * max(a * b for a, b in zip(dims[:-1], dims[1:]))))
            for start in range(0, len(ts), per_group):
                self.members.append(ts[start:start + per_group])
                shapes.append((in_dim, ws, out))
        self.place = {t.name: (g, j) for g, ts in enumerate(self.members) for j, t in enumerate(ts)}  # group, slot
        self.order = {t.name: i for i, t in enumerate(tasks)}
        self.first = [self.order[ts[0].name] for ts in self.members]  # index of each group's first task
        # whether a group's tasks are consecutive in task order (one signature: every group)
        self.consecutive = [[self.order[t.name] for t in ts] == list(range(i, i + len(ts)))
                            for ts, i in zip(self.members, self.first)]
        self.groups = nn.ModuleList(BatchedMLP(len(ts), in_dim, ws, act, dropout, out_dim=out, reset=False)
                                    for ts, (in_dim, ws, out) in zip(self.members, shapes))
        for t in tasks:  # task by task, as N mlp() modules built one after the other
            g, j = self.place[t.name]
            self.groups[g].reset_task(j)
        self.register_load_state_dict_pre_hook(_from_per_task_layout)

    def _masks(self, x) -> list[list[torch.Tensor]]:
        """Dropout multipliers per group and hidden layer, (n, batch, width): nn.batched.dropout_multipliers
        (F.dropout's distribution, not its random stream), in one draw for all tasks, laid out task by task
        and layer by layer. A group of consecutive tasks takes its rows as one slice of the draw."""
        batch = {t.input: t.select(x).shape[0] for t in self.tasks}
        sizes = [batch[t.input] * sum(self.widths[t.name]) for t in self.tasks]
        starts = [0, *itertools.accumulate(sizes)]  # task i's draws: starts[i]:starts[i + 1]
        x0 = self.tasks[0].select(x)
        kept = dropout_multipliers(starts[-1], self.dropout, x0.device, x0.dtype)
        masks = []
        for ts, first, consecutive in zip(self.members, self.first, self.consecutive):
            b, ws = batch[ts[0].input], self.widths[ts[0].name]
            if consecutive:
                rows = kept[starts[first]:starts[first + len(ts)]].view(len(ts), -1)
            else:
                rows = torch.stack([kept[starts[i]:starts[i + 1]] for i in map(self.order.get, (t.name for t in ts))])
            rows = rows.to(ts[0].select(x).dtype)  # (n, b * sum(ws))
            masks.append([m.view(len(ts), b, w) for m, w in zip(rows.split([b * w for w in ws], 1), ws)])
        return masks

    def forward(self, x):
        masks = self._masks(x) if self.training and self.dropout > 0 else [None] * len(self.groups)
        inputs, out = {}, {}  # inputs: each input once as the groups' first layers take it (shared_input)
        for net, ts, m in zip(self.groups, self.members, masks):
            if ts[0].input not in inputs:
                inputs[ts[0].input] = shared_input(ts[0].select(x).flatten(1))
            y = net(inputs[ts[0].input], m)  # (n, batch, outputs)
            out.update(zip((t.name for t in ts), y.unbind(0)))
        return {t.name: out[t.name] for t in self.tasks}

    def task_network(self, name: str) -> nn.Sequential:
        """Task `name`'s network as a standalone mlp() holding a copy of its weights (for export or inspection;
        the copy is not trained with this model). It leaves the random stream as it was."""
        g, j = self.place[name]
        with torch.random.fork_rng(devices=[]):  # the draws of mlp()'s own initialisation are undone
            net = mlp(self.in_dims[name], self.widths[name], self.act, self.dropout, out_dim=self.groups[g].out_dim)
        net = net.to(self.groups[g].layers[0].weight.device)
        with torch.no_grad():
            for lin, layer in zip((m for m in net if isinstance(m, nn.Linear)), self.groups[g].layers):
                lin.weight.copy_(layer.weight[j].T)
                lin.bias.copy_(layer.bias[j])
        return net

    @property
    def nets(self) -> nn.ModuleDict:
        """{module_key(task): task_network(task)}, keyed as the per-task layout's state_dict."""
        return nn.ModuleDict({module_key(t.name): self.task_network(t.name) for t in self.tasks})


def _from_per_task_layout(module: SingleTaskNets, state_dict, prefix, *_):
    """Load hook: weights saved by N separate mlp() modules (nets.<task key>.<index>.weight (out, in) and .bias)
    become the stacked groups.<g>.layers.<l>.table (in, n, out) and .bias (n, out). Converts only when every
    task's every layer is present; anything else is left for load_state_dict to report."""
    old = prefix + "nets."
    if not any(k.startswith(old) for k in state_dict):
        return
    linears = {}  # task -> [(index, weight key, bias key)] in layer order
    for t in module.tasks:
        head = f"{old}{module_key(t.name)}."
        idx = sorted(int(k[len(head):].split(".")[0]) for k in state_dict if k.startswith(head) and k.endswith(".weight"))
        linears[t.name] = [(f"{head}{i}.weight", f"{head}{i}.bias") for i in idx]
    for g, (net, ts) in enumerate(zip(module.groups, module.members)):
        if any(len(linears[t.name]) != len(net.layers) or any(k not in state_dict for pair in linears[t.name] for k in pair)
               for t in ts):
            return
    for g, (net, ts) in enumerate(zip(module.groups, module.members)):
        for layer in range(len(net.layers)):
            keys = [linears[t.name][layer] for t in ts]
            state_dict[f"{prefix}groups.{g}.layers.{layer}.table"] = torch.stack([state_dict.pop(w).T for w, _ in keys], 1)
            state_dict[f"{prefix}groups.{g}.layers.{layer}.bias"] = torch.stack([state_dict.pop(b) for _, b in keys])


def capped_widths(widths: dict[str, tuple[int, ...]], in_dims: dict[str, int], outputs: dict[str, int],
                  max_params: int) -> dict[str, tuple[int, ...]]:
    """The widths scaled by the largest common factor s in (0, 1] (each width max(1, floor(w * s))) that keeps
    the networks' total parameter count within max_params; unchanged when they fit or max_params is 0."""
    def scaled(s):
        return {k: tuple(max(1, math.floor(w * s)) for w in ws) for k, ws in widths.items()}

    def total(ws):
        return sum(mlp_params(in_dims[k], w, outputs[k]) for k, w in ws.items())

    if max_params == 0 or total(widths) <= max_params:
        return widths
    smallest = scaled(0.0)
    if total(smallest) > max_params:
        raise ConfigError(f"max_params={max_params}: {len(widths)} networks need at least {total(smallest)} parameters "
                          f"even with width 1; raise max_params or set max_params=0 (no cap)")
    lo, hi = 0.0, 1.0  # total(scaled(lo)) <= max_params < total(scaled(hi))
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(scaled(mid)) <= max_params else (lo, mid)
    return scaled(lo)


class SingleTaskGraphNets(nn.Module):
    """N independent networks, one per task, for inputs that include molecule graphs: a task reading a
    graph input has its own D-MPNN, nets[task] = Sequential(dmpnn_t, mlp(dmpnn_t.out_dim, widths, outputs));
    a task reading any other input has mlp(d, widths, outputs) alone.

    forward(x) -> {task: (batch, task.outputs)}; x is a GraphBatch or {input: GraphBatch or (batch, *shape)}.
    """

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], widths: dict[str, tuple[int, ...]],
                 act: str, dropout: float, graphs: DMPNNConfig):
        super().__init__()
        self.tasks = tasks

        self.nets = nn.ModuleDict({module_key(t.name): with_encoder(  # a new D-MPNN per graph task
            t.input, input_shapes[t.input], graphs, lambda d, t=t: mlp(d, widths[t.name], act, dropout, out_dim=t.outputs))
            for t in tasks})

    def forward(self, x):
        return {t.name: self.nets[module_key(t.name)](t.select(x)) for t in self.tasks}


class STLHooks(Hooks):
    """The default training step, with the loss of all tasks in a few stacked operations
    (tasks.stacked_mean_loss) instead of several operations per task. Every weight serves one task, so its
    weight decay is that of its task's own objective (make_optimizer's "tasks" group: weight_decay / N with
    Adam's L2), as for N networks trained alone. Before training, every task's D-MPNN that takes
    descriptors standardises them with the training split."""

    def parameters(self, model: nn.Module):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "tasks": len(model.tasks)}]

    def before_training(self, trainer: Trainer) -> None:
        standardise_descriptors(trainer.model, trainer.data)

    def loss(self, trainer: Trainer, out, y: dict[str, torch.Tensor]) -> torch.Tensor:
        return stacked_mean_loss(trainer.tasks, out, y, trainer.batch_weights)


@register_method("stl", STLConfig, "single-task baseline: one independent MLP per task (and D-MPNN for graphs)")
def build_method(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]],
                 cfg: STLConfig) -> tuple[SingleTaskNets | SingleTaskGraphNets, STLHooks]:
    return build(tasks, input_shapes, cfg), STLHooks()


def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]],
          cfg: STLConfig) -> SingleTaskNets | SingleTaskGraphNets:
    graphs = any(graph_dims(input_shapes[t.input]) is not None for t in tasks)  # a task reads molecule graphs
    if graphs:
        check_per_task_encoders("stl", tasks, input_shapes, cfg)
    in_dims = {t.name: encoded_width(input_shapes[t.input], cfg) for t in tasks}  # the input of each task's MLP
    widths = {}
    for t in tasks:
        if cfg.params_per_task > 0:
            w = width_for_params(in_dims[t.name], len(cfg.widths), t.outputs, cfg.params_per_task)
            widths[t.name] = (w,) * len(cfg.widths)
        else:
            widths[t.name] = tuple(cfg.widths)
    widths = capped_widths(widths, in_dims, {t.name: t.outputs for t in tasks}, cfg.max_params)
    if graphs:
        return SingleTaskGraphNets(tasks, input_shapes, widths, cfg.activation, cfg.dropout, cfg)
    return SingleTaskNets(tasks, input_shapes, widths, cfg.activation, cfg.dropout)
