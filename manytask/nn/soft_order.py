"""Banks of D shared layers of one width, stored stacked so that a depth applies them in one operation.

Soft layer ordering (Meyerson & Miikkulainen, ICLR 2018) needs, at every depth and for every task, the
output of all D shared layers F_1..F_D on that task's current representation. A bank keeps the D layers'
weights in one tensor and offers two operations on a task-stacked representation h (T, n, *feat):

    bank.all(h)       -> (T, D, n, *feat)   every layer on every task: F_j(h_t) for all t, j (soft ordering)
    bank.pick(h, idx) -> (T, n, *feat)      layer idx[t] on task t only (parallel / permuted ordering)

Each layer is weights, then ReLU, then dropout: F_j(h) = dropout(relu(h W_j + b_j)).
`all` costs D times the arithmetic of `pick`: that is the whole price of soft ordering.

DenseBank: feat = (w,), weight (D, w, w) stored as (layer, in, out).
ConvBank:  feat = (C, H, W), 3x3 convolutions with padding 1, weight (D, C, C, 3, 3) as (layer, out, in, kh, kw).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DenseBank(nn.Module):
    """D fully connected layers w -> w: weight (D, w, w) as (layer, in, out), bias (D, w)."""

    def __init__(self, depth: int, width: int, dropout: float = 0.0):
        super().__init__()
        bound = 1.0 / math.sqrt(width)  # nn.Linear's default initialisation, per layer
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

    def __init__(self, depth: int, channels: int, dropout: float = 0.0, kernel: int = 3):
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"kernel must be odd to keep the image size, got {kernel}")
        bound = 1.0 / math.sqrt(channels * kernel * kernel)  # nn.Conv2d's default initialisation, per layer
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
