"""The baselines' configs (stl, hard_sharing, and icnn alike): defaults valid, every range declared and
checked when a key is set, so a bad value is a one-line ConfigError before anything is built. Then stl's
batched networks: equal to the per-task modules they replace, independent, and capped by max_params."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_model, save_file
from torch import nn

from manytask.config import ConfigError, apply, check
from manytask.methods.hard_sharing import HardSharingConfig
from manytask.methods.icnn import ICNNConfig
from manytask.methods import stl
from manytask.methods.stl import STLConfig, build as build_stl, capped_widths
from manytask.nn.mlp import mlp, mlp_params
from manytask.tasks import Task, module_key

from ..nn.test_batched import assert_close

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


# stl: N networks as one batched computation per shape signature (manytask/nn/batched.py)
MIXED = [Task("a", "binary"), Task("m", "multiclass", 3), Task("b", "regression"), Task("i", "binary", input="img"),
         Task("c", "binary")]
SHAPES = {"x": (12,), "img": (1, 4, 4)}


def per_task_modules(cfg, seed):
    """The per-task layout, built from `seed`: {module_key(task): mlp()} in task order."""
    torch.manual_seed(seed)
    return nn.ModuleDict({module_key(t.name): mlp(math.prod(SHAPES[t.input]), cfg.widths, cfg.activation, cfg.dropout,
                                                  out_dim=t.outputs) for t in MIXED})


def inputs():
    return {"x": torch.randn(5, 12), "img": torch.randn(7, 1, 4, 4)}


def test_stl_groups_tasks_by_shape_and_counts_n_networks():
    cfg = STLConfig(widths=(16, 8))
    model = build_stl(MIXED, SHAPES, cfg)
    assert [[t.name for t in ts] for ts in model.members] == [["a", "b", "c"], ["m"], ["i"]]
    assert sum(p.numel() for p in model.parameters()) == \
        sum(mlp_params(math.prod(SHAPES[t.input]), (16, 8), t.outputs) for t in MIXED)
    out = model(inputs())
    assert list(out) == [t.name for t in MIXED]
    assert {k: tuple(v.shape) for k, v in out.items()} == {"a": (5, 1), "m": (5, 3), "b": (5, 1), "i": (7, 1), "c": (5, 1)}


@pytest.fixture(params=["one group per shape", "groups split"])
def group_bytes(request, monkeypatch):
    """Default GROUP_BYTES, or small enough that the three tasks of shape (12 -> 16, 8 -> 1) go in groups
    of two: 1600 // (4 bytes * 12 * 16)."""
    if request.param == "groups split":
        monkeypatch.setattr(stl, "GROUP_BYTES", 1600)
    return request.param


def test_stl_splits_groups_above_group_bytes(group_bytes):
    model = build_stl(MIXED, SHAPES, STLConfig(widths=(16, 8)))
    split = [["a", "b"], ["c"], ["m"], ["i"]] if group_bytes == "groups split" else [["a", "b", "c"], ["m"], ["i"]]
    assert sorted([t.name for t in ts] for ts in model.members) == sorted(split)


def test_stl_matches_per_task_modules_from_the_same_seed(group_bytes):
    """Same seed: bit-identical initial weights, so the same evaluation outputs; in training every task's
    output is its module's with the dropout multipliers stl drew for that task in place of Dropout's."""
    cfg = STLConfig(widths=(16, 8), dropout=0.3)
    ref = per_task_modules(cfg, seed=4).eval()  # eval: its Dropout layers pass through; hooks apply stl's masks
    torch.manual_seed(4)
    model = build_stl(MIXED, SHAPES, cfg)
    state = torch.get_rng_state()
    for t in MIXED:
        for a, b in zip(model.task_network(t.name).parameters(), ref[module_key(t.name)].parameters(), strict=True):
            assert torch.equal(a, b), t.name
    assert torch.equal(torch.get_rng_state(), state)  # task_network draws nothing from the stream
    x = inputs()
    got = model.eval()(x)
    for t in MIXED:
        assert_close(got[t.name], ref[module_key(t.name)](t.select(x)))
    model.train()
    torch.manual_seed(7)
    masks = model._masks(x)  # per group and hidden layer: (n, batch, width)
    torch.manual_seed(7)
    got = model(x)
    keep = 1 - cfg.dropout
    for t in MIXED:
        g, j = model.place[t.name]
        net = ref[module_key(t.name)]
        drops = [m for m in net if isinstance(m, nn.Dropout)]
        assert len(drops) == len(masks[g]) == 2
        hooks = [d.register_forward_hook(lambda mod, inp, out, m=m[j]: out * m) for d, m in zip(drops, masks[g])]
        assert_close(got[t.name], net(t.select(x)))
        for h in hooks:
            h.remove()
        for m in masks[g]:  # F.dropout's multipliers: 0 or 1 / keep, keep rounded to 2**-16
            assert m[j].unique().tolist() == [0.0, pytest.approx(1 / keep, rel=2e-5)]
    assert not torch.equal(masks[0][0][0], masks[0][0][1])  # every task draws its own multipliers


