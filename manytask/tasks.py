"""Tasks: what a model must output for each task, and the loss that skips missing labels.

A task's labels are a float tensor of shape (n,), NaN where the label is missing. Binary labels are 0/1,
multiclass labels are class indices stored as floats, regression labels are real values in the target's
own units. A model's output for a task has shape (n, task.outputs): 1 logit (binary), C logits
(multiclass) or 1 value (regression): the standardised target (y - shift) / scale, which predict() turns
back into the target's units, so losses are standardised and metrics and predictions are in units.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("binary", "multiclass", "regression")
# the metrics of each kind that can be a task's primary metric (the one tables show); the first is the default
METRICS = {"binary": ("auc", "prc_auc", "accuracy"), "multiclass": ("accuracy", "error"), "regression": ("rmse", "mse", "nrmse")}
# names a ModuleDict or ParameterDict cannot take as keys: their own attributes ("forward", "train", "keys", ...)
RESERVED_KEYS = frozenset(dir(nn.ModuleDict())) | frozenset(dir(nn.ParameterDict()))
_ESCAPE_LIKE = re.compile(r"%[0-9A-Fa-f]{2}")


def regression_only(tasks: list[Task]) -> bool:
    """Every task is a regression (the data some methods start or schedule differently for)."""
    return all(t.kind == "regression" for t in tasks)


def initial_scale(init: str, tasks: list[Task]) -> str:
    """A method's init key resolved: "auto" is "torch" (nn.Linear's weight scale) when every task is a
    regression, else "he"; "he" and "torch" stay as they are."""
    return init if init != "auto" else "torch" if regression_only(tasks) else "he"


def module_key(name: str) -> str:
    """The key of a task's or an input's module in an nn.ModuleDict (and so in saved weights).

    A name that is a valid key (no ".", not an attribute of a ModuleDict such as "forward" or "train", no
    "%XX" hex sequence) is its own key, so the weights saved for such names keep loading. Any other name is
    percent-encoded: "%" -> "%25", "." -> "%2E", and the first character of an attribute name ("forward" ->
    "%66orward"). Distinct names give distinct keys (an encoded key always holds a "%XX", a plain one never).
    """
    if not name:
        raise ValueError("a task or input name cannot be empty")
    if "." not in name and name not in RESERVED_KEYS and not _ESCAPE_LIKE.search(name):
        return name
    key = name.replace("%", "%25").replace(".", "%2E")
    if key in RESERVED_KEYS:
        key = "".join(f"%{b:02X}" for b in key[0].encode()) + key[1:]
    return key


@dataclass(frozen=True)
class Task:
    """One prediction target.

    name:    unique, non-empty name of any characters, the key of the model's output dict (modules are
             keyed by module_key(name)).
    kind:    "binary" | "multiclass" | "regression".
    outputs: width of the model's output for this task (1 for binary and regression, C for multiclass).
    input:   key of the input this task reads when a data set has several inputs (default: the only one).
    metric:  the primary metric, the one tables, progress lines and comparisons show: one of METRICS[kind]
             ("" = the kind's default, METRICS[kind][0]). It changes what is reported, never training.
    shift, scale: a regression task's model learns the standardised target (y - shift) / scale (the loss is
             the MSE in those units) and predict() returns output * scale + shift, in the target's units;
             e.g. the training split's mean and std. Finite, scale > 0; other kinds keep 0 and 1.
    """

    name: str
    kind: str
    outputs: int = 1
    input: str = "x"
    metric: str = ""
    shift: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task needs a non-empty name, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.kind == "multiclass" and self.outputs < 2:
            raise ValueError(f"task {self.name!r}: a multiclass task needs outputs >= 2, got {self.outputs}")
        if self.kind != "multiclass" and self.outputs != 1:
            raise ValueError(f"task {self.name!r}: a {self.kind} task has outputs=1, got {self.outputs}")
        if self.metric and self.metric not in METRICS[self.kind]:
            raise ValueError(f"task {self.name!r}: {self.metric!r} is no metric of a {self.kind} task; use one of "
                             f"{', '.join(METRICS[self.kind])}")
        if not (math.isfinite(self.shift) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"task {self.name!r}: shift and scale must be finite and scale > 0, got shift "
                             f"{self.shift!r}, scale {self.scale!r}")
        if self.kind != "regression" and (self.shift, self.scale) != (0.0, 1.0):
            raise ValueError(f"task {self.name!r}: shift and scale apply to regression tasks only, not {self.kind}")

    def select(self, x):
        """This task's input from a model's input: the tensor itself, or x[self.input] from a dict."""
        return x[self.input] if isinstance(x, dict) else x

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over the labelled examples; 0 (still attached to the graph) when none is labelled.

        pred: (n, outputs) or (n,) when outputs == 1; target: (n,) with NaN for missing labels.
        """
        pred = pred.reshape(pred.shape[0], -1)  # (n, outputs)
        known = ~torch.isnan(target)  # (n,)
        if not bool(known.any()):
            return pred.sum() * 0.0
        p, y = pred[known], target[known]
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(p[:, 0], y)
        if self.kind == "multiclass":
            return F.cross_entropy(p, y.long())
        return F.mse_loss(p[:, 0], self.model_target(y))

    def model_target(self, y: torch.Tensor) -> torch.Tensor:
        """Labels (n,) -> what the model's output is fit to: (y - shift) / scale for a regression task (the
        standardised target), the labels themselves for the other kinds."""
        return (y - self.shift) / self.scale if self.kind == "regression" else y

    def predict(self, pred: torch.Tensor) -> torch.Tensor:
        """Model output -> what a user reads: P(1) for binary, class probabilities (n, C) for
        multiclass, the value in the target's units for regression (output * scale + shift)."""
        pred = pred.reshape(pred.shape[0], self.outputs)  # also 0 rows: a chunk where this task's input ran out
        if self.kind == "binary":
            return torch.sigmoid(pred[:, 0])
        if self.kind == "multiclass":
            return torch.softmax(pred, dim=1)
        return pred[:, 0] * self.scale + self.shift

    def output_of(self, pred: torch.Tensor) -> torch.Tensor:
        """predict's inverse: P(1) (n,), class probabilities (n, C) or a value in the target's units (n,) ->
        the model output whose predict it is. Probabilities are kept off 0 and 1, so the output is finite."""
        if self.kind == "binary":
            return torch.logit(pred, eps=1e-15)
        if self.kind == "multiclass":
            return torch.log(pred.clamp_min(1e-300))
        return (pred - self.shift) / self.scale


