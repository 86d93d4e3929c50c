"""Soft layer ordering (Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask Learning
through Soft Layer Ordering", ICLR 2018).

D shared layers F_1..F_D of one width w; task t has an encoder E_t (its input -> w) and a decoder D_t
(w -> its outputs). With learned scalars s of shape (T, D, D), zero at the start (uniform mixing):

    y_t(0) = E_t(x_t)
    y_t(k) = sum_j softmax(s[t, k, :])_j  F_j(y_t(k-1))        k = 1..D,  F_j = dropout . relu . W_j
    out_t  = D_t(y_t(D))

ordering=parallel replaces the softmax by a one-hot on layer k at depth k (the classic shared hierarchy);
ordering=permuted by a one-hot on layer rho_t(k), with rho_t a random permutation per task drawn once from
the seed. identity=true adds an identity candidate at every depth (s becomes (T, D, D+1)): a task may skip a
depth ("soft order + identity"). conv=true uses 3x3 convolutions of `width` channels instead of
dense layers, for image inputs (C, H, W).

The D layers of a depth are one stacked tensor (manytask.nn.soft_order): soft ordering computes all of them
for all tasks in one product, parallel and permuted only the chosen one (D times less arithmetic).
Tasks may read different inputs: each task's representation is padded to the largest batch and the tasks
are stacked, (T, n_max, *feat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..config import ConfigError, option
from ..nn.soft_order import ConvBank, DenseBank
from ..registry import register_method
from ..report import Matrix
from ..tasks import Task, module_key
from ..train import Hooks



@dataclass
class SoftOrderConfig:
    width: int = option(64, "units of every shared layer (channels when conv=true)", low=1)
    depth: int = option(4, "D, the number of shared layers and of depths", low=1)
    ordering: Literal["soft", "parallel", "permuted"] = option(
        "soft", "soft: learned mixing; parallel: layer k at depth k; permuted: a random order per task")
    identity: bool = option(False, "soft only: an identity candidate at every depth")
    conv: bool = option(False, "3x3 convolutional layers for image inputs (C, H, W)")
    dropout: float = option(0.2, "dropout after every shared layer and the encoder", low=0, high=1, high_open=True)
    scores_lr: float = option(0.0, "learning rate of the mixing scores s; 0: the training lr", low=0)


class SoftOrder(nn.Module):
    """forward(x) -> {task: (n_t, task.outputs)}; x is (n, *shape) or {input: (n_input, *shape)}.

    encoders[task name]: (n_t, *input shape) -> (n_t, *feat); decoders[task name]: (n_t, *feat) -> (n_t, outputs)
    (kept under module_key(task name)).
    bank: a DenseBank or ConvBank of D layers on feat. order: (T, D) long layer indices for the fixed
    orderings, None for soft ordering (then the learned `scores` (T, D, D [+1]) mix the layers).
    """

    def __init__(self, tasks: list[Task], encoders: dict[str, nn.Module], decoders: dict[str, nn.Module],
                 bank: DenseBank | ConvBank, order: torch.Tensor | None = None, identity: bool = False):
        super().__init__()
        self.tasks = tasks
        self.encoders = nn.ModuleDict({module_key(name): m for name, m in encoders.items()})
        self.decoders = nn.ModuleDict({module_key(name): m for name, m in decoders.items()})
        self.bank = bank
        T, D = len(tasks), bank.depth
        self.identity = identity
        if order is None:
            self.scores = nn.Parameter(torch.zeros(T, D, D + int(identity)))  # s, uniform mixing at the start
            self.order = None
        else:
            if identity:
                raise ValueError("identity needs soft ordering (order=None): a fixed ordering has no mixing")
            if tuple(order.shape) != (T, D):
                raise ValueError(f"order must be (tasks, depth) = ({T}, {D}), got {tuple(order.shape)}")
            self.scores = None
            self.register_buffer("order", order.long())

    @property
    def depth(self) -> int:
        return self.bank.depth

    def mixing(self) -> torch.Tensor:
        """(T, D, K) the weight of candidate layer j at depth k for task t; K = D (+1 for the identity).
        Softmax of the scores for soft ordering, one-hot rows for the fixed orderings."""
        if self.scores is not None:
            return torch.softmax(self.scores, dim=-1)
        return nn.functional.one_hot(self.order, self.depth).float()

    def artifacts(self) -> tuple[dict, list[Matrix]]:
        """({"ordering_distance": d}, [the mixing weights as a (T*D, K) matrix]): rows "TASK dK" (task,
        depth), columns the candidate layers F1..FD (and identity). runs.train_run writes them as
        mixing.csv and mixing.png."""
        mix = self.mixing().detach().cpu().numpy()  # (T, D, K)
        T, D, K = mix.shape
        dist = ordering_distance(mix)
        cols = [f"F{j + 1}" for j in range(D)] + (["identity"] if K > D else [])
        rows = [f"{t.name} d{k + 1}" for t in self.tasks for k in range(D)]
        return {"ordering_distance": dist}, [
            Matrix("mixing", mix.reshape(T * D, K), rows, cols, title=f"ordering distance {dist:.3f}",
                   xlabel="shared layer", ylabel="task, depth", fmt_cells=".2f", corner="task, depth")]

    def forward(self, x):
        hs = [self.encoders[module_key(t.name)](t.select(x)) for t in self.tasks]  # T x (n_t, *feat)
        sizes = [h.shape[0] for h in hs]
        h = pad_sequence(hs, batch_first=True)  # (T, n_max, *feat), zero rows beyond n_t
        T, n, feat = h.shape[0], h.shape[1], h.shape[2:]
        if self.scores is not None:
            mix = torch.softmax(self.scores, dim=-1)  # (T, D, K)
        for k in range(self.depth):
            if self.scores is None:
                h = self.bank.pick(h, self.order[:, k])  # (T, n, *feat)
                continue
            cand = self.bank.all(h)  # (T, D, n, *feat)
            if self.identity:
                cand = torch.cat([cand, h.unsqueeze(1)], dim=1)  # (T, D+1, n, *feat)
            h = torch.einsum("tj,tjnf->tnf", mix[:, k], cand.flatten(3)).reshape(T, n, *feat)  # (T, n, *feat)
        return {t.name: self.decoders[module_key(t.name)](h[i, :sizes[i]]) for i, t in enumerate(self.tasks)}


def ordering_distance(mixing: np.ndarray) -> float:
    """How much the tasks' orderings differ: mean over task pairs and depths of the total-variation distance
    between their mixing distributions, 0.5 * sum_j |m[a, k, j] - m[b, k, j]|, in [0, 1].
    0: every task mixes the layers alike (parallel ordering); 1: no two tasks share a layer at any depth.
    mixing: (T, D, K)."""
    T = mixing.shape[0]
    if T < 2:
        return 0.0
    tv = 0.5 * np.abs(mixing[:, None] - mixing[None, :]).sum(-1).mean(-1)  # (T, T), mean over depths
    return float(tv[np.triu_indices(T, 1)].mean())


class ScoresLR(Hooks):
    """The mixing scores on their own learning rate (one optimizer, two parameter groups)."""

    def __init__(self, lr: float):
        self.lr = lr

    def parameters(self, model: SoftOrder):
        others = [p for n, p in model.named_parameters() if n != "scores" and p.requires_grad]
        return [{"params": others}, {"params": [model.scores], "lr": self.lr}]


def check_conv_inputs(input_shapes: dict[str, tuple[int, ...]], used: list[str]) -> None:
    """conv=true: every input a task reads is an image (C, H, W), all of one H x W."""
    bad = {g: input_shapes[g] for g in used if len(input_shapes[g]) != 3}
    if bad:
        raise ConfigError(f"conv=true needs image inputs (channels, height, width), but {bad} are not; "
                          "use conv=false for these inputs")
    sizes = {input_shapes[g][1:] for g in used}
    if len(sizes) > 1:
        raise ConfigError(f"conv=true needs one image size for all tasks, got {sorted(sizes)}; resize the "
                          "images or use conv=false")


@register_method("soft_order", SoftOrderConfig,
                 "soft layer ordering: D shared layers mixed per task and depth by learned softmax weights "
                 "(ordering=parallel|permuted for the baselines)")
def build(tasks: list[Task], input_shapes: dict[str, tuple[int, ...]], cfg: SoftOrderConfig) -> SoftOrder | tuple[SoftOrder, Hooks]:
    if cfg.identity and cfg.ordering != "soft":
        raise ConfigError("identity=true needs ordering=soft: a fixed ordering has no mixing to skip with")
    if cfg.conv:
        check_conv_inputs(input_shapes, sorted({t.input for t in tasks}))
    w, drop = cfg.width, cfg.dropout
    encoders, decoders = {}, {}
    for t in tasks:
        shape = input_shapes[t.input]
        if cfg.conv:  # (n, C_in, H, W) -> (n, w, H, W) -> ... -> flatten -> outputs
            encoders[t.name] = nn.Sequential(nn.Conv2d(shape[0], w, 3, padding=1), nn.ReLU(), nn.Dropout(drop))
            decoders[t.name] = nn.Sequential(nn.Flatten(), nn.Linear(w * shape[1] * shape[2], t.outputs))
        else:  # (n, *shape) -> (n, w) -> ... -> (n, outputs)
            encoders[t.name] = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), w), nn.ReLU(), nn.Dropout(drop))
            decoders[t.name] = nn.Linear(w, t.outputs)
    bank = ConvBank(cfg.depth, w, drop) if cfg.conv else DenseBank(cfg.depth, w, drop)
    order = None
    if cfg.ordering == "parallel":
        order = torch.arange(cfg.depth).repeat(len(tasks), 1)  # (T, D): layer k at depth k
    elif cfg.ordering == "permuted":  # drawn from the global generator, which runs.build seeds with train.seed
        order = torch.stack([torch.randperm(cfg.depth) for _ in tasks])  # (T, D)
    model = SoftOrder(tasks, encoders, decoders, bank, order, cfg.identity)
    if cfg.scores_lr > 0 and model.scores is not None:
        return model, ScoresLR(cfg.scores_lr)
    return model
