"""Banks of D shared layers of one width, stored stacked so that a depth applies them in one operation.

Soft layer ordering (Meyerson & Miikkulainen, ICLR 2018) needs, at every depth and for every task, the
output of all D shared layers F_1..F_D on that task's current representation. A bank keeps the D layers'
weights in one tensor and offers two operations on a task-stacked representation h (T, n, *feat):

    bank.all(h)       -> (T, D, n, *feat)   every layer on every task: F_j(h_t) for all t, j (soft ordering)
    bank.pick(h, idx) -> (T, n, *feat)      layer idx[t] on task t only (parallel / permuted ordering)

Each layer is weights, then ReLU, then dropout: F_j(h) = dropout(relu(h W_j + b_j)).
Initialisation: weights and biases uniform in +-gain/sqrt(fan_in). gain 1 is nn.Linear's and nn.Conv2d's
default; gain sqrt(6) is the He-uniform bound, with which relu(h W + b) keeps about the second moment of h
instead of losing a factor of about 6 per layer.
`all` costs D times the arithmetic of `pick`: that is the whole price of soft ordering.

DenseBank: feat = (w,), weight (D, w, w) stored as (layer, in, out).
ConvBank:  feat = (C, H, W), 3x3 convolutions with padding 1, weight (D, C, C, 3, 3) as (layer, out, in, kh, kw).

TaskLinear holds the per-task encoders of many tasks that read one input: G linear maps in -> out stored
side by side, so that all G run as one matrix product (x (n, in) -> (G, n, out)) instead of G small ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseBank(nn.Module):
    """D fully connected layers w -> w: weight (D, w, w) as (layer, in, out), bias (D, w), both uniform in
    +-gain/sqrt(w)."""

    def __init__(self, depth: int, width: int, dropout: float = 0.0, gain: float = 1.0):
        super().__init__()
        bound = gain / math.sqrt(width)  # gain 1: nn.Linear's default initialisation, per layer
        self.weight = nn.Parameter(torch.empty(depth, width, width).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(depth, width).uniform_(-bound, bound))
        self.dropout = dropout

    @property
    def depth(self) -> int:
        return self.weight.shape[0]

    def all(self, h: torch.Tensor) -> torch.Tensor:
        """h (T, n, w) -> (T, D, n, w): all D layers on every task, one matrix product."""
        T, n, w = h.shape
        D = self.depth
        wide = self.weight.permute(1, 0, 2).reshape(w, D * w)  # (in, layer*out): the D layers side by side
        z = h.reshape(T * n, w) @ wide + self.bias.reshape(D * w)  # (T*n, D*w)
        z = z.reshape(T, n, D, w).permute(0, 2, 1, 3)  # (T, D, n, w)
        return F.dropout(F.relu(z), self.dropout, self.training)

    def pick(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """h (T, n, w), idx (T,) long -> (T, n, w): task t through layer idx[t] only, one batched product."""
        z = torch.baddbmm(self.bias[idx].unsqueeze(1), h, self.weight[idx])  # (T, 1, w) + (T, n, w) @ (T, w, w)
        return F.dropout(F.relu(z), self.dropout, self.training)


class ConvBank(nn.Module):
    """D 3x3 convolutions C -> C (padding 1, so shapes are kept): weight (D, C, C, 3, 3), bias (D, C)."""

    def __init__(self, depth: int, channels: int, dropout: float = 0.0, kernel: int = 3, gain: float = 1.0):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd to keep the image size, got {kernel}")
        bound = gain / math.sqrt(channels * kernel * kernel)  # gain 1: nn.Conv2d's default initialisation
        self.weight = nn.Parameter(torch.empty(depth, channels, channels, kernel, kernel).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(depth, channels).uniform_(-bound, bound))
        self.dropout = dropout

    @property
    def depth(self) -> int:
        return self.weight.shape[0]

    def all(self, h: torch.Tensor) -> torch.Tensor:
        """h (T, n, C, H, W) -> (T, D, n, C, H, W): one convolution with the D layers as D*C out channels."""
        T, n, C, H, W = h.shape
        D, k = self.depth, self.weight.shape[-1]
        z = F.conv2d(h.reshape(T * n, C, H, W), self.weight.reshape(D * C, C, k, k), self.bias.reshape(D * C),
                     padding=k // 2)  # (T*n, D*C, H, W)
        z = z.reshape(T, n, D, C, H, W).permute(0, 2, 1, 3, 4, 5)  # (T, D, n, C, H, W)
        return F.dropout(F.relu(z), self.dropout, self.training)

    def pick(self, h: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """h (T, n, C, H, W), idx (T,) -> (T, n, C, H, W): one grouped convolution, group t = task t with
        layer idx[t]."""
        T, n, C, H, W = h.shape
        k = self.weight.shape[-1]
        x = h.permute(1, 0, 2, 3, 4).reshape(n, T * C, H, W)  # (n, task*C, H, W)
        z = F.conv2d(x, self.weight[idx].reshape(T * C, C, k, k), self.bias[idx].reshape(T * C),
                     padding=k // 2, groups=T)  # (n, T*C, H, W)
        z = z.reshape(n, T, C, H, W).permute(1, 0, 2, 3, 4)  # (T, n, C, H, W)
        return F.dropout(F.relu(z), self.dropout, self.training)


class TaskLinear(nn.Module):
    """G linear maps in -> out, one per task, on ONE shared input: weight (in, G, out) (task g's matrix is
    weight[:, g]), bias (G, out). forward(x (n, in)) -> (G, n, out) is one product x @ weight.view(in, G*out),
    and so is its backward: no (G, n, in) copy of the input and no per-task Python loop."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        if weight.ndim != 3 or tuple(bias.shape) != (weight.shape[1], weight.shape[2]):
            raise ValueError(f"need weight (in, G, out) and bias (G, out), got {tuple(weight.shape)} and {tuple(bias.shape)}")
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    @classmethod
    def of(cls, linears: list[nn.Linear]) -> "TaskLinear":
        """The stacked copy of G nn.Linear maps of one shape, with their weights as they are (e.g. as seeded:
        building them one by one draws the same initial weights as G separate layers)."""
        if len({(m.in_features, m.out_features) for m in linears}) != 1:
            raise ValueError("TaskLinear.of needs linear maps of one shape")
        with torch.no_grad():
            return cls(torch.stack([m.weight.T for m in linears], dim=1), torch.stack([m.bias for m in linears]))

    sparse_below = 1 / 16  # inputs with fewer non-zero entries than this fraction take the sparse path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (n, *shape) with prod(shape) = in -> (G, n, out), a view of one (n, G*out) product.

        A mostly-zero input (molecular fingerprints: about 3% ones) is summed over its non-zero entries
        only, x[r, i] times row i of the (in, G*out) weight (F.embedding_bag with per-sample weights): the
        same product up to float rounding, at that fraction of the arithmetic, forward and backward."""
        n, (d, G, w) = x.shape[0], self.weight.shape
        x, W = x.reshape(n, d), self.weight.reshape(d, G * w)
        nz = x.nonzero()  # (nnz, 2) row, feature; in row order
        if nz.shape[0] >= self.sparse_below * x.numel():
            z = torch.addmm(self.bias.reshape(G * w), x, W)  # (n, G*w)
        else:
            offsets = torch.cumsum(torch.bincount(nz[:, 0], minlength=n), 0) - torch.bincount(nz[:, 0], minlength=n)
            z = F.embedding_bag(nz[:, 1], W, offsets, mode="sum", per_sample_weights=x[nz[:, 0], nz[:, 1]])
            z = z + self.bias.reshape(G * w)
        return z.reshape(n, G, w).transpose(0, 1)

    def task(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (in, out), bias (out,)) of task g."""
        return self.weight[:, g], self.bias[g]
