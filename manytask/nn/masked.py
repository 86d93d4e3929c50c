"""Task-masked Linear and Conv2d layers for RSN2 (Renn, Sotnek, Harvey, Caffo, The Multiple Subnetwork
Hypothesis: Enabling Multidomain Learning by Isolating Task-Specific Subnetworks in Feedforward Neural
Networks, 2022).

A multitask layer keeps one kernel per task along a leading task axis and one binary mask per task (Eq. 1):

    F(x, t) = phi(x (W_t * M_t) + b_t * m_t)
    Linear: W (T, in, out), b (T, out);   Conv2d: W (T, out, in, k, k), b (T, out)

The masks are disjoint over the task axis (Eq. 3): at every position at most one task's weight is active,

    sum_t I(W_t * M_t != 0) <= 1,

so all tasks' weights fit in ONE single-task-shaped tensor plus an owner index (`pack` / `unpack`).
Masks are registered buffers: they are saved with the weights and move with `.to()`.

Shapes in forward(): a layer computes the tasks `idx` (indices into its task axis, default all n = T):
    Linear  x (batch, in) shared by the tasks       -> (n, batch, out)   one matmul
            x (n, batch, in) one slice per task      -> (n, batch, out)   one bmm
    Conv2d  x (batch, in, H, W) shared               -> (batch, n * out, H', W')   one conv
            x (batch, n * in, H, W) stacked per task -> (batch, n * out, H', W')   one grouped conv
Tasks that read different inputs (different batches) are computed by separate calls.

Layers raise ValueError on bad shapes, capacity shortfalls and overlapping masks; the method that chose
the settings turns those into messages for the user.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MaskedLayer(nn.Module):
    """What Linear and Conv2d share: parameters with a task axis, masks, selection, packing.

    names:      the name of each slice of the task axis (for messages and reports).
    out_limit:  per task, how many output units it may use (heads of tasks with fewer outputs); None: all.
    per_output: select the kept fraction within each output unit's incoming weights (used for heads, so
                that every output unit of every task keeps weights); else over the whole layer.
    disjoint_bias: False for heads: each task keeps its own output bias (a bias of an output unit cannot
                be split between tasks); the bias is then outside Eq. 3 and stored per task when packed.
    """

    out_axis = 0  # axis of the output units in one task's weight slice

    def __init__(self, names: list[str], weight_shape: tuple[int, ...], out_features: int, fan_in: int,
                 out_limit: list[int] | None = None, per_output: bool = False, disjoint_bias: bool = True):
        super().__init__()
        self.names = list(names)
        T = len(self.names)
        if T < 1:
            raise ValueError("a masked layer needs at least one task")
        self.out_limit = list(out_limit) if out_limit is not None else [out_features] * T
        self.per_output, self.disjoint_bias = per_output, disjoint_bias
        bound = math.sqrt(6.0 / fan_in)  # He-uniform per task slice, biases zero (as Keras)
        self.weight = nn.Parameter(torch.empty(T, *weight_shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(T, out_features))
        self.register_buffer("weight_mask", torch.zeros(T, *weight_shape, dtype=torch.bool))
        self.register_buffer("bias_mask", torch.zeros(T, out_features, dtype=torch.bool))

    @property
    def n_tasks(self) -> int:
        return len(self.names)

    def float_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The masks in the weights' dtype, cached until a mask changes (in place, .to(), loading):
        multiplying by a float mask is cheaper than by a bool one on every forward."""
        key = (id(self.weight_mask), self.weight_mask._version, id(self.bias_mask), self.bias_mask._version,
               self.weight.dtype, self.weight.device)
        if getattr(self, "_mask_key", None) != key:
            self._masks_f = (self.weight_mask.to(self.weight.dtype), self.bias_mask.to(self.weight.dtype))
            self._mask_key = key
        return self._masks_f

    def effective(self, idx=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(W * M, b * m) for tasks idx: (n, *weight slice), (n, out)."""
        mw, mb = self.float_masks()
        if idx is None or list(idx) == list(range(self.n_tasks)):
            return self.weight * mw, self.bias * mb
        i = torch.as_tensor(list(idx), device=self.weight.device)
        return self.weight[i] * mw[i], self.bias[i] * mb[i]

    # ---- masks -------------------------------------------------------------------------------------
    def allowed(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions task t may ever own: its first out_limit[t] output units. Bool, weight / bias slice."""
        w = torch.zeros(self.weight.shape[1:], dtype=torch.bool, device=self.weight.device)
        b = torch.zeros(self.bias.shape[1:], dtype=torch.bool, device=self.weight.device)
        w.narrow(self.out_axis, 0, self.out_limit[t]).fill_(True)
        b[:self.out_limit[t]] = True
        return w, b

    def free(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions task t may take now: allowed, and owned by no other task."""
        aw, ab = self.allowed(t)
        others = [s for s in range(self.n_tasks) if s != t]
        fw = aw & ~self.weight_mask[others].any(0) if others else aw
        fb = ab & ~self.bias_mask[others].any(0) if (others and self.disjoint_bias) else ab
        return fw, fb

    @torch.no_grad()
    def assign(self, t: int, keep: float, score_w: torch.Tensor, score_b: torch.Tensor, name: str = "",
               grow: float | None = None) -> None:
        """Algorithm 1 for one layer and task t: among the free positions, keep the top fraction `keep`
        by score (|gradient| or |weight|, >= 0). Ties go to the lower flat index (stable sort), so zero
        scores are resolved deterministically and never into a position another task owns.

        grow (selection in rounds): t keeps the positions its mask holds now and adds the best free ones
        until it holds floor(grow * k) of its k = floor(keep * n) (per output unit for per_output layers);
        grow=1 completes the budget. None: start from an empty mask (the one-shot call).

        score_w: weight slice shape; score_b: (out,). Raises ValueError when too few positions are free or
        `keep` leaves the task no weight."""
        held_w = self.weight_mask[t].clone() if grow is not None else torch.zeros_like(self.weight_mask[t])
        held_b = self.bias_mask[t].clone() if grow is not None else torch.zeros_like(self.bias_mask[t])
        share = 1.0 if grow is None else grow
        self.weight_mask[t] = False
        self.bias_mask[t] = False
        fw, fb = self.free(t)
        aw, ab = self.allowed(t)
        owners = [self.names[s] for s in range(self.n_tasks) if s != t and bool(self.weight_mask[s].any())]

        def short(k, n_free, what):
            raise ValueError(f"layer {name or type(self).__name__}: task {self.names[t]!r} needs {k} {what} but "
                              f"only {n_free} are free after tasks {owners}; lower keep so that the tasks' "
                              "fractions sum to at most 1")

        def none(n, what):
            raise ValueError(f"layer {name or type(self).__name__}: keep={keep} of {n} {what} leaves task "
                              f"{self.names[t]!r} no weight; raise keep or widen the layer")

        def ranked(score, free, held):  # held positions first, then free ones by score, taken ones last
            return torch.where(held, torch.full_like(score, math.inf),
                               torch.where(free, score, torch.full_like(score, -1.0)))

        s = ranked(score_w, fw, held_w)
        if self.per_output:  # weight slice (in, out): the top fraction of each allowed output unit's inputs
            k = math.floor(keep * s.shape[0] + 1e-9)
            cols = self.out_limit[t]
            if k == 0:
                none(s.shape[0], "inputs per output unit")
            n_free = int(fw[:, :cols].sum(0).min())
            if k > n_free:
                short(k, n_free, "inputs per output unit")
            k = math.floor(share * k + 1e-9)
            order = torch.argsort(s[:, :cols], dim=0, descending=True, stable=True)[:k]  # (k, cols)
            self.weight_mask[t, :, :cols].scatter_(0, order, True)
        else:
            k = math.floor(keep * int(aw.sum()) + 1e-9)
            if k == 0:
                none(int(aw.sum()), "weights")
            if k > int(fw.sum()):
                short(k, int(fw.sum()), "weights")
            order = torch.argsort(s.flatten(), descending=True, stable=True)[:math.floor(share * k + 1e-9)]
            self.weight_mask[t].view(-1)[order] = True
        if not self.disjoint_bias:
            self.bias_mask[t] = ab
            return
        sb = ranked(score_b, fb, held_b)
        k = math.floor(keep * int(ab.sum()) + 1e-9)  # may be 0 for narrow layers: no bias then
        if k > int(fb.sum()):
            short(k, int(fb.sum()), "biases")
        self.bias_mask[t, torch.argsort(sb, descending=True, stable=True)[:math.floor(share * k + 1e-9)]] = True

    def check_disjoint(self, name: str = "") -> None:
        """Eq. 3 on the masks: ValueError naming the layer, the position and the tasks on any overlap."""
        parts = [("weight", self.weight_mask)] + ([("bias", self.bias_mask)] if self.disjoint_bias else [])
        for what, mask in parts:
            count = mask.sum(0)
            if bool((count > 1).any()):
                pos = tuple(int(i) for i in (count > 1).nonzero()[0])
                tasks = [self.names[s] for s in range(self.n_tasks) if bool(mask[(s, *pos)])]
                raise ValueError(f"layer {name or type(self).__name__}: {what} at {pos} is owned by tasks {tasks}; "
                                  "task masks must be disjoint (Eq. 3)")

    @torch.no_grad()
    def ownership(self) -> dict:
        """Per task the fraction of the layer's weights it owns, the fraction nobody owns, and whether
        Eq. 3 holds on the effective kernels (sum over tasks of I(W_t * M_t != 0) <= 1 everywhere)."""
        w, _ = self.effective()
        active = (w != 0).sum(0)  # (*weight slice)
        n = active.numel()
        owned = {self.names[t]: float(self.weight_mask[t].sum()) / n for t in range(self.n_tasks)}
        return {"owned": owned, "unused": float((~self.weight_mask.any(0)).sum()) / n,
                "eq3": bool((active <= 1).all()), "positions": n}

    # ---- packing -----------------------------------------------------------------------------------
    @torch.no_grad()
    def pack(self) -> dict[str, torch.Tensor]:
        """ONE weight tensor of a single task's shape + owner index (base-T digits in uint8; none for T=1).
        A position nobody owns holds 0.0 (its owner digit is then 0, which changes no output)."""
        self.check_disjoint()
        w, b = self.effective()
        out = {"weight": w.sum(0).contiguous()}  # disjoint: the sum is the one active value, exactly
        if self.n_tasks > 1:
            out["weight_owner"] = pack_owner(self.weight_mask.to(torch.uint8).argmax(0), self.n_tasks)
        if self.disjoint_bias:
            out["bias"] = b.sum(0).contiguous()
            if self.n_tasks > 1:
                out["bias_owner"] = pack_owner(self.bias_mask.to(torch.uint8).argmax(0), self.n_tasks)
        else:
            out["bias"] = b.contiguous()  # (T, out): each task's own output bias
        return out

    @torch.no_grad()
    def unpack(self, packed: dict[str, torch.Tensor]) -> None:
        """Inverse of pack: W_t = packed * [owner == t], M_t = [owner == t] & [packed != 0]."""
        T = self.n_tasks
        w = packed["weight"].to(self.weight.device)
        wo = unpack_owner(packed["weight_owner"], T, w.shape) if T > 1 else torch.zeros(w.shape, dtype=torch.long)
        for t in range(T):
            m = (wo.to(w.device) == t) & (w != 0)
            self.weight_mask[t] = m
            self.weight[t] = w * m
        b = packed["bias"].to(self.weight.device)
        if self.disjoint_bias:
            bo = unpack_owner(packed["bias_owner"], T, b.shape) if T > 1 else torch.zeros(b.shape, dtype=torch.long)
            for t in range(T):
                m = (bo.to(b.device) == t) & (b != 0)
                self.bias_mask[t] = m
                self.bias[t] = b * m
        else:
            self.bias.copy_(b)
            for t in range(T):
                self.bias_mask[t] = self.allowed(t)[1]


class MaskedLinear(MaskedLayer):
    """Task-masked Linear: W (T, in, out), b (T, out). See the module docstring for forward shapes."""

    out_axis = 1

    def __init__(self, names: list[str], in_features: int, out_features: int, **kw):
        super().__init__(names, (in_features, out_features), out_features, in_features, **kw)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor, idx=None) -> torch.Tensor:
        w, b = self.effective(idx)  # (n, in, out), (n, out)
        n = w.shape[0]
        if x.dim() == 2:  # (batch, in) shared by the n tasks: one broadcast matmul, no copy of x or w
            return torch.matmul(x, w) + b[:, None, :]  # (n, batch, out)
        if x.dim() != 3 or x.shape[0] != n:
            raise ValueError(f"MaskedLinear: expected (batch, {self.in_features}) or ({n}, batch, "
                             f"{self.in_features}), got {tuple(x.shape)}")
        return torch.baddbmm(b[:, None, :], x, w)  # (n, batch, out)


class MaskedConv2d(MaskedLayer):
    """Task-masked Conv2d: W (T, out, in, k, k), b (T, out); stride 1. See the module docstring."""

    def __init__(self, names: list[str], in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int = 1, **kw):
        k = kernel_size
        super().__init__(names, (out_channels, in_channels, k, k), out_channels, in_channels * k * k, **kw)
        self.in_channels, self.out_channels, self.kernel_size, self.padding = in_channels, out_channels, k, padding

    def forward(self, x: torch.Tensor, idx=None, stacked: bool = False) -> torch.Tensor:
        """stacked=False: x (batch, in, H, W) shared; True: x (batch, n * in, H, W), task j in channel
        block j. -> (batch, n * out, H', W')."""
        w, b = self.effective(idx)  # (n, out, in, k, k), (n, out)
        n, k = w.shape[0], self.kernel_size
        w = w.reshape(n * self.out_channels, self.in_channels, k, k)  # (n * out, in, k, k)
        return F.conv2d(x, w, b.reshape(-1), padding=self.padding, groups=n if stacked else 1)


def masked_layers(model: nn.Module) -> dict[str, MaskedLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedLayer)}


def check_disjoint(model: nn.Module) -> None:
    """Eq. 3 on every masked layer of a model; a violation is a ValueError naming layer and tasks."""
    for name, layer in masked_layers(model).items():
        layer.check_disjoint(name)


def ownership_report(model: nn.Module) -> tuple[list[dict], bool]:
    """Verify Eq. 3 on any model: one row per layer {layer, positions, eq3, unused, <task>: fraction
    owned}, and whether Eq. 3 holds on every layer."""
    rows = []
    for name, layer in masked_layers(model).items():
        o = layer.ownership()
        rows.append({"layer": name, "positions": o["positions"], "eq3": o["eq3"], "unused": o["unused"], **o["owned"]})
    return rows, all(r["eq3"] for r in rows)


# ---- owner index: base-T digits, as many per byte as fit (T=2: 8, T=3: 5, T=4: 4, T=5..6: 3, ...) ----
#      more than 256 tasks: one int32 per position
def digits_per_byte(T: int) -> int:
    return max(1, int(math.floor(math.log(256) / math.log(T) + 1e-9)))


def pack_owner(owner: torch.Tensor, T: int) -> torch.Tensor:
    """owner (any shape, values in [0, T)) -> uint8 (ceil(numel / d),), d = digits_per_byte(T);
    for T > 256 int32 (numel,)."""
    if T > 256:
        return owner.flatten().cpu().to(torch.int32)
    d = digits_per_byte(T)
    flat = owner.flatten().cpu().numpy().astype(np.int64)
    flat = np.concatenate([flat, np.zeros((-len(flat)) % d, dtype=np.int64)]).reshape(-1, d)  # (bytes, d)
    return torch.from_numpy((flat * T ** np.arange(d)).sum(1).astype(np.uint8))


def unpack_owner(packed: torch.Tensor, T: int, shape) -> torch.Tensor:
    """Inverse of pack_owner -> long tensor of `shape`."""
    if T > 256:
        return packed.cpu().long().reshape(tuple(shape))
    d = digits_per_byte(T)
    b = packed.cpu().numpy().astype(np.int64)[:, None]  # (bytes, 1)
    flat = (b // T ** np.arange(d)) % T  # (bytes, d)
    n = int(np.prod(shape))
    return torch.from_numpy(flat.reshape(-1)[:n].reshape(tuple(shape)))