def mean_loss(tasks: list[Task], out: dict[str, torch.Tensor], y: dict[str, torch.Tensor],
              weights: dict[str, float] | None = None) -> torch.Tensor:
    """Sum over tasks of weight * task loss, divided by the number of tasks (weights default to 1)."""
    total = sum((weights or {}).get(t.name, 1.0) * t.loss(out[t.name], y[t.name]) for t in tasks)
    return total / len(tasks)


def _flat_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack([t.reshape(-1) for t in tensors]), (T, numel). A run of consecutive rows of one tensor, in
    order (its unbind, as a batched model's per-task outputs are), is read as that tensor's slice: no copy
    per row, and in the backward one step into that tensor instead of one per row. A tensor counts as row j
    only when it is exactly base[j] (a view of the same memory, shape, strides and dtype whose gradient
    flows to base)."""
    parts, i = [], 0
    while i < len(tensors):
        t, base = tensors[i], tensors[i]._base
        j, run = _row_of(t, base), 1
        if j is not None:  # the rows after it: the same checks, each against the first
            shape, stride, offset, grad = t.shape, t.stride(), t.storage_offset(), t.requires_grad
            for u in tensors[i + 1:i + base.shape[0] - j]:
                if not (u._base is base and u.storage_offset() == offset + run * base.stride(0) and u.shape == shape
                        and u.stride() == stride and u.requires_grad == grad and (not grad or u.grad_fn is not None)):
                    break
                run += 1
        parts.append(t.reshape(1, -1) if j is None else base[j:j + run].reshape(run, -1))
        i += run
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _row_of(t: torch.Tensor, base: torch.Tensor | None) -> int | None:
    """j where t is base[j] (a view of base's row j, not a leaf detached from it), else None."""
    if (base is None or base.dim() != t.dim() + 1 or base.shape[1:] != t.shape or base.stride()[1:] != t.stride()
            or base.dtype != t.dtype or base.requires_grad != t.requires_grad or (t.requires_grad and t.grad_fn is None)
            or base.stride(0) == 0):
        return None
    j, rest = divmod(t.storage_offset() - base.storage_offset(), base.stride(0))
    return j if rest == 0 and 0 <= j < base.shape[0] else None


def stacked_mean_loss(tasks: list[Task], out: dict[str, torch.Tensor], y: dict[str, torch.Tensor],
                      weights: dict[str, float] | None = None) -> torch.Tensor:
    """mean_loss (same arguments, same value up to float rounding) in a few operations for many tasks: the
    binary tasks, and the regression tasks, whose labels have one length are stacked into (tasks, n) outputs
    and model targets (Task.model_target), with one masked loss whose mean over each task's labelled rows
    is that task's loss (0 without labels, as Task.loss). Multiclass tasks keep Task.loss. Outputs that are
    consecutive rows of one tensor (a batched model's (tasks, n, 1) output, unbound) are read as its slices."""
    weights, total, bunches = weights or {}, 0.0, {}
    for t in tasks:
        if t.kind == "multiclass":
            total = total + weights.get(t.name, 1.0) * t.loss(out[t.name], y[t.name])
        else:
            bunches.setdefault((t.kind, y[t.name].shape[0]), []).append(t)
    for (kind, _), ts in bunches.items():
        pred = _flat_rows([out[t.name] for t in ts])  # (T, n)
        target = torch.stack([t.model_target(y[t.name]) for t in ts])  # (T, n), NaN where missing
        known = ~torch.isnan(target)
        pred, target = torch.where(known, pred, 0.0), torch.where(known, target, 0.0)  # no gradient where missing
        err = (F.binary_cross_entropy_with_logits(pred, target, reduction="none") if kind == "binary"
               else (pred - target) ** 2)  # (T, n)
        per_task = torch.where(known, err, 0.0).sum(1) / known.sum(1).clamp(min=1)  # (T,)
        w = torch.tensor([weights.get(t.name, 1.0) for t in ts], dtype=per_task.dtype, device=per_task.device)
        total = total + (w * per_task).sum()
    return total / len(tasks)
