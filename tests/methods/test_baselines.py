"""The baselines' configs (stl, hard_sharing, and icnn alike): defaults valid, every range declared and
checked when a key is set, so a bad value is a one-line ConfigError before anything is built."""
from __future__ import annotations

import pytest

from manytask.config import ConfigError, apply, check
from manytask.methods.hard_sharing import HardSharingConfig
from manytask.methods.icnn import ICNNConfig
from manytask.methods.stl import STLConfig, build as build_stl
from manytask.tasks import Task

BAD = [("widths", "0"), ("widths", "64,-1"), ("widths", ""), ("dropout", "1"), ("dropout", "-0.1"),
       ("activation", "swish")]


@pytest.mark.parametrize("cfg_cls", [STLConfig, HardSharingConfig, ICNNConfig])
@pytest.mark.parametrize("key,value", BAD)
def test_bad_values_are_config_errors(cfg_cls, key, value):
    check(cfg_cls())
    with pytest.raises(ConfigError, match=f"^{key}="):
        apply(cfg_cls(), {key: value}, "method")


def test_stl_params_per_task():
    with pytest.raises(ConfigError, match="params_per_task=-1"):
        apply(STLConfig(), {"params_per_task": "-1"}, "stl method")
    cfg = apply(STLConfig(), {"widths": "7,7", "params_per_task": "2000"}, "stl method")
    model = build_stl([Task("a", "binary"), Task("b", "binary")], {"x": (30,)}, cfg)
    for net in model.nets.values():  # two equal hidden layers of the width closest to 2000 parameters
        widths = [m.out_features for m in net if hasattr(m, "out_features")]
        assert widths[0] == widths[1] != 7 and abs(sum(p.numel() for p in net.parameters()) - 2000) < 100
