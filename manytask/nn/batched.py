"""n independent networks of one shape as one batched computation: their weights stored side by side, so a
layer over a shared input is one GEMM (or one sparse gather) instead of n modules.

BatchedLinear(n, in, out) holds n Linear layers in one table (in, n, out): row k holds input k's weights of
all n networks side by side, network i's matrix (in, out) is table[:, i], and `weight` is the (n, in, out)
view of it. An input (batch, in) shared by all n (one data set, many tasks) is then one GEMM,
x @ table.view(in, n * out). A shared input that is mostly zeros (a molecular fingerprint: a few % ones)
goes through SparseRows instead: the forward sums, for every example, the table rows of its nonzero
inputs (rows of n * out contiguous values), and the table's gradient sums, for every input, the
output-gradient rows of the examples where that input is nonzero (embedding_bag both ways), work in
proportion to the nonzeros instead of batch * in; the same x @ weight[i] up to float rounding. An input
(n, batch, in) of n different rows (a layer after the first) is a grouped GEMM (torch.baddbmm) over the
weight view. Nothing couples the n slices: the gradient of slice i depends only on what slice i computed.

Initialisation is nn.Linear's default (kaiming-uniform weights with a = sqrt(5), biases uniform in
+-1/sqrt(in)), drawn slice by slice: `reset_slice(i)` consumes the random stream exactly as constructing
nn.Linear(in, out) does, so n separately built modules and the batched layer get bit-identical weights
from the same seed when the slices are initialised in the modules' construction order. Weights saved in
the earlier (n, in, out) layout (key `weight`) load into the table.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import activation


# A shared CPU input with at most this fraction of nonzero entries goes through SparseRows instead of the
# GEMM: `benchmarks/stl.py --sizes 12,100,617 --contenders stl --densities 0.05,0.2,0.3,0.5` timed stl's step
# (2048 inputs, batch 128, one thread; widths 128, 128, 25) gathered at 0.63x, 0.48x, 0.54x the GEMM's at
# density 0.2, 0.81x, 0.66x, 0.73x at 0.3, and 1.21x, 1.03x, 1.06x (slower) at 0.5.
SPARSE_DENSITY = 0.2


class SparseRows:
    """The nonzero entries of a mostly-zero input x (batch, in) without gradient, shared by the first layers
    of several BatchedLinear (made once per input by shared_input), as embedding_bag's (indices, offsets,
    per-sample weights) both ways: `row`, one bag per example b over the inputs k of its nonzero x[b, k],
    turns a table (in, m) into x @ table (batch, m); `col`, one bag per input k over the examples b of the
    nonzero x[b, k], turns g (batch, m) into x.T @ g (in, m), the table's gradient."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        rows, cols = x.nonzero(as_tuple=True)  # in row-major order: rows ascending
        values = x[rows, cols]
        order = torch.argsort(cols, stable=True)  # in column-major order: columns ascending
        ones = bool((values == 1).all())  # 0/1 input: no per-sample weights

        def bags(bag: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, count: int) -> tuple:
            offsets = torch.zeros(count + 1, dtype=torch.long, device=x.device)
            torch.cumsum(torch.bincount(bag, minlength=count), 0, out=offsets[1:])
            return index, offsets, None if ones else weights

        self.row = bags(rows, cols, values, x.shape[0])
        self.col = bags(cols[order], rows[order], values[order], x.shape[1])

    @property
    def nnz(self) -> int:
        return self.row[0].numel()

    @staticmethod
    def gather(bags: tuple, table: torch.Tensor) -> torch.Tensor:
        """table (rows, m) -> (bags, m): the sum of each bag's rows (weighted by x's values unless all are 1)."""
        index, offsets, weights = bags
        return F.embedding_bag(index, table, offsets, mode="sum", include_last_offset=True,
                               per_sample_weights=None if weights is None else weights.to(table.dtype))


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
    """(table (in, n, out), bias (n, out), SparseRows of x (batch, in)) -> x @ table[:, i] + bias[i] for every
    i, as (batch, n, out): the bias added in place to the gathered rows, its gradient the sum over the batch."""

    @staticmethod
    def forward(ctx, table, bias, sparse):
        ctx.sparse = sparse
        return sparse.gather(sparse.row, table.view(table.shape[0], -1)).view(-1, *bias.shape).add_(bias)

    @staticmethod
    def backward(ctx, grad):
        table_grad, bias_grad = ctx.needs_input_grad[:2]
        sparse = ctx.sparse
        return (sparse.gather(sparse.col, grad.reshape(grad.shape[0], grad.shape[1] * grad.shape[2]))
                .view(sparse.x.shape[1], *grad.shape[1:])
                if table_grad else None, grad.sum(0) if bias_grad else None, None)


class BatchedLinear(nn.Module):
    """n independent Linear layers. forward: (batch, in) shared by all, or (n, batch, in) -> (n, batch, out).
    Parameters: table (in, n, out), network i's weight table[:, i] (x @ table[:, i]); bias (n, out)."""

    def __init__(self, n: int, in_features: int, out_features: int, reset: bool = True):
        super().__init__()
        if min(n, in_features, out_features) < 1:
            raise ValueError(f"BatchedLinear needs n, in_features, out_features >= 1, got {n}, {in_features}, {out_features}")
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.table = nn.Parameter(torch.empty(in_features, n, out_features))  # (in, n, out): contiguous for Adam
        self.bias = nn.Parameter(torch.empty(n, out_features))  # (n, out)
        self.register_load_state_dict_pre_hook(_from_weight_layout)
        if reset:  # False: uninitialised (torch.empty), for a caller that resets the slices in its own order
            self.reset_parameters()

    @property
    def weight(self) -> torch.Tensor:
        """(n, in, out), a view of the table: weight[i] is network i's matrix."""
        return self.table.transpose(0, 1)

    def reset_slice(self, i: int) -> None:
        """Initialise slice i as nn.Linear(in, out) initialises itself (same draws, same order)."""
        w = torch.empty(self.out_features, self.in_features, dtype=self.table.dtype, device=self.table.device)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's (out, in) layout: the same values in the same order
        bound = 1 / math.sqrt(self.in_features)
        with torch.no_grad():
            self.table[:, i].copy_(w.T)
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
            return _SparseLinear.apply(self.table, self.bias, x).transpose(0, 1)  # (n, batch, out)
        if x.dim() == 2:  # one GEMM for all n: (batch, in) @ (in, n * out)
            y = torch.addmm(self.bias.view(1, -1), x, self.table.view(self.in_features, -1))
            return y.view(-1, self.n, self.out_features).transpose(0, 1)  # (n, batch, out)
        if self.out_features == 1:  # n matrix-vector products: a multiply and a sum, faster than bmm both ways
            return (x * self.table.permute(1, 2, 0)).sum(2, keepdim=True) + self.bias.unsqueeze(1)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)  # (n, batch, out)

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}"


def _from_weight_layout(module: BatchedLinear, state_dict, prefix, *_):
    """Load hook: a weight saved as `weight` (n, in, out) becomes the table (in, n, out)."""
    if prefix + "weight" in state_dict and prefix + "table" not in state_dict:
        state_dict[prefix + "table"] = state_dict.pop(prefix + "weight").transpose(0, 1)


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
