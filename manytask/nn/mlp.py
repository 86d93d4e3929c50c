"""Plain multilayer perceptrons, the building block of the baselines."""
from __future__ import annotations

import math
from typing import Literal

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "elu": nn.ELU, "gelu": nn.GELU,
               "selu": nn.SELU, "leaky_relu": nn.LeakyReLU}
# The type of a config's activation field: the names of ACTIVATIONS (tests/nn/test_mlp.py checks they agree).
Activation = Literal["relu", "tanh", "sigmoid", "elu", "gelu", "selu", "leaky_relu"]


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(in_dim: int, widths: tuple[int, ...], act: str = "relu", dropout: float = 0.0,
        out_dim: int | None = None) -> nn.Sequential:
    """(batch, *shape) -> (batch, widths[-1] or out_dim): Flatten, then Linear-act-dropout per width,
    then an optional final Linear to out_dim without activation."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_dim
    for w in widths:
        layers += [nn.Linear(d, w), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = w
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


def mlp_params(in_dim: int, widths: tuple[int, ...], out_dim: int) -> int:
    """Number of weights and biases of mlp(in_dim, widths, out_dim=out_dim)."""
    dims = (in_dim, *widths, out_dim)
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def width_for_params(in_dim: int, depth: int, out_dim: int, target: int) -> int:
    """The hidden width h (same for all `depth` layers) whose MLP has the parameter count closest to
    `target`: solves (depth-1) h^2 + (in + depth + out) h + out = target."""
    if depth < 1 or target <= 0:
        raise ValueError(f"need depth >= 1 and a positive parameter target, got depth={depth}, target={target}")
    a, b, c = depth - 1, in_dim + depth + out_dim, out_dim - target
    h = (-c / b) if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    cands = {max(1, math.floor(h)), max(1, math.ceil(h))}
    return min(cands, key=lambda w: abs(mlp_params(in_dim, (w,) * depth, out_dim) - target))
