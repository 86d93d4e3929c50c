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

Sparse connectors (`connectors=k`): each receiving subnetwork i reads only k source subnetworks
sources[i] (k distinct indices, never i itself) besides its own root: n*m*N*(k+1) weights, memory and
time O(N*k) instead of O(N^2) (at N=617 tasks, n=128, m=64 the full layer is 12.5 GB of weights alone).
The connectors are one fixed-shape (T, k, n, m) block tensor and `sources` an integer (T, k) buffer,
gathered in the forward; the buffer is persistent (it is in state_dict, so saved weights and resumed runs
get the same sources back). Which sources is decided outside the layer (`set_sources`, e.g. from label
correlations before training; until then the k following subnetworks, cyclically), since the parameter
shapes do not depend on it. Gradient isolation is the same rule: the sources are detached on the
connector paths (autograd of z_i = W_ii a_i + sum_{k in sources[i]} W_ki detach(a_k); tests check it
against that naive form).

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


def _in_float32(forward):
    """A custom Function's forward with autocast off, in float32 at least (amp=bf16): its backward then gets
    gradients and saved tensors of one dtype (autograd casts the gradient of a bf16 input back to bf16)."""
    def run(ctx, a, W, *rest):
        dtype = torch.promote_types(W.dtype, torch.float32)
        with torch.autocast(a.device.type, enabled=False):
            return forward(ctx, a.to(dtype), W.to(dtype), *rest)
    return run


class _IsolatedMatmul(torch.autograd.Function):
    """z_i = a @ W[i] over all N^2 blocks; the gradient reaches a_i only through the root block W[i, i].

    a: (batch, N, n), W: (N_dst, N_src, n, m) -> z: (batch, N_dst, m)."""

    @staticmethod
    @_in_float32
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


class _GatheredMatmul(torch.autograd.Function):
    """z_t = sum_j a[:, sources[t, j]] @ W[t, j] for the T receivers: one batched matmul per source slot j.

    a: (batch, N, n), W: (T, k, n, m), sources: (T, k) long -> z: (T, batch, m). Only a (batch, T, n) slice of
    the gathered sources exists at a time and the backward gathers again, so memory stays O(batch*N*n) (the
    whole gather (batch, T, k, n) is 2.6 GB at N=617, k=16, n=32 and an evaluation batch of 2048). The
    backward is the autograd of that sum: dW[t, j] = a_s^T g_t and, unless a is detached, dA_s += g_t W[t, j]^T
    for s = sources[t, j]."""

    @staticmethod
    @_in_float32
    def forward(ctx, a, W, sources):
        at = a.transpose(0, 1).contiguous()  # (N, batch, n): whole rows to gather (4x faster than from the view)
        ctx.save_for_backward(at, W, sources)
        z = torch.bmm(at[sources[:, 0]], W[:, 0])  # (T, batch, n) @ (T, n, m) -> (T, batch, m)
        for j in range(1, W.shape[1]):
            z = z.baddbmm_(at[sources[:, j]], W[:, j])
        return z

    @staticmethod
    def backward(ctx, g):  # g: (T, batch, m)
        at, W, sources = ctx.saved_tensors  # at: (N, batch, n)
        grad_a = grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(W)  # (T, k, n, m)
            for j in range(W.shape[1]):
                grad_w[:, j] = torch.bmm(at[sources[:, j]].transpose(1, 2), g)
        if ctx.needs_input_grad[0]:
            grad_at = torch.zeros_like(at)  # (N, batch, n)
            for j in range(W.shape[1]):
                grad_at.index_add_(0, sources[:, j], torch.bmm(g, W[:, j].transpose(1, 2)))
            grad_a = grad_at.transpose(0, 1)
        return grad_a, grad_w, None


