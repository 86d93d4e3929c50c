"""Soft layer ordering (Meyerson & Miikkulainen, "Beyond Shared Hierarchies: Deep Multitask Learning
through Soft Layer Ordering", ICLR 2018).

D shared layers F_1..F_D of one width w; task t has an encoder E_t (its input -> w) and a decoder D_t
(w -> its outputs). With learned scalars s of shape (T, D, D), zero at the start (uniform mixing):

    y_t(0) = E_t(x_t)
    y_t(k) = sum_j softmax(s[t, k, :])_j  F_j(y_t(k-1))        k = 1..D,  F_j = dropout . relu . W_j
    out_t  = D_t(y_t(D))

preserve_scale=true divides the mixture by ||softmax(s[t, k])||_2 (1 for a one-hot row, sqrt(D) for the
uniform start) and draws the shared layers He-uniform (bound sqrt(6/w)): the representation then keeps
its scale through the depths for any mixing, where the plain mixture of D independently initialised
layers loses a factor of about sqrt(D) of its example-to-example spread per depth (docs/soft_order.md).

ordering=parallel replaces the softmax by a one-hot on layer k at depth k (the classic shared hierarchy);
ordering=permuted by a one-hot on layer rho_t(k), with rho_t a random permutation per task drawn once from
the seed. identity=true adds an identity candidate at every depth (s becomes (T, D, D+1)): a task may skip a
depth ("soft order + identity"). conv=true uses 3x3 convolutions of `width` channels instead of
dense layers, for image inputs (C, H, W). A graph input (molecules with data.encoder=dmpnn) is first
encoded by one learned D-MPNN (nn/dmpnn.py) shared by the tasks that read it; E_t follows it.

The D layers of a depth are one stacked tensor (manytask.nn.soft_order): soft ordering computes all of them
for all tasks in one product, parallel and permuted only the chosen one (D times less arithmetic).
Tasks may read different inputs: each task's representation is padded to the largest batch and the tasks
are stacked, (T, n_max, *feat).

Several processes (torchrun): nothing of its own; the mixing scores are parameters like the others and
their gradients are averaged by DDP with the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, option
from ..nn.dmpnn import DescriptorStats, DMPNNConfig, graph_encoder, needs_descriptor_stats
from ..nn.soft_order import ConvBank, DenseBank, TaskLinear
from ..registry import register_method
from ..report import Matrix
from ..tasks import Task, module_key
from ..train import Hooks



@dataclass
class SoftOrderConfig(DMPNNConfig):
    width: int = option(256, "units of every shared layer (channels when conv=true)", low=1,
                        search=("choice", (32, 64, 128, 256)))
    depth: int = option(2, "D, the number of shared layers and of depths", low=1, search=("int", 1, 5))
    ordering: Literal["soft", "parallel", "permuted"] = option(
        "soft", "soft: learned mixing; parallel: layer k at depth k; permuted: a random order per task")
    identity: bool = option(False, "soft only: an identity candidate at every depth")
    preserve_scale: bool = option(False, "keep the representation's scale through the depths: He-uniform shared "
                                  "layers and the soft mixture divided by the L2 norm of its weights (the "
                                  "soft-order recipes use it; docs/soft_order.md says why)")
    conv: bool = option(False, "3x3 convolutional layers for image inputs (C, H, W)")
    dropout: float = option(0.092, "dropout after every shared layer and the encoder", low=0, high=1, high_open=True,
                             search=("float", 0.0, 0.5))
    scores_lr: float = option(0.0, "learning rate of the mixing scores s; 0: the training lr", low=0)
    # the defaults (these and the keys above) are the recipe `manytask tune tox21 soft_order` chose: docs/tuning-tox21.md
    train_defaults: ClassVar[dict] = {"lr": 2.27e-3, "weight_decay": 1e-5}


class PerTask(nn.Module):
    """G per-task modules on one shared input: forward(x (n, *in)) -> (G, n, *out), their outputs stacked.
    The encoders of the convolutional variant and of custom models (one Python call per task)."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.nets])


