"""MLP building blocks and the parameter matching behind the thesis's NN2 STL."""
from __future__ import annotations

import typing

import pytest

from manytask.nn.mlp import ACTIVATIONS, Activation, mlp, mlp_params, width_for_params


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_width_for_params_hits_the_target(depth):
    target = 1_000_000
    w = width_for_params(2048, depth, 1, target)
    got = mlp_params(2048, (w,) * depth, 1)
    assert abs(got - target) <= max(mlp_params(2048, (w + 1,) * depth, 1) - got, got - mlp_params(2048, (w - 1,) * depth, 1))
    assert sum(p.numel() for p in mlp(2048, (w,) * depth, out_dim=1).parameters()) == got


def test_activation_type_lists_every_activation():
    """Config fields annotated with Activation accept exactly the names mlp() can build."""
    assert typing.get_args(Activation) == tuple(ACTIVATIONS)


def test_bad_inputs():
    """Layers raise plain ValueErrors (never manytask's ConfigError)."""
    with pytest.raises(ValueError, match="unknown activation 'swishy'") as bad_act:
        mlp(4, (3,), act="swishy")
    with pytest.raises(ValueError, match="positive parameter target") as bad_target:
        width_for_params(4, 1, 1, 0)
    assert bad_act.type is bad_target.type is ValueError
