"""Soft layer ordering (Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask Learning
through Soft Layer Ordering", ICLR 2018; shared/papers/002).

D shared layers F_1..F_D of one width w; task t has an encoder E_t (its input -> w) and a decoder D_t
(w -> its outputs). With learned scalars s of shape (T, D, D), zero at the start (uniform mixing):

    y_t(0) = E_t(x_t)
    y_t(k) = sum_j softmax(s[t, k, :])_j  F_j(y_t(k-1))        k = 1..D,  F_j = dropout . relu . W_j
    out_t  = D_t(y_t(D))

ordering=parallel replaces the softmax by a one-hot on layer k at depth k (the classic shared hierarchy);
ordering=permuted by a one-hot on layer rho_t(k), with rho_t a random permutation per task drawn once from
the seed. identity=true adds an identity candidate at every depth (s becomes (T, D, D+1)): a task may skip a
depth ("Soft Order + Identity" in the slides). conv=true uses 3x3 convolutions of `width` channels instead of
dense layers, for image inputs (C, H, W).

The D layers of a depth are one stacked tensor (manytask.nn.soft_order): soft ordering computes all of them
for all tasks in one product, parallel and permuted only the chosen one (D times less arithmetic).
Tasks may read different inputs: each task's representation is padded to the largest batch and the tasks
are stacked, (T, n_max, *feat).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..config import ConfigError
from ..nn.soft_order import ConvBank, DenseBank
from ..registry import register_method
from ..report import heatmap, write_csv
from ..tasks import Task
from ..train import Hooks

ORDERINGS = ("soft", "parallel", "permuted")


@dataclass
class SoftOrderConfig:
    width: int = 64  # units of every shared layer (channels when conv=true)
    depth: int = 4  # D, the number of shared layers and of depths
    ordering: Literal["soft", "parallel", "permuted"] = "soft"
    identity: bool = False  # soft only: an identity candidate at every depth
    conv: bool = False  # 3x3 convolutional layers for image inputs (C, H, W)
    dropout: float = 0.2  # after every shared layer (and the encoder)
    scores_lr: float = 0.0  # > 0: the mixing scores s get this learning rate; 0: the training lr


class SoftOrder(nn.Module):
    """forward(x) -> {task: (n_t, task.outputs)}; x is (n, *shape) or {input: (n_input, *shape)}.

    encoders[task]: (n_t, *input shape) -> (n_t, *feat); decoders[task]: (n_t, *feat) -> (n_t, outputs).
    bank: a DenseBank or ConvBank of D layers on feat. order: (T, D) long layer indices for the fixed
    orderings, None for soft ordering (then the learned `scores` (T, D, D [+1]) mix the layers).
    """

    def __init__(self, tasks: list[Task], encoders: dict[str, nn.Module], decoders: dict[str, nn.Module],
                 bank: DenseBank | ConvBank, order: torch.Tensor | None = None, identity: bool = False):
        super().__init__()
        self.tasks = tasks
        self.encoders = nn.ModuleDict(encoders)
        self.decoders = nn.ModuleDict(decoders)
        self.bank = bank
        T, D = len(tasks), bank.depth
        self.identity = identity
        if order is None:
            self.scores = nn.Parameter(torch.zeros(T, D, D + int(identity)))  # s, uniform mixing at the start
            self.order = None
        else:
            if identity:
                raise ConfigError("identity=true needs ordering=soft: a fixed ordering has no mixing to skip with")
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

    def write_artifacts(self, run_dir: Path) -> dict:
        """Called by runs.train_run: mixing.csv and mixing.png in the run directory (see write_mixing)."""
        return {"ordering_distance": write_mixing(self, run_dir)}

    def forward(self, x):
        hs = [self.encoders[t.name](t.select(x)) for t in self.tasks]  # T x (n_t, *feat)
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
        return {t.name: self.decoders[t.name](h[i, :sizes[i]]) for i, t in enumerate(self.tasks)}


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


def write_mixing(model: SoftOrder, out: Path | str, title: str = "") -> float:
    """Write the learned mixing weights of every task as mixing.csv (task, depth, layer, weight) and
    mixing.png (rows: task and depth, columns: layers) under `out`; return ordering_distance."""
    out = Path(out)
    mix = model.mixing().detach().cpu().numpy()  # (T, D, K)
    T, D, K = mix.shape
    cols = [f"F{j + 1}" for j in range(model.depth)] + (["identity"] if K > model.depth else [])
    write_csv(out / "mixing.csv", ("task", "depth", "layer", "weight"),
              [(t.name, k + 1, cols[j], float(mix[i, k, j])) for i, t in enumerate(model.tasks)
               for k in range(D) for j in range(K)])
    dist = ordering_distance(mix)
    heatmap(mix.reshape(T * D, K), [f"{t.name} d{k + 1}" for t in model.tasks for k in range(D)], cols,
            out / "mixing.png", title=f"{title} ordering distance {dist:.3f}".strip(), xlabel="shared layer",
            ylabel="task, depth", fmt_cells=".2f")
    return dist


class ScoresLR(Hooks):
    """The mixing scores on their own learning rate (one optimizer, two parameter groups)."""

    def __init__(self, lr: float):
        self.lr = lr

    def parameters(self, model: SoftOrder):
        rest = [p for n, p in model.named_parameters() if n != "scores" and p.requires_grad]
        return [{"params": rest}, {"params": [model.scores], "lr": self.lr}]


def _layer_kind(input_shapes: dict[str, tuple[int, ...]], used: list[str], conv: bool) -> None:
    if not conv:
        return
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
    if cfg.width < 1 or cfg.depth < 1:
        raise ConfigError(f"soft_order needs width >= 1 and depth >= 1, got width={cfg.width}, depth={cfg.depth}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout={cfg.dropout}: expected a probability in [0, 1)")
    if cfg.ordering not in ORDERINGS:
        raise ConfigError(f"ordering={cfg.ordering}: choose one of {', '.join(ORDERINGS)}")
    if cfg.identity and cfg.ordering != "soft":
        raise ConfigError("identity=true needs ordering=soft: a fixed ordering has no mixing to skip with")
    if cfg.scores_lr < 0:
        raise ConfigError(f"scores_lr={cfg.scores_lr}: expected >= 0 (0 = the training lr)")
    used = sorted({t.input for t in tasks})
    _layer_kind(input_shapes, used, cfg.conv)
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