class SoftOrder(nn.Module):
    """forward(x) -> {task: (n_t, task.outputs)}; x is (n, *shape) or {input: (n_input, *shape)}.

    encoders[input name]: (n_input, *input shape) -> (G, n_input, *feat), the encoders E_t (activation
    included, dropout not) of the G tasks that read that input, in task order; for dense layers one
    TaskLinear product for all G. Dropout `bank.dropout` follows, one mask per task.
    decoders[task name]: (n_t, *feat) -> (n_t, outputs). (Both kept under module_key(name).)
    bank: a DenseBank or ConvBank of D layers on feat. order: (T, D) long layer indices for the fixed
    orderings, None for soft ordering (then the learned `scores` (T, D, D [+1]) mix the layers).
    Without gradients (evaluation) the depths run on chunks of tasks, so that the (tasks, D, n, *feat)
    candidates of a large batch of many tasks never exist at once (`chunk_elements` floats at most).
    """

    chunk_elements = 1 << 24  # floats of candidates per depth: evaluation chunks tasks above it, training recomputes

    def __init__(self, tasks: list[Task], encoders: dict[str, nn.Module], decoders: dict[str, nn.Module],
                 bank: DenseBank | ConvBank, order: torch.Tensor | None = None, identity: bool = False,
                 preserve_scale: bool = False):
        super().__init__()
        self.tasks = tasks
        self.preserve_scale = preserve_scale
        self.inputs = list(dict.fromkeys(t.input for t in tasks))  # input names, in order of first use
        if set(encoders) != set(self.inputs):
            raise ValueError(f"encoders must be keyed by the tasks' inputs {self.inputs}, got {sorted(encoders)}")
        self.encoders = nn.ModuleDict({module_key(g): encoders[g] for g in self.inputs})
        self.decoders = nn.ModuleDict({module_key(name): m for name, m in decoders.items()})
        # task i is row slot[i] of its input's encoder output
        self.slot = [[u.input for u in tasks[:i]].count(t.input) for i, t in enumerate(tasks)]
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

    def encode(self, x) -> tuple[torch.Tensor, list[int]]:
        """-> (y(0) (T, n_max, *feat), [n_t]): every task's encoder output after dropout, stacked; rows
        beyond a task's own batch n_t are zero. One encoder call per input; one dropout mask per task,
        drawn in task order."""
        z = {g: self.encoders[module_key(g)](x[g] if isinstance(x, dict) else x) for g in self.inputs}
        if len(self.inputs) == 1 and not (self.training and self.bank.dropout > 0):
            h = z[self.inputs[0]]  # (T, n, *feat): nothing to pad or drop
            return h, [h.shape[1]] * len(self.tasks)
        rows = {g: v.unbind(0) for g, v in z.items()}  # one backward for all rows (indexing row by row
        # would give every task's gradient the size of the whole (G, n, *feat) block)
        hs = [nn.functional.dropout(rows[t.input][s], self.bank.dropout, self.training)
              for t, s in zip(self.tasks, self.slot)]  # T x (n_t, *feat)
        return stack_padded(hs), [h.shape[0] for h in hs]

    def depths(self, h: torch.Tensor, tasks: slice) -> torch.Tensor:
        """y(0) (c, n, *feat) of the tasks `tasks` -> y(D) (c, n, *feat).

        When one depth's candidates (c, D, n, *feat) exceed chunk_elements and gradients are on (training on
        many tasks), each depth is recomputed in the backward pass instead of keeping its candidates
        (torch.utils.checkpoint, with the dropout masks of the forward pass): activation memory of one depth
        instead of D, for a second forward through the shared layers. The values are the same."""
        mix = None
        if self.scores is not None:
            mix = torch.softmax(self.scores[tasks], dim=-1)  # (c, D, K)
            if self.preserve_scale:  # sum_j m_j F_j / ||m||_2: the variance of D uncorrelated F_j whatever m
                mix = mix / mix.norm(dim=-1, keepdim=True)
        recompute = torch.is_grad_enabled() and h.numel() * self.depth > self.chunk_elements
        for k in range(self.depth):
            if recompute:
                h = checkpoint(self.depth_step, h, k, tasks, mix, use_reentrant=False)
            else:
                h = self.depth_step(h, k, tasks, mix)
        return h

    def depth_step(self, h: torch.Tensor, k: int, tasks: slice, mix: torch.Tensor | None) -> torch.Tensor:
        """y(k-1) (c, n, *feat) -> y(k) (c, n, *feat); mix (c, D, K) the mixture weights, None for a fixed order."""
        if mix is None:
            return self.bank.pick(h, self.order[tasks, k])
        c, n, feat = h.shape[0], h.shape[1], h.shape[2:]
        cand = self.bank.all(h)  # (c, D, n, *feat)
        if self.identity:
            cand = torch.cat([cand, h.unsqueeze(1)], dim=1)  # (c, D+1, n, *feat)
        return torch.einsum("tj,tjnf->tnf", mix[:, k], cand.flatten(3)).reshape(c, n, *feat)

    def forward(self, x):
        h, sizes = self.encode(x)  # (T, n, *feat)
        T = h.shape[0]
        step = T if torch.is_grad_enabled() else max(1, self.chunk_elements // max(1, h[0].numel() * self.depth))
        if step >= T:
            h = self.depths(h, slice(0, T))
        else:
            h = torch.cat([self.depths(h[a:a + step], slice(a, a + step)) for a in range(0, T, step)])
        return {t.name: self.decoders[module_key(t.name)](h_t[:n_t])
                for t, h_t, n_t in zip(self.tasks, h.unbind(0), sizes)}  # unbind: see encode


def stack_padded(hs: list[torch.Tensor]) -> torch.Tensor:
    """T x (n_t, *feat) -> (T, max n_t, *feat), zero rows beyond each n_t. Unlike pad_sequence, whose
    backward copies the whole (T, n, *feat) gradient once per task (T^2 n feat floats: 12 GB a step at
    617 tasks), each task's gradient here is its own slice."""
    n = max(h.shape[0] for h in hs)
    return torch.stack([h if h.shape[0] == n else F.pad(h, [0, 0] * (h.dim() - 1) + [0, n - h.shape[0]])
                        for h in hs])


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
    graph = {g: graph_encoder(g, input_shapes[g], cfg) for g in dict.fromkeys(t.input for t in tasks)}  # D-MPNN or None
    per_task, decoders = {}, {}  # drawn task by task, encoder then decoder: the seeded initial weights
    for t in tasks:
        shape = input_shapes[t.input]
        if cfg.conv:  # (n, C_in, H, W) -> (n, w, H, W) -> ... -> flatten -> outputs
            per_task[t.name] = nn.Sequential(nn.Conv2d(shape[0], w, 3, padding=1), nn.ReLU())
            decoders[t.name] = nn.Sequential(nn.Flatten(), nn.Linear(w * shape[1] * shape[2], t.outputs))
        else:  # (n, *shape) -> (n, w) -> ... -> (n, outputs)
            per_task[t.name] = nn.Linear(graph[t.input].out_dim if graph[t.input] else math.prod(shape), w)
            decoders[t.name] = nn.Linear(w, t.outputs)
    encoders = {}
    for g in dict.fromkeys(t.input for t in tasks):  # one encoder module per input, for all its tasks
        mods = [per_task[t.name] for t in tasks if t.input == g]
        shared = [graph[g]] if graph[g] else []  # a graph input: one D-MPNN shared by its tasks, then E_t
        encoders[g] = PerTask(mods) if cfg.conv else nn.Sequential(*shared, TaskLinear.of(mods), nn.ReLU())
    gain = math.sqrt(6.0) if cfg.preserve_scale else 1.0  # He-uniform, or nn.Linear's default bound
    bank = ConvBank(cfg.depth, w, drop, gain=gain) if cfg.conv else DenseBank(cfg.depth, w, drop, gain=gain)
    order = None
    if cfg.ordering == "parallel":
        order = torch.arange(cfg.depth).repeat(len(tasks), 1)  # (T, D): layer k at depth k
    elif cfg.ordering == "permuted":  # drawn from the global generator, which runs.build seeds with train.seed
        order = torch.stack([torch.randperm(cfg.depth) for _ in tasks])  # (T, D)
    model = SoftOrder(tasks, encoders, decoders, bank, order, cfg.identity, cfg.preserve_scale)
    if needs_descriptor_stats(model):
        if cfg.scores_lr > 0:
            raise ConfigError("soft_order: scores_lr and data.descriptors=true cannot be combined; drop one")
        return model, DescriptorStats()
    if cfg.scores_lr > 0 and model.scores is not None:
        return model, ScoresLR(cfg.scores_lr)
    return model
