"""Task and input names of any characters work in every registered method: dots (ToxCast's
"NVS_GPCR_hDRD4.4"), slashes, spaces, unicode, percent signs and names of nn.Module attributes
("forward", "train"). Each method trains a few steps, its weights go through a safetensors save and load
into a freshly built model, and both predict the same. module_key keeps names that are already valid
keys unchanged, so the weights saved for them keep their names."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_model, save_model

from manytask.data.base import MultiTaskData, Split
from manytask.registry import METHODS, load_all
from manytask.runs import RunSpec, build, create_model
from manytask.tasks import RESERVED_KEYS, Task, module_key
from manytask.train import TrainConfig, Trainer, predict_split

load_all()
NAMES = ["NVS_GPCR_hDRD4.4", "a/b", "with space", "ünï", "forward", "x%2E", "train", "50%"]
INPUTS = ["im.g", "forward"]  # an image input and a table input, for the methods with several inputs
CASES = [(m, "shared") for m in sorted(METHODS)] + [(m, "multi") for m in sorted(METHODS) if METHODS[m].multi_input]


def shared_data(seed=0) -> MultiTaskData:
    """One input (n, 6); every name of NAMES is a task, binary or regression in turn."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, len(NAMES), generator=gen)
    tasks = [Task(name, "binary" if i % 2 == 0 else "regression") for i, name in enumerate(NAMES)]

    def split(n):
        x = torch.randn(n, 6, generator=gen)
        score = x @ w  # (n, T)
        return Split({"x": x}, {t.name: (score[:, i] > 0).float() if t.kind == "binary" else score[:, i]
                                for i, t in enumerate(tasks)})
    return MultiTaskData("names", tasks, split(48), split(16), split(16))


def multi_data(seed=0) -> MultiTaskData:
    """Input "im.g" (n, 1, 8, 8) read by tasks "a.b" and "keys", input "forward" (m, 5) by "ünï.x"."""
    gen = torch.Generator().manual_seed(seed)
    tasks = [Task("a.b", "multiclass", 3, input="im.g"), Task("keys", "binary", input="im.g"),
             Task("ünï.x", "regression", input="forward")]

    def split(n, m):
        xi, xt = torch.randn(n, 1, 8, 8, generator=gen), torch.randn(m, 5, generator=gen)
        si = xi.flatten(1)[:, :2]  # (n, 2)
        return Split({"im.g": xi, "forward": xt},
                     {"a.b": torch.bucketize(si[:, 0].contiguous(), torch.tensor([-0.5, 0.5])).float(),
                      "keys": (si[:, 1] > 0).float(), "ünï.x": xt.sum(1)})
    return MultiTaskData("names-multi", tasks, split(32, 24), split(12, 12), split(12, 12))


def test_module_key_keeps_valid_keys_and_escapes_the_rest():
    for name in ("bin", "NR-AR", "SR-HSE", "a/b", "with space", "ünï", "50%", "tab_reg"):
        assert module_key(name) == name
    assert module_key("NVS_GPCR_hDRD4.4") == "NVS_GPCR_hDRD4%2E4"
    assert module_key("forward") == "%66orward" and module_key("train") == "%74rain"
    assert module_key("x%2E") == "x%252E"  # a name that looks escaped is escaped again
    with pytest.raises(ValueError, match="cannot be empty"):
        module_key("")


def test_module_keys_are_distinct_valid_and_decode_to_the_name():
    from urllib.parse import unquote
    names = NAMES + ["x.", "x%2e", "%66orward", "forward.", ".", "%", "%25", "keys", "_modules", "ü.ü"]
    keys = [module_key(n) for n in names]
    assert len(set(keys)) == len(names)
    for name, key in zip(names, keys):
        assert "." not in key and key not in RESERVED_KEYS
        assert unquote(key) == name
        torch.nn.ModuleDict({key: torch.nn.Identity()})  # a valid key


@pytest.mark.parametrize("method", sorted(METHODS))
@settings(max_examples=25, deadline=None, database=None)
@given(task_names=st.lists(st.one_of(st.sampled_from(["forward", "keys", ".", "a.b", "%2E", "%"]),
                                     st.text(min_size=1, max_size=6)), min_size=1, max_size=5, unique=True))
def test_any_names_build_and_run(method, task_names):
    keys = [module_key(n) for n in task_names]
    assert len(set(keys)) == len(keys) and all("." not in k and k not in RESERVED_KEYS for k in keys)
    model, _ = create_model(method, [Task(n, "binary") for n in task_names], {"x": (4,)})
    assert set(model(torch.randn(3, 4))) == set(task_names)


def test_a_task_needs_a_name():
    with pytest.raises(ValueError, match="non-empty name"):
        Task("", "binary")


@pytest.mark.parametrize("method,shape", CASES)
def test_every_method_trains_saves_and_loads_with_any_names(method, shape, tmp_path):
    torch.manual_seed(0)
    data = shared_data() if shape == "shared" else multi_data()
    spec = RunSpec("names", method, None, METHODS[method].config(),
                   TrainConfig(epochs=2, batch_size=16, patience=0, progress=False, device="cpu"))
    model, hooks = build(spec, data)
    Trainer(model, data, spec.train, hooks).fit()
    before = predict_split(model, data.test, data.tasks)
    assert set(before) == {t.name for t in data.tasks}
    assert all(torch.isfinite(v).all() for v in before.values())
    path = str(tmp_path / "model.safetensors")
    save_model(model, path)
    fresh, _ = build(spec, data)
    load_model(fresh, path, strict=True)
    after = predict_split(fresh, data.test, data.tasks)
    for t in data.tasks:
        assert torch.equal(before[t.name], after[t.name]), f"{method}: task {t.name!r} differs after save/load"


def test_rsn2_stages_name_copies_only_of_copied_groups():
    from manytask.methods.rsn2 import RSN2Net, plan_subnets, stage_tasks
    tasks = [Task("a", "binary"), Task("a#b", "binary")]
    single = RSN2Net(tasks, {"x": (4,)}, plan_subnets(tasks, "task"), (8,))
    assert [[t.name for t in s] for s in stage_tasks(single, [["a"], ["a#b"]])] == [["a"], ["a#b"]]
    copied = RSN2Net(tasks, {"x": (4,)}, plan_subnets(tasks, "task", copies=2), (8,))
    assert [[t.name for t in s] for s in stage_tasks(copied, [["a"], ["a#b#1"]])] == [["a"], ["a#b"]]
