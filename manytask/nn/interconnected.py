"""The inter-layer of an interconnected neural network (ICNN; Ramabaja, Interconnected Neural Networks for
Multi Task Learning, 2018, section 3).

N subnetworks, one per task, run side by side. Layer j of subnetwork i reads every subnetwork's
previous layer:

    a(j, i) = f( sum_k W(j, k->i) a(j-1, k) + b(j, i) )                                  (thesis s. 3)

W(j, i->i) is subnetwork i's ROOT weight; W(j, k->i), k != i, are the CONNECTOR weights into i.
Backward rule (gradient isolation): task i's loss updates only subnetwork i's root weights, its biases
and the connectors INTO i; it never flows into another subnetwork's activations. In autograd terms the
sources a(j-1, k), k != i, are detached on the connector paths into i. Losses are still summed into one
scalar: the isolation comes from the graph, not from separate backward passes.

Parameters per inter-layer: n*m*N^2 (n inputs, m outputs per subnetwork). With `targets` (section 6.1)
only the listed subnetworks receive connectors: n*m*(N + T*(N-1)) for T targets, i.e. n*m*(2N-1) for one
target (the thesis rounds this to n*m*2N).

Layout. Activations travel as (batch, N, width) so that (batch, N*n) is a view. The full layer stores
its N^2 blocks as ONE destination-major weight of shape (N_dst, N_src, n, m): weight[i, k] = W(k->i), and
weight[i] viewed as (N*n, m) is everything that feeds subnetwork i. The forward is one batched matmul
over the N destinations, z_i = a @ weight[i] (the input is broadcast, not copied). With isolation the
backward is written out (`_IsolatedMatmul`): it is exactly the autograd of
z_i = W_ii a_i + sum_{k != i} W_ki detach(a_k) (tests/nn/test_interconnected.py checks it against that
naive form), computed as

    dL/dW_i = a^T g_i                   one batched matmul over destinations, every block (root and connector)
    dL/da_i = g_i W_ii^T                one batched matmul over the N roots; connectors pass nothing back

so the layer does the same FLOPs as the per-pair definition, in three large kernels instead of N^2 small
ones. (A source-major weight with one (batch, N*n) @ (N*n, N*m) GEMM was the first version: at N=32,
width 512 that single 16384 x 16384 GEMM ran at 43 GF/s where 512 x 512 blocks run at 49; per destination
the GEMMs are (batch x N*n) @ (N*n x m), benchmarks/icnn_layer.py.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


def _per_destination(a: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """a: (batch, N*n), W: (N_dst, N*n, m) -> (N_dst, batch, m): z_i = a @ W[i] as one batched matmul."""
    return torch.bmm(a.unsqueeze(0).expand(W.shape[0], -1, -1), W)


class _IsolatedMatmul(torch.autograd.Function):
    """z_i = a @ W[i] over all N^2 blocks; the gradient reaches a_i only through the root block W[i, i].

    a: (batch, N, n), W: (N_dst, N_src, n, m) -> z: (batch, N_dst, m)."""

    @staticmethod
    def forward(ctx, a, W):
        b, N, n = a.shape
        ctx.save_for_backward(a, W)
        return _per_destination(a.reshape(b, N * n), W.reshape(N, N * n, W.shape[3])).transpose(0, 1)

    @staticmethod
    def backward(ctx, g):  # g: (batch, N, m)
        a, W = ctx.saved_tensors
        b, N, n = a.shape
        m = W.shape[3]
        g = g.transpose(0, 1)  # (N, batch, m)
        grad_a = grad_w = None
        if ctx.needs_input_grad[0]:
            roots = W.diagonal(dim1=0, dim2=1).permute(2, 1, 0)  # (n, m, N) -> (N, m, n): W_ii^T
            grad_a = torch.bmm(g, roots).transpose(0, 1)  # (N, batch, n) -> (batch, N, n)
        if ctx.needs_input_grad[1]:
            at = a.reshape(b, N * n).t()  # (N*n, batch)
            grad_w = torch.bmm(at.unsqueeze(0).expand(N, -1, -1), g).reshape(N, N, n, m)  # (N_dst, N_src, n, m)
        return grad_a, grad_w


class InterLayer(nn.Module):
    """N parallel subnetworks' layer with connector weights between them (no activation).

    forward(a): (batch, N, n) -> (batch, N, m) pre-activations z.
    n_tasks: N; n_in: n; n_out: m; isolate: detach connector sources (the thesis's backward rule);
    targets: indices of the subnetworks that receive connectors (None: all, the full ICNN).
    """

    def __init__(self, n_tasks: int, n_in: int, n_out: int, isolate: bool = True,
                 targets: Sequence[int] | None = None):
        super().__init__()
        if n_tasks < 1 or n_in < 1 or n_out < 1:
            raise ValueError(f"an inter-layer needs n_tasks, n_in, n_out >= 1, got {n_tasks}, {n_in}, {n_out}")
        self.n_tasks, self.n_in, self.n_out, self.isolate = n_tasks, n_in, n_out, isolate
        self.full = targets is None
        bound = 1.0 / np.sqrt(n_in * n_tasks)  # the fan-in of one unit is n * N (all subnetworks feed it)
        if self.full:
            self.weight = nn.Parameter(torch.empty(n_tasks, n_tasks, n_in, n_out).uniform_(-bound, bound))  # (N_dst, N_src, n, m)
        else:
            targets = sorted(set(int(t) for t in targets))
            if not targets or targets[0] < 0 or targets[-1] >= n_tasks:
                raise ValueError(f"targets={list(targets)}: need subnetwork indices in 0..{n_tasks - 1}, at least one")
            if n_tasks < 2:
                raise ValueError("targets= needs at least 2 subnetworks (connectors come from the others)")
            self.register_buffer("targets", torch.tensor(targets), persistent=False)  # (T,)
            others = torch.tensor([[k for k in range(n_tasks) if k != t] for t in targets])  # (T, N-1)
            self.register_buffer("sources", others, persistent=False)
            self.root = nn.Parameter(torch.empty(n_tasks, n_in, n_out).uniform_(-bound, bound))  # (N, n, m)
            self.connector = nn.Parameter(torch.empty(len(targets), n_tasks - 1, n_in, n_out).uniform_(-bound, bound))  # (T, N-1, n, m)
        self.bias = nn.Parameter(torch.zeros(n_tasks, n_out))  # (N, m)

    def extra_repr(self) -> str:
        t = "all" if self.full else self.targets.tolist()
        return f"N={self.n_tasks}, n={self.n_in}, m={self.n_out}, isolate={self.isolate}, targets={t}"

    def root_weights(self) -> torch.Tensor:
        """(N, n, m): W(i->i) for every subnetwork (a view for the full layer)."""
        if self.full:
            return self.weight.diagonal(dim1=0, dim2=1).permute(2, 0, 1)  # (n, m, N) -> (N, n, m)
        return self.root

    def blocks_abs_sum(self) -> torch.Tensor:
        """(N_src, N_dst): sum of |W(k->i)| per ordered pair; 0 where there is no block (targets)."""
        with torch.no_grad():
            if self.full:
                return self.weight.abs().sum(dim=(2, 3)).T  # (N_dst, N_src, n, m) -> (N_src, N_dst)
            out = torch.diag(self.root.abs().sum(dim=(1, 2)))  # (N, N), roots on the diagonal
            conn = self.connector.abs().sum(dim=(2, 3))  # (T, N-1)
            for j, t in enumerate(self.targets.tolist()):
                out[self.sources[j], t] = conn[j]
            return out

    def connector_params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(parameter, boolean mask of its connector entries)]: what pruning and the L1 penalty act on."""
        if self.full:
            eye = torch.eye(self.n_tasks, dtype=torch.bool, device=self.weight.device)
            mask = (~eye)[:, :, None, None].expand_as(self.weight)  # (N_dst, N_src, n, m)
            return [(self.weight, mask)]
        return [(self.connector, torch.ones_like(self.connector, dtype=torch.bool))]

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        """a: (batch, N, n) -> z: (batch, N, m)."""
        b, N, n = a.shape
        if N != self.n_tasks or n != self.n_in:
            raise ValueError(f"InterLayer expects (batch, {self.n_tasks}, {self.n_in}), got {tuple(a.shape)}")
        if self.full:
            if self.isolate:
                return _IsolatedMatmul.apply(a, self.weight) + self.bias  # (batch, N, m)
            z = _per_destination(a.reshape(b, N * n), self.weight.reshape(N, N * n, self.n_out))  # (N, batch, m)
            return z.transpose(0, 1) + self.bias
        z = torch.bmm(a.transpose(0, 1), self.root).transpose(0, 1)  # (batch, N, m): root paths, never detached
        src = a.detach() if self.isolate else a
        T = len(self.targets)
        others = src[:, self.sources]  # (batch, T, N-1, n)
        others = others.reshape(b, T, (N - 1) * n).transpose(0, 1)  # (T, batch, (N-1)*n)
        conn = torch.bmm(others, self.connector.reshape(T, (N - 1) * n, self.n_out))  # (T, batch, m)
        z = z.index_add(1, self.targets, conn.transpose(0, 1))  # add into the target subnetworks
        return z + self.bias


def interlayers(model: nn.Module) -> list[InterLayer]:
    return [m for m in model.modules() if isinstance(m, InterLayer)]


def connector_l1(model: nn.Module) -> torch.Tensor:
    """Sum of |connector weights| over every inter-layer of `model` (roots and biases excluded)."""
    total = None
    for layer in interlayers(model):
        for p, mask in layer.connector_params():
            s = (p.abs() * mask).sum()
            total = s if total is None else total + s
    if total is None:
        raise ValueError("connector_l1: the model has no InterLayer")
    return total


def count_connectors(model: nn.Module) -> tuple[int, int]:
    """(non-zero connector weights, all connector weights) over every inter-layer of `model`."""
    nz = tot = 0
    for layer in interlayers(model):
        for p, mask in layer.connector_params():
            nz += int((p.detach()[mask] != 0).sum())
            tot += int(mask.sum())
    return nz, tot


@torch.no_grad()
def prune_connectors(model: nn.Module, fraction: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Magnitude pruning (Ramabaja 2018, section 6.2): in each inter-layer, zero the `fraction` of connector weights
    with the smallest |w| (roots and biases untouched). Returns [(parameter, keep mask)] so fine-tuning
    can hold the pruned weights at zero (`apply_masks` after every optimizer step)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune_connectors: fraction={fraction}; the pruned fraction of connectors must be in [0, 1)")
    kept = []
    for layer in interlayers(model):
        for p, mask in layer.connector_params():
            mags = p.abs()[mask]  # (connectors,)
            k = int(round(fraction * mags.numel()))
            keep = torch.ones_like(p, dtype=torch.bool)
            if k > 0:
                cut = mags.kthvalue(k).values
                drop = mask & (p.abs() <= cut)
                extra = int(drop.sum()) - k  # ties at the threshold: keep the surplus (first in order)
                if extra > 0:
                    tied = (drop & (p.abs() == cut)).flatten().nonzero().flatten()[:extra]
                    drop.view(-1)[tied] = False
                keep = ~drop
            p.mul_(keep)
            kept.append((p, keep))
    return kept


@torch.no_grad()
def apply_masks(kept: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for p, keep in kept:
        p.mul_(keep)


def connector_matrices(model: nn.Module) -> list[np.ndarray]:
    """One (N_src, N_dst) matrix of sum |W(k->i)| per inter-layer, first to last."""
    return [layer.blocks_abs_sum().cpu().numpy() for layer in interlayers(model)]