def test_stl_loads_weights_saved_in_the_per_task_layout(tmp_path, group_bytes):
    cfg = STLConfig(widths=(16, 8))
    ref = per_task_modules(cfg, seed=1).eval()
    path = str(tmp_path / "model.safetensors")
    save_file({f"nets.{k}": v.contiguous() for k, v in ref.state_dict().items()}, path)
    model = build_stl(MIXED, SHAPES, cfg).eval()
    load_model(model, path, strict=True)
    x = inputs()
    out = model(x)
    for t in MIXED:
        assert_close(out[t.name], ref[module_key(t.name)](t.select(x)))
    partial = {f"nets.{k}": v for k, v in ref.state_dict().items() if not k.startswith("c.")}
    with pytest.raises(RuntimeError, match="Missing key"):  # a task short: nothing converted, load reports it
        model.load_state_dict(partial)


def test_stl_gradients_stay_in_their_task(group_bytes):
    model = build_stl(MIXED, SHAPES, STLConfig(widths=(16, 8)))
    x = inputs()
    for t in MIXED:
        model.zero_grad()
        model(x)[t.name].square().sum().backward()
        g, j = model.place[t.name]
        for h, net in enumerate(model.groups):
            for name, p in net.named_parameters():  # no gradient (None) in the other groups, zeros in other slots
                grad = p.grad if p.grad is not None else torch.zeros_like(p)
                grad = grad.transpose(0, 1) if name.endswith("table") else grad  # (n, ...): network axis first
                mine = grad[j] if h == g else grad[:0]
                assert torch.count_nonzero(grad) == torch.count_nonzero(mine)
                assert h != g or torch.count_nonzero(mine) > 0


def test_stl_max_params_scales_every_width():
    """The documented rule: at widths=512 and 2048 inputs the 32 M cap is reached beyond 30 tasks; ToxCast's
    617 tasks get width 25; a cap below N width-1 networks is a ConfigError; max_params=0 keeps the widths."""
    cap = STLConfig().max_params

    def capped(n, widths=(512,), max_params=cap):
        names = [f"t{i}" for i in range(n)]
        got = capped_widths(dict.fromkeys(names, widths), dict.fromkeys(names, 2048), dict.fromkeys(names, 1), max_params)
        return set(got.values()), sum(mlp_params(2048, w, 1) for w in got.values())

    assert capped(30) == ({(512,)}, 30 * mlp_params(2048, (512,), 1))
    ((w31,),), total31 = capped(31)
    assert w31 < 512 and total31 <= cap < 31 * mlp_params(2048, (w31 + 1,), 1)
    ((w1, w2),), total = capped(617, (64, 32))  # one factor s for both: w = floor(s * width)
    assert w1 < 64 and abs(w1 / 64 - w2 / 32) < 1 / 32 and total <= cap
    assert capped(617, max_params=0)[0] == {(512,)}
    assert capped(617) == ({(25,)}, 617 * mlp_params(2048, (25,), 1)) and 617 * mlp_params(2048, (26,), 1) > cap
    tasks = [Task(f"t{i}", "binary") for i in range(50)]  # build applies the rule: 50 networks on 100 inputs
    with pytest.raises(ConfigError, match="^max_params=1000: 50 networks need at least"):
        build_stl(tasks, {"x": (100,)}, STLConfig(max_params=1000))
    model = build_stl(tasks, {"x": (100,)}, STLConfig(widths=(40,), max_params=50 * mlp_params(100, (10,), 1)))
    assert set(model.widths.values()) == {(10,)} and model.groups[0].layers[0].weight.shape == (50, 100, 10)
    assert sum(p.numel() for p in model.parameters()) == 50 * mlp_params(100, (10,), 1)
