"""n independent networks of one shape as one batched computation: their weights stacked along a leading
task axis, every layer one grouped GEMM (torch.baddbmm) instead of n modules.

BatchedLinear(n, in, out) holds n Linear layers: weight (n, in, out), bias (n, out). An input (batch, in)
shared by all n (one data set, many tasks) is expanded to (n, batch, in) as a stride-0 view, not copied n times.
A shared input that is mostly zeros (a molecular fingerprint: a few % ones) goes through SparseRows instead: the
forward sums, for every network and example, the weight rows at the example's nonzero inputs, and the weight
gradient sums, for every network and input, the output-gradient rows of the examples where that input is
nonzero (embedding_bag both ways), work in proportion to the nonzeros instead of batch * in; the same
x @ weight[i] up to float rounding. Nothing couples the n slices: the gradient of slice i depends only on
what slice i computed.

Initialisation is nn.Linear's default (kaiming-uniform weights with a = sqrt(5), biases uniform in
+-1/sqrt(in)), drawn slice by slice: `reset_slice(i)` consumes the random stream exactly as constructing
nn.Linear(in, out) does, so n separately built modules and the batched layer get bit-identical weights
from the same seed when the slices are initialised in the modules' construction order.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import activation


# A shared CPU input with at most this fraction of nonzero entries goes through SparseRows instead of the
# GEMM: `benchmarks/stl.py --phases --densities 0.05,0.2,0.3,0.5` timed stl's step (2048 inputs, batch 128)
# gathered at 0.77x, 0.60x, 0.52x the GEMM's at density 0.2 (N = 12, 100, 617 tasks; widths 512, 156, 25),
# 0.95x, 0.71x, 0.64x at 0.3, and 1.31x (slower), 0.92x, 0.87x at 0.5.
SPARSE_DENSITY = 0.2
# Most (network, nonzero entry) pairs indexed at once: a layer over more networks gathers them in chunks.
SPARSE_CHUNK = 2**22
# Largest table slice (bytes) gathered at once. Each slice is read once in order (a sum) before its rows are
# gathered in random order, so they come from the core's cache instead of one memory round trip each:
# `benchmarks/stl.py --sizes 617 --density 0.014 --contenders stl --phases --slice-mib 0` (no slices) timed
# stl's forward at 40-46 ms, and at 32-33 ms with --slice-mib 2 (widths 25: 205 KB per network).
SPARSE_SLICE_BYTES = 2**21


class SparseRows:
    """The nonzero entries of a mostly-zero input x (batch, in) without gradient, shared by the first layers
    of several BatchedLinear (made once per input by shared_input).

    bags("row", n): embedding_bag's (indices, offsets, per-sample weights) that turn w (n, in, out), seen as
    n * in rows, into x @ w[i] for every i: one bag per (network i, example b) over the rows i * in + k of
    the nonzero x[b, k]. bags("col", n): those that turn g (n, batch, out) into x.T @ g[i], the weight
    gradient: one bag per (network i, input k) over the rows i * batch + b of the nonzero x[b, k]. The
    bags of n networks are the first of those of more networks, so each is built once, for the most."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        rows, cols = x.nonzero(as_tuple=True)  # in row-major order: rows ascending
        values = x[rows, cols]
        order = torch.argsort(cols, stable=True)  # in column-major order: columns ascending
        # by bag kind: (bag of each entry, ascending; its table row within one network; value; bags per network)
        self.entries = {"row": (rows, cols, values, x.shape[0]),
                        "col": (cols[order], rows[order], values[order], x.shape[1])}
        self.ones = bool((values == 1).all())  # 0/1 input: no per-sample weights
        self.built: dict[str, tuple[int, tuple]] = {}  # kind -> (networks, bags)

    @property
    def nnz(self) -> int:
        return self.entries["row"][0].numel()

    def bags(self, kind: str, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        bag, index, values, count = self.entries[kind]
        stride = self.x.shape[1] if kind == "row" else self.x.shape[0]  # rows of the table per network
        if self.built.get(kind, (0,))[0] < n:
            dtype = torch.int32 if n * max(stride, bag.numel() + 1) < 2**31 else torch.long
            nets = torch.arange(n, dtype=dtype, device=bag.device)
            offsets = torch.zeros(n * count + 1, dtype=dtype, device=bag.device)
            torch.cumsum(torch.bincount(bag, minlength=count).repeat(n), 0, out=offsets[1:])
            self.built[kind] = (n, ((nets[:, None] * stride + index.to(dtype)).reshape(-1), offsets,
                                    None if self.ones else values.repeat(n)))
        index, offsets, weights = self.built[kind][1]
        nnz = bag.numel()
        return index[:n * nnz], offsets[:n * count + 1], None if weights is None else weights[:n * nnz]

    def gather(self, kind: str, table: torch.Tensor) -> torch.Tensor:
        """table (n, rows, out) -> (n, bags, out): the bags of `kind` over its n * rows rows, in chunks of at
        most SPARSE_CHUNK entries and SPARSE_SLICE_BYTES of the table, each read in order first when it
        spans several networks."""
        n, _, out = table.shape
        per_network = table[0].numel() * table.element_size()
        step = max(1, min(SPARSE_CHUNK // max(1, self.nnz), SPARSE_SLICE_BYTES // per_network))
        parts = []
        for start in range(0, n, step):
            chunk = table[start:start + step]
            if step < n:
                chunk.sum()  # a streaming read: the random-order gather below then finds the rows in the cache
            index, offsets, weights = self.bags(kind, chunk.shape[0])
            weights = None if weights is None else weights.to(table.dtype)
            parts.append(F.embedding_bag(index, chunk.reshape(-1, out), offsets, mode="sum", per_sample_weights=weights,
                                         include_last_offset=True).view(chunk.shape[0], -1, out))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def dropout_multipliers(numel: int, p: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """(numel,) dropout multipliers, F.dropout's in distribution: 1 / keep with probability keep, else 0, where
    keep is 1 - p rounded to a multiple of 2**-16 (within 2**-17 of it for 2**-17 <= p <= 1 - 2**-17, else the
    nearest of 2**-16 and 1 - 2**-16; p = 0 keeps all); the multiplier is exactly 1 / keep, so the mean stays
    1. Each entry compares 16 random bits, four from one 64-bit draw: for 617 x 128 x 25 multipliers 3.5-4.6 ms
    on one CPU core, against 8.6 ms for torch.rand and 12.2 ms for a float64 draw."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    if p == 0:
        return torch.ones(numel, device=device, dtype=dtype)
    threshold = min(max(round((1 - p) * 2**16), 1), 2**16 - 1)  # keep = threshold / 2**16
    bits = torch.empty(-(-numel // 4), dtype=torch.int64, device=device).random_(-2**63, None)  # all 64 bits random
    # as int16, uniform on -2**15 .. 2**15 - 1: below threshold - 2**15 with probability threshold / 2**16
    return bits.view(torch.int16)[:numel].lt(threshold - 2**15).to(dtype).div_(threshold / 2**16)


def shared_input(x: torch.Tensor) -> torch.Tensor | SparseRows:
    """An input (batch, in) of several BatchedLinear as they take it: SparseRows(x) when x is a floating-point
    CPU matrix without gradient with at most SPARSE_DENSITY nonzero entries, else x itself."""
    if (x.dim() == 2 and x.device.type == "cpu" and not x.requires_grad and x.is_floating_point()
            and int(torch.count_nonzero(x)) <= SPARSE_DENSITY * x.numel()):
        return SparseRows(x)
    return x


class _SparseLinear(torch.autograd.Function):
    """(weight (n, in, out), bias (n, out), SparseRows of x (batch, in)) -> x @ weight[i] + bias[i] for every
    i, (n, batch, out): the bias added in place to the gathered rows, its gradient the sum over the batch."""

    @staticmethod
    def forward(ctx, weight, bias, sparse):
        ctx.sparse = sparse
        return sparse.gather("row", weight).add_(bias.unsqueeze(1))

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        weight_grad, bias_grad = ctx.needs_input_grad[:2]
        return ctx.sparse.gather("col", grad) if weight_grad else None, grad.sum(1) if bias_grad else None, None


class BatchedLinear(nn.Module):
    """n independent Linear layers. forward: (batch, in) shared by all, or (n, batch, in) -> (n, batch, out)."""

    def __init__(self, n: int, in_features: int, out_features: int, reset: bool = True):
        super().__init__()
        if min(n, in_features, out_features) < 1:
            raise ValueError(f"BatchedLinear needs n, in_features, out_features >= 1, got {n}, {in_features}, {out_features}")
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))  # (n, in, out): x @ weight[i]
        self.bias = nn.Parameter(torch.empty(n, out_features))  # (n, out)
        if reset:  # False: uninitialised (torch.empty), for a caller that resets the slices in its own order
            self.reset_parameters()

    def reset_slice(self, i: int) -> None:
        """Initialise slice i as nn.Linear(in, out) initialises itself (same draws, same order)."""
        w = torch.empty(self.out_features, self.in_features, dtype=self.weight.dtype, device=self.weight.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's (out, in) layout: the same values in the same order
        bound = 1 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.weight[i].copy_(w.T)
            nn.init.uniform_(self.bias[i], -bound, bound)

    def reset_parameters(self) -> None:
        for i in range(self.n):
            self.reset_slice(i)

    def forward(self, x: torch.Tensor | SparseRows) -> torch.Tensor:
        """x: (batch, in) shared by all n (or shared_input's SparseRows of it), or (n, batch, in)."""
        shape = tuple((x.x if isinstance(x, SparseRows) else x).shape)
        if len(shape) not in (2, 3) or shape[-1] != self.in_features or len(shape) == 3 and shape[0] != self.n:
            raise ValueError(f"BatchedLinear({self.n}, {self.in_features}, {self.out_features}) takes (batch, "
                             f"{self.in_features}) or ({self.n}, batch, {self.in_features}), got {shape}")
        x = shared_input(x) if isinstance(x, torch.Tensor) and x.dim() == 2 else x
        if isinstance(x, SparseRows):
            return _SparseLinear.apply(self.weight, self.bias, x)  # (n, batch, out)
        if x.dim() == 2:  # (n, batch, in): stride-0 view of one column-major copy, read fast by the weight gradient
            x = x.t().contiguous().expand(self.n, -1, -1).transpose(1, 2)  # bmm: 1.6x faster than x.expand (617x2048x25)
        elif self.out_features == 1:  # n matrix-vector products: a multiply and a sum, faster than bmm both ways
            return (x * self.weight.transpose(1, 2)).sum(2, keepdim=True) + self.bias.unsqueeze(1)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)  # (n, batch, out)

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}"


class BatchedMLP(nn.Module):
    """n independent MLPs of one shape, each like nn.mlp.mlp(in_dim, widths, act, dropout, out_dim):
    BatchedLinear-act-dropout per width, then an optional BatchedLinear to out_dim without activation.

    forward(x, masks=None): x (batch, in_dim) shared by all n networks (or shared_input's SparseRows of
    it), or (n, batch, in_dim) ->
    (n, batch, out_dim or widths[-1]). masks: None, or one multiplier (n, batch, width) per hidden layer
    that replaces dropout (already scaled, e.g. bernoulli(1-p) / (1-p)); without masks, training draws
    that multiplier for all n networks at once, one (n, batch, width) draw per layer, so every network gets
    its own independent mask (the same distribution as F.dropout's, not its random stream). reset=False
    leaves the weights uninitialised (for a caller that calls reset_task in its own order).
    """

    def __init__(self, n: int, in_dim: int, widths: tuple[int, ...], act: str = "relu", dropout: float = 0.0,
                 out_dim: int | None = None, reset: bool = True):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        dims = (in_dim, *widths) + ((out_dim,) if out_dim is not None else ())
        self.n, self.in_dim, self.widths, self.out_dim, self.dropout = n, in_dim, tuple(widths), out_dim, dropout
        self.layers = nn.ModuleList(BatchedLinear(n, a, b, reset=False) for a, b in zip(dims[:-1], dims[1:]))
        self.act = activation(act)
        if reset:  # False: uninitialised, for a caller that calls reset_task in its own order
            self.reset_parameters()

    def reset_task(self, i: int) -> None:
        """Initialise network i as mlp() initialises its layers (first to last)."""
        for layer in self.layers:
            layer.reset_slice(i)

    def reset_parameters(self) -> None:
        """Network by network, as n mlp() modules built one after the other."""
        for i in range(self.n):
            self.reset_task(i)

    def params_per_network(self) -> int:
        """Weights and biases of one of the n networks (mlp_params of its shape)."""
        return sum(p.numel() for p in self.parameters()) // self.n

    def forward(self, x: torch.Tensor | SparseRows, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        if masks is not None and len(masks) != len(self.widths):
            raise ValueError(f"need one dropout mask per hidden layer ({len(self.widths)}), got {len(masks)}")
        h = x
        for j, layer in enumerate(self.layers):
            h = layer(h)  # (n, batch, dims[j + 1])
            if j < len(self.widths):
                h = self.act(h)
                if masks is not None:
                    h = h * masks[j]
                elif self.training and self.dropout > 0:
                    h = h * dropout_multipliers(h.numel(), self.dropout, h.device, h.dtype).view_as(h)
        return h
