"""RSN2: disjoint task subnetworks in one network (Renn, Sotnek, Harvey, Caffo, The Multiple Subnetwork
Hypothesis: Enabling Multidomain Learning by Isolating Task-Specific Subnetworks in Feedforward Neural
Networks, 2022).

Every layer is a task-masked layer (manytask/nn/masked.py): subnetwork s computes

    h_{l+1} = relu(h_l (W_{l,s} * M_{l,s}) + b_{l,s} * m_{l,s}),   y_s = h_L (W_{L,s} * M_{L,s}) + b_{L,s}   (Eq. 1)

with masks disjoint over s (Eq. 3), chosen once after initialisation by Algorithm 1: for each subnetwork
in turn, |d loss_s / d W_s| on a batch of its data, positions owned by earlier subnetworks excluded, keep
the top fraction `keep` of each layer (pruning rate = 1 - keep); `criterion=magnitude` uses |W_s| instead.
`rounds=R` runs the same selection in R rounds, each subnetwork taking 1/R of its budget per round in
turn, so that the positions every subnetwork scores highest (the centre of an image) are shared out
rather than left to the first subnetworks (select_masks; rounds=1 is Algorithm 1).

A subnetwork serves one task (groups=task), all tasks of one input (groups=input, e.g. the 12 Tox21 assays),
or explicit groups (groups=name:a+b,c). The default groups=auto is groups=task up to max_subnets (16)
subnetworks; past that the tasks of each input are cut, in the data's order, into contiguous groups of
sizes differing by at most one, at most max_subnets in all (auto_groups), and a group's tasks share their
subnetwork as in hard sharing; keep=0 then means 0.8/S, not 1/S, so that a fifth of every shared layer
stays free and the last subnetwork still chooses its weights (GROUPED_FREE). build() logs what each task
gets in one line (capacity_line), e.g. for ToxCast's 617 assays: "617 tasks in 16 subnetworks of 38-39
tasks; each subnetwork keeps 5% of every layer it uses (head: 6 of 128 inputs per output unit), 20% of
the shared layers unused". copies=k gives each group k disjoint subnetworks
trained independently on the same tasks, their predictions averaged (an ensemble, experiment 1).
Inputs of different shapes get their own first layer (a "task-dedicated first layer", experiments 5-7);
inputs of one shape share it. A molecule graph input (data.encoder=dmpnn) gets a D-MPNN below its first
layer whose message matrices are masked layers too (nn.dmpnn.MaskedDMPNN): each subnetwork passes
messages with its own masked W_i, W_h, W_o, so subnetworks stay disjoint from the atoms up, at the
cost of one message passing per subnetwork and step (no shared encoder: a shared one would couple
them). The rest of the network is shared by all subnetworks; the head is a masked layer too (each
output unit of each subnetwork keeps `keep` of its inputs; output biases are per task).

Training (RSN2Hooks): only the subnetworks of the trained tasks are computed, each with its own loss;
masked positions and frozen subnetworks get exactly zero gradient, weight decay is applied inside the
trainable masks only (the optimizer's own weight decay is off; decoupled as AdamW's with optimizer=adamw,
an L2 gradient term with adam and sgd), and every stage builds a fresh optimizer,
so Adam/SGD momentum of frozen positions is zero: earlier subnetworks stay bit-identical. Continual
training is manytask.train.train_stages with the stages that `stage_tasks` names.
export() packs each layer into ONE tensor of a single-task layer's shape plus an owner index.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError, option
from ..data.base import MultiTaskData
from ..data.graphs import graph_dims
from ..nn.dmpnn import DMPNNConfig, MaskedDMPNN, standardise_descriptors
from ..nn.masked import MaskedConv2d, MaskedLayer, MaskedLinear, check_disjoint, masked_layers
from ..registry import register_method
from ..tasks import Task, initial_scale, mean_loss
from ..train import Hooks, Trainer

log = logging.getLogger("manytask")


@dataclass
class RSN2Config(DMPNNConfig):
    widths: tuple[int, ...] = option((256, 256), "fully connected widths; widths[0] is the first layer "
                                     "(one per input shape)", low=1, min_len=1,
                                     search=("choice", ((128, 128), (256, 128), (256, 256))))
    conv: tuple[int, ...] = option((), "3x3 conv channels before the FC layers (image inputs); empty = fully connected",
                                   low=1)
    pool_every: int = option(2, "2x2 max pooling after every pool_every conv layers", low=1)
    groups: str = option("auto", "what a subnetwork serves: auto (one task each, or, past max_subnets, the tasks of "
                         "each input in contiguous groups), task, input, or explicit groups name:taskA+taskB,taskC")
    max_subnets: int = option(16, "groups=auto: at most this many subnetworks (copies included; at least one per "
                              "input, and at most 1/keep when keep is set)", low=1)
    copies: int = option(1, "disjoint subnetworks per group, their predictions averaged (an ensemble)", low=1)
    keep: float = option(0.0, "fraction of each layer a subnetwork keeps (1 - pruning rate); 0 = 1 / subnetworks "
                         "(0.8 / subnetworks when groups=auto groups the tasks)", low=0, high=1,
                         search=("choice", (0.0, 0.02, 0.04, 0.06)))
    criterion: Literal["gradient", "magnitude"] = option(
        "magnitude", "mask score: |gradient| of the subnetwork's loss or |weight|",
        search=("choice", ("gradient", "magnitude")))
    mask_batch: int = option(512, "examples per subnetwork for the gradient criterion", low=1)
    rounds: int = option(1, "mask selection in rounds: each round every subnetwork, in turn, takes 1/rounds of "
                         "its share of each layer; 1 = the paper's Algorithm 1 (subnetwork after subnetwork)", low=1)
    init: Literal["auto", "he", "torch"] = option(
        "auto", "initial weights, uniform per subnetwork's slice: he = U(+-sqrt(6 / fan_in)), torch = U(+-1 / "
                "sqrt(fan_in)), nn.Linear's default, 1/sqrt(6) of he; biases zero. auto: torch when every task is a "
                "regression (he fits small regression tables instead of their trend: docs/rsn2.md), else he")
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 rsn2` chose: docs/tuning-tox21.md
    # but keep: the tuned 0.06 of each layer suits 12 subnetworks only; 0 fits any number of them
    train_defaults: ClassVar[dict] = {"batch_size": 32, "lr": 5.34e-4, "weight_decay": 1e-5}


def check_masks(model: nn.Module) -> None:
    """Eq. 3 on every masked layer; an overlap is a ConfigError naming the layer and the subnetworks."""
    try:
        check_disjoint(model)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def auto_groups(tasks: list[Task], budget: int) -> list[tuple[str, list[str]]]:
    """groups=auto: one subnetwork per task when there are at most `budget` tasks. Otherwise the tasks of
    each input, in the data's order, are cut into contiguous groups whose sizes differ by at most one:
    every input gets one group, and each further group (up to `budget` in all) goes to the input whose
    groups are largest (ties: the earlier input). Names: TASK for a group of one, tasksA-B (1-based
    positions among the input's tasks; INPUT:tasksA-B when there are several inputs)."""
    if len(tasks) <= budget:
        return [(t.name, [t.name]) for t in tasks]
    by_input = {g: [t.name for t in tasks if t.input == g] for g in dict.fromkeys(t.input for t in tasks)}
    sizes = [len(v) for v in by_input.values()]
    count = [1] * len(sizes)
    for _ in range(budget - len(sizes)):
        i = max(range(len(sizes)), key=lambda j: (sizes[j] / count[j], -j))
        if sizes[i] == count[i]:
            break
        count[i] += 1
    plan = []
    for (g, names), k in zip(by_input.items(), count):
        q, r = divmod(len(names), k)
        start = 0
        for j in range(k):
            chunk = names[start:start + q + (j < r)]
            label = f"tasks{start + 1}-{start + len(chunk)}"
            plan.append((chunk[0] if len(chunk) == 1 else label if len(by_input) == 1 else f"{g}:{label}", chunk))
            start += len(chunk)
    return plan


def plan_subnets(tasks: list[Task], groups: str, copies: int = 1, max_subnets: int = 16,
                 keep: float = 0.0) -> list[tuple[str, list[str]]]:
    """-> [(subnetwork name, [task names])]; copies > 1 gives names GROUP#0, GROUP#1, ...
    groups=auto (auto_groups) makes at most max(inputs, min(max_subnets, 1/keep) // copies) groups."""
    if copies < 1:
        raise ConfigError(f"copies={copies}: need at least 1 subnetwork per group")
    if max_subnets < 1:
        raise ConfigError(f"max_subnets={max_subnets}: need at least 1 subnetwork")
    names = [t.name for t in tasks]
    if groups == "auto":
        cap = min(max_subnets, math.floor(1 / keep + 1e-9)) if keep > 0 else max_subnets
        plan = auto_groups(tasks, max(1, cap // copies))
    elif groups == "task":
        plan = [(t.name, [t.name]) for t in tasks]
    elif groups == "input":
        inputs = list(dict.fromkeys(t.input for t in tasks))
        plan = [(g, [t.name for t in tasks if t.input == g]) for g in inputs]
    else:
        plan = []
        for item in filter(None, (s.strip() for s in groups.split(","))):
            label, _, joined = item.rpartition(":")
            members = [m.strip() for m in joined.split("+") if m.strip()]
            plan.append((label or "+".join(members), members))
        flat = [m for _, members in plan for m in members]
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise ConfigError(f"groups={groups}: unknown task(s) {unknown}; tasks are {', '.join(names)}")
        twice = sorted({m for m in flat if flat.count(m) > 1})
        if twice or set(flat) != set(names):
            raise ConfigError(f"groups={groups}: every task must be in exactly one group (twice: {twice}, "
                              f"missing: {sorted(set(names) - set(flat))}); or use groups=task / groups=input")
    by = {t.name: t for t in tasks}
    for label, members in plan:
        ins = sorted({by[m].input for m in members})
        if len(ins) > 1:
            raise ConfigError(f"group {label!r} mixes inputs {ins}; a subnetwork's tasks must read one input")
    if copies > 1:
        plan = [(f"{label}#{i}", members) for label, members in plan for i in range(copies)]
    return plan


class RSN2Net(nn.Module):
    """forward(x) -> {task: (batch_of_its_input, task.outputs)}; x is (batch, *shape) or {input: tensor}.

    forward_subnets(x, only) -> {subnetwork index: (batch, its outputs)}, every subnetwork separately.
    """

    def __init__(self, tasks: list[Task], input_shapes: dict[str, tuple[int, ...]],
                 subnets: list[tuple[str, list[str]]], widths: tuple[int, ...], conv: tuple[int, ...] = (),
                 pool_every: int = 2, encoder: dict | None = None):
        super().__init__()
        if not widths or min(widths) < 1:
            raise ConfigError(f"widths={widths}: rsn2 needs at least one positive hidden width, e.g. widths=128,128")
        if conv and (min(conv) < 1 or pool_every < 1):
            raise ConfigError(f"conv={conv}, pool_every={pool_every}: channels and pool_every must be >= 1")
        encoder = dict(encoder or {})  # a graph input's MaskedDMPNN keys: hidden, depth, aggregation, dropout
        self.arch = {"tasks": [asdict(t) for t in tasks], "input_shapes": {k: list(v) for k, v in input_shapes.items()},
                     "subnets": [[n, list(ms)] for n, ms in subnets], "widths": list(widths), "conv": list(conv),
                     "pool_every": pool_every, "encoder": encoder}  # everything to rebuild it (export/load_packed)
        by = {t.name: t for t in tasks}
        self.tasks = tasks
        self.subnet_names = [n for n, _ in subnets]
        self.subnet_tasks = [[by[m] for m in ms] for _, ms in subnets]
        self.subnet_out = [sum(t.outputs for t in ts) for ts in self.subnet_tasks]
        inputs = list(dict.fromkeys(ts[0].input for ts in self.subnet_tasks))
        self.streams = {g: [s for s, ts in enumerate(self.subnet_tasks) if ts[0].input == g] for g in inputs}
        shapes = list(dict.fromkeys(tuple(input_shapes[g]) for g in inputs))
        self.first_of = {g: shapes.index(tuple(input_shapes[g])) for g in inputs}
        # subnetworks of each first layer, and their index on that layer's task axis
        members = [[s for g in inputs if self.first_of[g] == i for s in self.streams[g]] for i in range(len(shapes))]
        self.first_local = [{s: j for j, s in enumerate(sorted(m))} for m in members]
        names = self.subnet_names
        first_names = [[names[s] for s in sorted(m)] for m in members]
        self.conv_mode, self.pool_every = bool(conv), pool_every
        graphs = {i: dims for i, shape in enumerate(shapes) if (dims := graph_dims(shape)) is not None}
        if graphs and conv:
            raise ConfigError(f"conv={conv} needs image inputs; molecule graphs (data.encoder=dmpnn) take conv= (empty)")
        # a graph input: its subnetworks' masked D-MPNN, then the first layer reads its molecule vectors
        self.encoders = nn.ModuleDict({str(i): MaskedDMPNN(first_names[i], dims, input_name=next(
            g for g in inputs if self.first_of[g] == i), **encoder) for i, dims in graphs.items()})
        widths_in = [self.encoders[str(i)].out_dim if i in graphs else math.prod(s) for i, s in enumerate(shapes)]
        if conv:
            bad = [s for s in shapes if len(s) != 3]
            if bad or len({s[1:] for s in shapes}) > 1:
                raise ConfigError(f"conv={conv} needs image inputs (C, H, W) of one height and width, got "
                                  f"{shapes}; use conv= (empty) for a fully connected network")
            self.first = nn.ModuleList(MaskedConv2d(fn, s[0], conv[0]) for fn, s in zip(first_names, shapes))
            self.convs = nn.ModuleList(MaskedConv2d(names, a, b) for a, b in zip(conv[:-1], conv[1:]))
            h, w = shapes[0][1:]
            for j in range(len(conv)):
                if (j + 1) % pool_every == 0:
                    if h < 2 or w < 2:
                        raise ConfigError(f"conv={conv}: {h}x{w} feature maps are too small to pool again; "
                                          "use fewer conv layers or a larger pool_every")
                    h, w = h // 2, w // 2
            self.fcs = nn.ModuleList([MaskedLinear(names, conv[-1] * h * w, widths[0])] +
                                     [MaskedLinear(names, a, b) for a, b in zip(widths[:-1], widths[1:])])
        else:
            self.first = nn.ModuleList(MaskedLinear(fn, w, widths[0]) for fn, w in zip(first_names, widths_in))
            self.convs = nn.ModuleList()
            self.fcs = nn.ModuleList(MaskedLinear(names, a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = MaskedLinear(names, widths[-1], max(self.subnet_out), out_limit=self.subnet_out,
                                 per_output=True, disjoint_bias=False)
        # ensemble groups: task -> the subnetworks (copies) that serve it, and its column offset there
        self.serving = {t.name: [] for t in tasks}
        for s, ts in enumerate(self.subnet_tasks):
            off = 0
            for t in ts:
                self.serving[t.name].append((s, off))
                off += t.outputs

    def layers(self) -> list[tuple[str, MaskedLayer, dict[int, int]]]:
        """(name, layer, {subnetwork: index on the layer's task axis}) for every masked layer."""
        everyone = {s: s for s in range(len(self.subnet_names))}
        out = [(f"encoders.{i}.{name}", getattr(enc, name), self.first_local[int(i)])
               for i, enc in self.encoders.items() for name in ("W_i", "W_h", "W_o")]
        out += [(f"first.{i}", layer, self.first_local[i]) for i, layer in enumerate(self.first)]
        out += [(f"convs.{i}", layer, everyone) for i, layer in enumerate(self.convs)]
        out += [(f"fcs.{i}", layer, everyone) for i, layer in enumerate(self.fcs)]
        return out + [("head", self.head, everyone)]

    def masks_selected(self) -> bool:
        return bool(self.head.weight_mask.any())

    def forward_subnets(self, x, only=None) -> dict[int, torch.Tensor]:
        """{subnetwork s: (batch of its input, subnet_out[s])}; only: subnetwork indices to compute."""
        res = {}
        for g, stream in self.streams.items():
            idx = [s for s in stream if only is None or s in only]
            if not idx:
                continue
            xg = x[g] if isinstance(x, dict) else x
            n, first = len(idx), self.first[self.first_of[g]]
            local = [self.first_local[self.first_of[g]][s] for s in idx]
            if self.conv_mode:
                h = F.relu(first(xg, local))  # (batch, n * C, H, W), task j in channel block j
                for j, layer in enumerate([None, *self.convs]):
                    if layer is not None:
                        h = F.relu(layer(h, idx, stacked=True))
                    if (j + 1) % self.pool_every == 0:
                        h = F.max_pool2d(h, 2)
                b, c, hh, ww = h.shape
                h = h.reshape(b, n, (c // n) * hh * ww).transpose(0, 1)  # (n, batch, C * H * W)
                for layer in self.fcs:
                    h = F.relu(layer(h, idx))  # (n, batch, width)
            else:
                encoder = self.encoders[str(self.first_of[g])] if str(self.first_of[g]) in self.encoders else None
                features = xg.flatten(1) if encoder is None else encoder(xg, local)  # or (n, molecules, out_dim)
                h = F.relu(first(features, local))  # (n, batch, widths[0])
                for layer in self.fcs:
                    h = F.relu(layer(h, idx))  # (n, batch, width)
            y = self.head(h, idx)  # (n, batch, max outputs)
            for j, s in enumerate(idx):
                res[s] = y[j, :, :self.subnet_out[s]]  # (batch, subnet_out[s])
        return res

    def task_outputs(self, s: int, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Subnetwork s's output (batch, subnet_out[s]) -> {task: (batch, task.outputs)}."""
        out, off = {}, 0
        for t in self.subnet_tasks[s]:
            out[t.name] = y[:, off:off + t.outputs]
            off += t.outputs
        return out

    def forward(self, x) -> dict[str, torch.Tensor]:
        ys = self.forward_subnets(x)
        out = {}
        for t in self.tasks:
            preds = [ys[s][:, off:off + t.outputs] for s, off in self.serving[t.name]]
            out[t.name] = preds[0] if len(preds) == 1 else average(t, preds)
        return out


def average(task: Task, preds: list[torch.Tensor]) -> torch.Tensor:
    """Ensemble: average the predictions (probabilities, or values for regression) and return them as
    outputs of the same kind: log of the mean class probabilities, logit of the mean P(1), mean value."""
    z = torch.stack(preds)  # (copies, batch, outputs)
    if task.kind == "multiclass":
        return torch.log(torch.softmax(z, -1).mean(0).clamp_min(1e-12))
    if task.kind == "binary":
        return torch.logit(torch.sigmoid(z).mean(0), eps=1e-7)
    return z.mean(0)


@torch.no_grad()
def _batch_for(data: MultiTaskData, tasks: list[Task], n: int, seed: int):
    split = data.train
    g = tasks[0].input
    order = torch.randperm(split.size(g), generator=torch.Generator().manual_seed(seed))[:n]
    return {g: split.inputs[g][order]}, {t.name: split.labels[t.name][order] for t in tasks}


def select_masks(model: RSN2Net, data: MultiTaskData, keep: float | dict[str, float],
                 criterion: str = "gradient", batch: int = 512, seed: int = 0, rounds: int = 1) -> None:
    """Algorithm 1, one shot after initialisation. For each subnetwork s in order: activate every
    position no other subnetwork owns, score it by |d loss_s / d W_s| on `batch` examples of s's data
    (or |W_s| for criterion=magnitude), keep the top fraction keep[s] of each layer.

    rounds=R > 1: the same in R rounds; in round r every subnetwork, in turn, is scored again and grows
    its masks to r/R of its budget (its earlier picks kept), so the positions all subnetworks score
    highest are shared out 1/R at a time instead of going to the first subnetworks (with fractions
    summing to 1, the paper's order leaves the last one exactly the leftovers). rounds=1 is Algorithm 1.
    Deterministic given the model, the training split and the seed (a seeded batch per subnetwork).
    Checks capacity (fractions sum to at most 1 on every layer) before and disjointness after; both
    raise ConfigError, as does a layer where `keep` leaves a subnetwork no weight."""
    if criterion not in ("gradient", "magnitude"):
        raise ConfigError(f"criterion={criterion}: choose gradient or magnitude")
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: need at least 1 round (1 = Algorithm 1)")
    names = model.subnet_names
    keeps = {n: keep for n in names} if isinstance(keep, (int, float)) else dict(keep)
    for n in names:
        if n not in keeps or not 0 < keeps[n] <= 1:
            raise ConfigError(f"keep for subnetwork {n!r} must be in (0, 1], got {keeps.get(n)}")
    layers = model.layers()
    for lname, layer, local in layers:
        total = sum(keeps[names[s]] for s in local)
        if total > 1 + 1e-9:
            raise ConfigError(f"layer {lname}: subnetworks {[names[s] for s in local]} keep fractions summing to "
                              f"{total:.3f} > 1; lower keep (pruning rate = 1 - keep) or use fewer subnetworks")
        layer.weight_mask.zero_()
        layer.bias_mask.zero_()
    device = next(model.parameters()).device
    for r in range(1, rounds + 1):
        for s, name in enumerate(names):
            mine = [(lname, layer, local[s]) for lname, layer, local in layers if s in local]
            held = []
            for _, layer, t in mine:  # activate everything s holds or is still free for s
                held.append((layer.weight_mask[t].clone(), layer.bias_mask[t].clone()))
                layer.weight_mask[t], layer.bias_mask[t] = layer.free(t)
            if criterion == "gradient":
                x, y = _batch_for(data, model.subnet_tasks[s], batch, seed + s)
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    out = model.forward_subnets({k: v.to(device) for k, v in x.items()}, only={s})[s]
                    loss = mean_loss(model.subnet_tasks[s], model.task_outputs(s, out),
                                     {k: v.to(device) for k, v in y.items()})
                    loss.backward()
            for (lname, layer, t), (hw, hb) in zip(mine, held):
                if criterion == "gradient":
                    sw = layer.weight.grad[t].abs() if layer.weight.grad is not None else torch.zeros_like(layer.weight[t])
                    sb = layer.bias.grad[t].abs() if layer.bias.grad is not None else torch.zeros_like(layer.bias[t])
                else:
                    sw, sb = layer.weight[t].detach().abs(), layer.bias[t].detach().abs()
                layer.weight_mask[t], layer.bias_mask[t] = hw, hb
                try:
                    layer.assign(t, keeps[name], sw, sb, lname, grow=r / rounds)
                except ValueError as e:  # too few free positions, or keep too small for the layer
                    raise ConfigError(str(e)) from None
    model.zero_grad(set_to_none=True)
    check_masks(model)


class RSN2Hooks(Hooks):
    """Mask selection before the first training, per-subnetwork losses, and updates confined to the
    trainable subnetworks' masks. `frozen`: names of the subnetworks trained by earlier fits (stages).

    Several processes (torchrun): Algorithm 1 (every round of it, with rounds > 1) scores the masks on a
    seeded sample of the whole training split, which every process holds, from the same initial weights:
    the masks and the ownership are the same everywhere. The gradient masks (and the masked weight decay) apply in before_optimizer_step, after
    DDP's all-reduce, so frozen and unowned positions get exactly zero in every process and earlier
    subnetworks stay bit for bit as they were during a later stage."""

    unused_parameters = True  # a stage trains only its subnetworks' heads

    def __init__(self, keep: float, criterion: str = "gradient", mask_batch: int = 512, rounds: int = 1):
        self.keep, self.criterion, self.mask_batch, self.rounds = keep, criterion, mask_batch, rounds
        self.frozen: set[str] = set()
        self.trainable: list[int] = []  # subnetworks of the tasks this fit trains
        self.grad_masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.weight_decay, self.decoupled = 0.0, False

    def parameters(self, model: nn.Module):
        # weight decay is applied in before_optimizer_step, inside the trainable masks only
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}]

    def before_training(self, trainer: Trainer) -> None:
        model: RSN2Net = trainer.model
        if not model.masks_selected():
            standardise_descriptors(model, trainer.data)  # the encoders' descriptors (data.descriptors=true)
            select_masks(model, trainer.data, self.keep, self.criterion, self.mask_batch, trainer.cfg.seed,
                         self.rounds)
        check_masks(model)
        wanted = {t.name for t in trainer.tasks}
        self.trainable = [s for s, ts in enumerate(model.subnet_tasks) if any(t.name in wanted for t in ts)]
        again = [model.subnet_names[s] for s in self.trainable if model.subnet_names[s] in self.frozen]
        if again:
            raise ConfigError(f"subnetworks {again} were trained in an earlier stage and are frozen; "
                              "train each subnetwork in one stage only")
        self.weight_decay, self.decoupled = trainer.cfg.weight_decay, trainer.cfg.optimizer == "adamw"
        self.grad_masks = []
        for _, layer, local in model.layers():
            on = torch.zeros(layer.n_tasks, dtype=torch.bool, device=layer.weight.device)
            for s in self.trainable:
                if s in local:
                    on[local[s]] = True
            shape_w = (-1,) + (1,) * (layer.weight.dim() - 1)
            self.grad_masks.append((layer.weight, layer.weight_mask & on.view(shape_w)))  # (T, *slice)
            self.grad_masks.append((layer.bias, layer.bias_mask & on.view(-1, 1)))  # (T, out)

    def forward(self, trainer: Trainer, x) -> dict[int, torch.Tensor]:
        """Only the trainable subnetworks: {subnetwork: (batch, subnet_out[s])}."""
        return trainer.run(trainer.model.forward_subnets, x, only=set(self.trainable))

    def loss(self, trainer: Trainer, out: dict[int, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each subnetwork its own loss (the mean over its trained tasks); their sum."""
        model: RSN2Net = trainer.model
        wanted = {t.name for t in trainer.tasks}
        return sum(mean_loss([t for t in model.subnet_tasks[s] if t.name in wanted], model.task_outputs(s, out[s]),
                             y, trainer.batch_weights) for s in self.trainable)

    @torch.no_grad()
    def before_optimizer_step(self, trainer: Trainer) -> None:
        lr = trainer.optimizer.param_groups[0]["lr"]  # this step's, after the schedule
        for p, m in self.grad_masks:
            if p.grad is None:
                continue
            if self.weight_decay and self.decoupled:  # AdamW's decay, before its update, inside the masks
                p.sub_(p * m, alpha=lr * self.weight_decay)
            elif self.weight_decay:
                p.grad.add_(p, alpha=self.weight_decay)
            p.grad.mul_(m)  # masked, unowned and frozen positions: exactly zero

    def after_training(self, trainer: Trainer) -> None:
        """Freeze what this fit trained: a later fit (stage) that trains these subnetworks is an error."""
        self.frozen |= {trainer.model.subnet_names[s] for s in self.trainable}


def is_copy(model: RSN2Net, s: int) -> bool:
    """Subnetwork s is one of several copies of a group (copies > 1: its tasks are served more than once)."""
    return len(model.serving[model.subnet_tasks[s][0].name]) > 1


def stage_tasks(model: RSN2Net, stages: list[list[str]]) -> list[list[Task]]:
    """Stages named by subnetworks, groups of copies (GROUP for GROUP#0, GROUP#1, ...) or task names ->
    the tasks of each stage (all tasks of every subnetwork named), for manytask.train.train_stages."""
    names = model.subnet_names
    out = []
    for i, stage in enumerate(stages, 1):
        tasks: dict[str, Task] = {}  # each task once, even when several copies serve it
        for n in stage:
            hits = [s for s, sn in enumerate(names) if sn == n or any(t.name == n for t in model.subnet_tasks[s])
                    or (sn.rpartition("#")[0] == n and is_copy(model, s))]
            if not hits:
                raise ConfigError(f"stage {i}: {n!r} names no subnetwork or task; subnetworks are {', '.join(names)}")
            tasks.update({t.name: t for s in hits for t in model.subnet_tasks[s]})
        out.append(list(tasks.values()))
    return out


# ---- compact export ------------------------------------------------------------------------------------
def export(model: RSN2Net, path: Path | str) -> int:
    """Pack every masked layer into ONE tensor of a single-task layer's shape plus an owner index and
    save them (with the architecture as metadata, and a graph encoder's descriptor statistics) as
    safetensors. -> file size in bytes."""
    check_masks(model)
    tensors = {f"{name}.{k}": v.detach().cpu() for name, layer in masked_layers(model).items()
               for k, v in layer.pack().items()}
    tensors.update({f"buffers.encoders.{i}.{b}": getattr(encoder, b).detach().cpu()  # descriptor standardisation
                    for i, encoder in model.encoders.items() for b in ("descriptor_mean", "descriptor_std")})
    save_file(tensors, str(path), metadata={"rsn2": json.dumps(model.arch)})
    return Path(path).stat().st_size


def load_packed(path: Path | str) -> RSN2Net:
    """Rebuild the masked model from an export(): per task W_t = packed * [owner == t]."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        if not meta or "rsn2" not in meta:
            raise ConfigError(f"{path} is not an rsn2 export (no rsn2 metadata); write it with rsn2.export()")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    arch = json.loads(meta["rsn2"])
    model = RSN2Net([Task(**t) for t in arch["tasks"]], {k: tuple(v) for k, v in arch["input_shapes"].items()},
                    [(n, members) for n, members in arch["subnets"]], tuple(arch["widths"]), tuple(arch["conv"]),
                    arch["pool_every"], arch.get("encoder"))
    for name, layer in masked_layers(model).items():
        layer.unpack({k[len(name) + 1:]: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == name})
    model.load_state_dict({k[len("buffers."):]: v for k, v in tensors.items() if k.startswith("buffers.")}, strict=False)
    return model


# groups=auto with grouped tasks and keep=0: this fraction of every shared layer stays free. With the
# fractions summing to exactly 1, Algorithm 1 leaves the last subnetwork no choice: on ToxCast (16 groups
# of 1/16) it took the positions of rare fingerprint bits, and after one epoch its 38 assays were constant
# (no live input to any head unit); with a fifth left free every group stayed alive (docs/rsn2.md).
GROUPED_FREE = 0.2


def capacity_line(model: RSN2Net, keep: float) -> str:
    """What each task gets, in one line, e.g. "617 tasks in 16 subnetworks of 38-39 tasks; each subnetwork
    keeps 5% of every layer it uses (head: 6 of 128 inputs per output unit), 20% of the shared layers unused"."""
    sizes = [len(ts) for ts in model.subnet_tasks]
    n_groups = len(dict.fromkeys(tuple(t.name for t in ts) for ts in model.subnet_tasks))
    per = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}"
    subnets = f"{len(sizes)} subnetwork{'s' * (len(sizes) > 1)}"
    if n_groups < len(sizes):
        subnets += f" ({n_groups} group{'s' * (n_groups > 1)} x {len(sizes) // n_groups} copies)"
    fan_in = model.head.weight.shape[1]
    line = (f"{len(model.tasks)} task{'s' * (len(model.tasks) > 1)} in {subnets} of {per} "
            f"task{'s' * (max(sizes) > 1)}; each subnetwork keeps {100 * keep:.3g}% of every layer it uses "
            f"(head: {math.floor(keep * fan_in + 1e-9)} of {fan_in} inputs per output unit)")
    unused = 1 - keep * len(sizes)
    return line + (f", {100 * unused:.3g}% of the shared layers unused" if unused > 1e-6 else "")


@register_method("rsn2", RSN2Config, "RSN2: disjoint masked subnetworks per task in one network, packable export")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: RSN2Config):
    """-> (RSN2Net, RSN2Hooks); logs capacity_line (what each task gets) at INFO on the "manytask" logger."""
    subnets = plan_subnets(tasks, cfg.groups, cfg.copies, cfg.max_subnets, cfg.keep)
    grouped = cfg.groups == "auto" and len(subnets) < len(tasks) * cfg.copies
    keep = cfg.keep or (1.0 - GROUPED_FREE * grouped) / len(subnets)
    if not 0 < keep <= 1:
        raise ConfigError(f"keep={cfg.keep}: the fraction of weights a subnetwork keeps must be in (0, 1]")
    if cfg.encoder_batch_norm and any(graph_dims(shape) is not None for shape in input_shapes.values()):
        raise ConfigError("rsn2 with data.encoder=dmpnn: encoder_batch_norm=true would share the batch statistics "
                          "between the subnetworks; leave it false")
    encoder = {"hidden": cfg.encoder_hidden, "depth": cfg.encoder_depth, "aggregation": cfg.encoder_aggregation,
               "dropout": cfg.encoder_dropout}
    model = RSN2Net(tasks, input_shapes, subnets, tuple(cfg.widths), tuple(cfg.conv), cfg.pool_every, encoder)
    if initial_scale(cfg.init, tasks) == "torch":  # the same draws, scaled: U(+-sqrt(6 / fan_in)) / sqrt(6) = U(+-1 / sqrt(fan_in))
        with torch.no_grad():
            for _, layer, _ in model.layers():
                layer.weight.div_(math.sqrt(6.0))
    for name, _, local in model.layers():  # capacity, before any data is touched
        if keep * len(local) > 1 + 1e-9:
            raise ConfigError(f"keep={keep:g} for {len(local)} subnetworks on layer {name} sums to "
                              f"{keep * len(local):.3f} > 1; use keep <= {1 / len(local):.4f} (pruning rate = 1 - keep)")
    log.info("rsn2: %s", capacity_line(model, keep))
    return model, RSN2Hooks(keep, cfg.criterion, cfg.mask_batch, cfg.rounds)