class InterLayer(nn.Module):
    """N parallel subnetworks' layer with connector weights between them (no activation).

    forward(a): (batch, N, n) -> (batch, N, m) pre-activations z.
    n_tasks: N; n_in: n; n_out: m; isolate: detach connector sources (the thesis's backward rule);
    targets: indices of the subnetworks that receive connectors (None: all, the full ICNN);
    connectors: sources per receiving subnetwork, k in 1..N-1 (None: every other subnetwork; with neither
    targets nor connectors the layer is the dense (N_dst, N_src, n, m) weight).
    """

    def __init__(self, n_tasks: int, n_in: int, n_out: int, isolate: bool = True,
                 targets: Sequence[int] | None = None, connectors: int | None = None):
        super().__init__()
        if n_tasks < 1 or n_in < 1 or n_out < 1:
            raise ValueError(f"an inter-layer needs n_tasks, n_in, n_out >= 1, got {n_tasks}, {n_in}, {n_out}")
        self.n_tasks, self.n_in, self.n_out, self.isolate = n_tasks, n_in, n_out, isolate
        self.full = targets is None and connectors is None
        if self.full:
            bound = 1.0 / np.sqrt(n_in * n_tasks)  # the fan-in of one unit is n * N (all subnetworks feed it)
            self.weight = nn.Parameter(torch.empty(n_tasks, n_tasks, n_in, n_out).uniform_(-bound, bound))  # (N_dst, N_src, n, m)
        else:
            targets = sorted(set(int(t) for t in (range(n_tasks) if targets is None else targets)))
            if not targets or targets[0] < 0 or targets[-1] >= n_tasks:
                raise ValueError(f"targets={list(targets)}: need subnetwork indices in 0..{n_tasks - 1}, at least one")
            if n_tasks < 2:
                raise ValueError("targets= or connectors= needs at least 2 subnetworks (connectors come from the others)")
            if connectors is not None and not 1 <= connectors <= n_tasks - 1:
                raise ValueError(f"connectors={connectors}: need 1..{n_tasks - 1} sources per subnetwork (N={n_tasks})")
            k = n_tasks - 1 if connectors is None else connectors
            self.register_buffer("targets", torch.tensor(targets), persistent=False)  # (T,)
            # (T, k): the others in order; with connectors=k the k following subnetworks until set_sources
            others = torch.tensor([[(t + 1 + j) % n_tasks for j in range(n_tasks - 1)] for t in targets])
            others = others[:, :k].clone() if connectors is not None else others.sort(dim=1).values  # own storage: saved
            self.register_buffer("sources", others, persistent=connectors is not None)
            bound = 1.0 / np.sqrt(n_in * (k + 1))  # fan-in: the root and k sources (n * N for the targets form)
            self.root = nn.Parameter(torch.empty(n_tasks, n_in, n_out).uniform_(-bound, bound))  # (N, n, m)
            self.connector = nn.Parameter(torch.empty(len(targets), k, n_in, n_out).uniform_(-bound, bound))  # (T, k, n, m)
        self.bias = nn.Parameter(torch.zeros(n_tasks, n_out))  # (N, m)

    @torch.no_grad()
    def set_sources(self, sources: torch.Tensor) -> None:
        """sources: (T, k) integer source subnetworks of each receiving subnetwork (row j feeds targets[j]):
        distinct per row, never the receiver itself. Copied into the `sources` buffer (same device)."""
        if self.full:
            raise ValueError("set_sources: a dense inter-layer reads every subnetwork; build it with connectors=k")
        sources = torch.as_tensor(sources)
        if tuple(sources.shape) != tuple(self.sources.shape):
            raise ValueError(f"set_sources: expected shape {tuple(self.sources.shape)}, got {tuple(sources.shape)}")
        sources = sources.to(device=self.sources.device, dtype=self.sources.dtype)
        if sources.numel() and (int(sources.min()) < 0 or int(sources.max()) >= self.n_tasks):
            raise ValueError(f"set_sources: indices must be in 0..{self.n_tasks - 1}")
        if bool((sources == self.targets[:, None]).any()):
            raise ValueError("set_sources: a subnetwork cannot be its own source (its root is always there)")
        if bool((sources.sort(dim=1).values.diff(dim=1) == 0).any()):
            raise ValueError("set_sources: the sources of a subnetwork must be distinct")
        self.sources.copy_(sources)

    def extra_repr(self) -> str:
        t = "all" if self.full or len(self.targets) == self.n_tasks else self.targets.tolist()
        k = self.n_tasks - 1 if self.full else self.sources.shape[1]
        return f"N={self.n_tasks}, n={self.n_in}, m={self.n_out}, isolate={self.isolate}, targets={t}, connectors={k}"

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
        conn = _GatheredMatmul.apply(src, self.connector, self.sources)  # (T, batch, m)
        # add into the target subnetworks; under amp=bf16 the sum takes the connector paths' float32
        z = z.to(conn.dtype).index_add(1, self.targets, conn.transpose(0, 1))
        return z + self.bias


def top_sources(scores: torch.Tensor, k: int) -> torch.Tensor:
    """scores: (N_src, N_dst), larger = more useful source (e.g. |label correlation|, or sum |W(k->i)| of a
    trained dense layer) -> (N_dst, k) long: for every destination the k other subnetworks with the largest
    score, best first; ties go to the lower index, the diagonal (the destination itself) is never chosen."""
    N = scores.shape[0]
    if scores.shape != (N, N) or not 1 <= k <= N - 1:
        raise ValueError(f"top_sources: need a square (N, N) score matrix and k in 1..N-1, got {tuple(scores.shape)}, k={k}")
    s = scores.T.detach().double().cpu()  # (N_dst, N_src)
    s = torch.where(torch.isnan(s), float("-inf"), s)  # a NaN score ranks last
    order = torch.sort(-s, dim=1, stable=True).indices  # (N_dst, N); stable: equal scores keep index order
    others = order[order != torch.arange(N)[:, None]].reshape(N, N - 1)  # drop each destination itself
    return others[:, :k].contiguous()


def random_sources(n_tasks: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(N, k) long: for every subnetwork k distinct other subnetworks drawn uniformly with `generator`."""
    if not 1 <= k <= n_tasks - 1:
        raise ValueError(f"random_sources: k={k}; need 1..{n_tasks - 1}")
    rows = []
    for i in range(n_tasks):
        perm = torch.randperm(n_tasks - 1, generator=generator)[:k]  # among the N-1 others
        rows.append(perm + (perm >= i).long())  # skip i itself
    return torch.stack(rows)


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
