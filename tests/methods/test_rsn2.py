"""RSN2 (manytask/methods/rsn2.py): Algorithm 1 mask selection, capacity and disjointness, sequential
stages that leave earlier tasks bit-identical, ensembles, dedicated first layers, compact export."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from manytask.config import ConfigError
from manytask.data.base import MultiTaskData, Split, model_input
from manytask.methods.rsn2 import (RSN2Config, average, build, capacity_line, export, load_packed, plan_subnets,
                                   select_masks, stage_tasks)
from manytask.nn.masked import check_disjoint, masked_layers, ownership_report
from manytask.tasks import Task, mean_loss
from manytask.train import TrainConfig, Trainer, predict_split, train_stages

from ..conftest import tiny_multi, tiny_shared

FAST = TrainConfig(epochs=3, batch_size=16, patience=0, progress=False, lr=3e-3)


def make(data, **kw):
    torch.manual_seed(0)
    cfg = dataclasses.replace(RSN2Config(widths=(16, 16), mask_batch=32), **kw)
    return build(data.tasks, data.input_shapes, cfg)


def test_plan_subnets():
    data = tiny_multi()
    assert plan_subnets(data.tasks, "task") == [("img", ["img"]), ("tab_bin", ["tab_bin"]), ("tab_reg", ["tab_reg"])]
    assert plan_subnets(data.tasks, "input") == [("img", ["img"]), ("tab", ["tab_bin", "tab_reg"])]
    assert plan_subnets(data.tasks, "pics:img,tab_bin+tab_reg", copies=2)[1] == ("pics#1", ["img"])
    with pytest.raises(ConfigError, match="mixes inputs"):
        plan_subnets(data.tasks, "img+tab_bin,tab_reg")
    with pytest.raises(ConfigError, match="unknown task"):
        plan_subnets(data.tasks, "img,nope")
    with pytest.raises(ConfigError, match="exactly one group"):
        plan_subnets(data.tasks, "img,tab_bin")


def many_tasks(n, inputs=("x",), d=12, rows=(96, 32, 32), seed=0) -> MultiTaskData:
    """n binary tasks spread over `inputs` (task i reads input i % len(inputs)); the j-th distinct input is
    (rows, d + j), so inputs have their own first layers; labels from random hyperplanes, one in 5 missing."""
    gen = torch.Generator().manual_seed(seed)
    tasks = [Task(f"t{i}", "binary", input=inputs[i % len(inputs)]) for i in range(n)]
    dims = {g: d + j for j, g in enumerate(dict.fromkeys(inputs))}
    w = [torch.randn(dims[t.input], generator=gen) for t in tasks]
    parts = []
    for m in rows:
        x = {g: torch.randn(m, k, generator=gen) for g, k in dims.items()}
        y = {t.name: (x[t.input] @ w[i] > 0).float() for i, t in enumerate(tasks)}
        for i, t in enumerate(tasks):
            y[t.name][i % 5::5] = float("nan")
        parts.append(Split(x, y))
    return MultiTaskData("many", tasks, *parts)


def test_auto_groups_keep_one_subnetwork_per_task_up_to_max_subnets():
    data = tiny_multi()
    assert RSN2Config().groups == "auto"
    assert plan_subnets(data.tasks, "auto") == plan_subnets(data.tasks, "task")  # few tasks: as before
    assert plan_subnets(data.tasks, "auto", max_subnets=3) == plan_subnets(data.tasks, "task")
    assert plan_subnets(data.tasks, "auto", copies=2, max_subnets=6) == plan_subnets(data.tasks, "task", copies=2)


def test_auto_groups_cut_hundreds_of_tasks_into_contiguous_balanced_groups():
    tasks = many_tasks(617, rows=(1, 1, 1)).tasks
    plan = plan_subnets(tasks, "auto")  # max_subnets=16
    assert len(plan) == 16
    flat = [m for _, members in plan for m in members]
    assert flat == [t.name for t in tasks]  # every task exactly once, in the data's order
    assert sorted({len(members) for _, members in plan}) == [38, 39]
    assert plan[0][0] == "tasks1-39" and plan[-1][0] == "tasks580-617"
    assert len(plan_subnets(tasks, "auto", max_subnets=8)) == 8
    assert len(plan_subnets(tasks, "auto", keep=0.1)) == 10  # 1/keep caps it below max_subnets
    copies = plan_subnets(tasks, "auto", copies=3)  # 16 // 3 = 5 groups of 123-124, 3 copies each
    assert len(copies) == 15 and copies[0][0] == "tasks1-124#0" and copies[1][1] == copies[0][1]


def test_auto_groups_never_mix_inputs_and_give_extra_groups_to_the_largest():
    tasks = many_tasks(33, inputs=("a", "a", "a", "a", "a", "a", "a", "a", "a", "a", "b"), rows=(1, 1, 1)).tasks
    counts = {g: sum(t.input == g for t in tasks) for g in "ab"}
    assert counts == {"a": 30, "b": 3}
    plan = plan_subnets(tasks, "auto", max_subnets=8)
    by = {t.name: t.input for t in tasks}
    inputs = [{by[m] for m in members} for _, members in plan]
    assert all(len(i) == 1 for i in inputs)  # a subnetwork reads one input
    assert [i.pop() for i in inputs].count("a") == 7  # 7 groups of 4-5 for a, one of 3 for b
    assert sorted(m for _, members in plan for m in members) == sorted(by)
    assert plan[0][0] == "a:tasks1-5" and plan[-1] == ("b:tasks1-3", [t.name for t in tasks if t.input == "b"])
    assert len(plan_subnets(tasks, "auto", max_subnets=1)) == 2  # at least one subnetwork per input


def test_keep_is_one_over_subnetworks_unless_auto_groups_the_tasks():
    data = many_tasks(20, rows=(8, 4, 4))
    assert make(data, groups="task")[1].keep == pytest.approx(1 / 20)
    assert make(data, max_subnets=20)[1].keep == pytest.approx(1 / 20)  # auto, one task each: the paper's 1/S
    assert make(data, max_subnets=4)[1].keep == pytest.approx(0.8 / 4)
    assert make(data, max_subnets=4, keep=0.25)[1].keep == 0.25  # an explicit keep is kept


def test_grouped_subnetworks_keep_disjoint_fractions_summing_to_at_most_one(caplog):
    data = many_tasks(40, inputs=("a", "b"))
    with caplog.at_level("INFO", logger="manytask"):
        model, hooks = make(data, max_subnets=6)
    assert len(model.subnet_names) == 6 and hooks.keep == pytest.approx(0.8 / 6)  # grouped: a fifth stays free
    line = "40 tasks in 6 subnetworks of 6-7 tasks; each subnetwork keeps 13.3% of every layer it uses " \
           "(head: 2 of 16 inputs per output unit), 20% of the shared layers unused"
    assert capacity_line(model, hooks.keep) == line and caplog.messages == [f"rsn2: {line}"]
    select_masks(model, data, hooks.keep, batch=32)  # Algorithm 1, as before_training runs it
    check_disjoint(model)
    rows, ok = ownership_report(model)
    assert ok
    for r in rows:
        owned = [r[n] for n in model.subnet_names if n in r]
        assert sum(owned) + r["unused"] == pytest.approx(1.0) and sum(owned) <= 1 + 1e-9
        if r["layer"] != "head":  # first layers: the 3 subnetworks of their input, shared layers: all 6
            assert all(v == pytest.approx(0.8 / 6, abs=0.02) for v in owned if v > 0)
    assert sum(v > 0 for v in (rows[0][n] for n in model.subnet_names if n in rows[0])) == 3


def test_with_fractions_summing_to_one_the_last_subnetwork_takes_the_leftovers():
    """Why groups=auto leaves a fifth free: with keep = 1/S, Algorithm 1's last subnetwork owns what the
    others left (all but the rounding remainder of each layer), whatever its own scores say."""
    data = tiny_shared()
    model, hooks = make(data, groups="task")  # 3 subnetworks, keep 1/3
    select_masks(model, data, hooks.keep, batch=32)
    for layer in [model.first[0], *model.fcs]:
        left = ~(layer.weight_mask[0] | layer.weight_mask[1])
        assert not bool((layer.weight_mask[2] & ~left).any())
        assert int(left.sum()) - int(layer.weight_mask[2].sum()) <= 1  # 256 positions, 3 x 85 taken


def test_capacity_line_names_copies_and_unused_capacity():
    data = tiny_shared()
    model, hooks = make(data, groups="input", copies=3, keep=0.25)
    assert capacity_line(model, hooks.keep) == ("3 tasks in 3 subnetworks (1 group x 3 copies) of 3 tasks; each "
                                                "subnetwork keeps 25% of every layer it uses (head: 4 of 16 inputs "
                                                "per output unit), 25% of the shared layers unused")
    model, hooks = make(data)
    line = capacity_line(model, hooks.keep)
    assert line.startswith("3 tasks in 3 subnetworks of 1 task; each subnetwork keeps 33.3%")


def test_export_of_grouped_subnetworks_is_exact(tmp_path):
    data = many_tasks(20)
    model, hooks = make(data, max_subnets=4)
    assert [len(ts) for ts in model.subnet_tasks] == [5, 5, 5, 5]
    Trainer(model, data, dataclasses.replace(FAST, epochs=1), hooks).fit()
    export(model, tmp_path / "packed.safetensors")
    a = predict_split(model, data.test, data.tasks)
    b = predict_split(load_packed(tmp_path / "packed.safetensors"), data.test, data.tasks)
    assert all(torch.equal(a[t.name], b[t.name]) for t in data.tasks)


def test_masks_keep_the_fraction_and_are_disjoint():
    data = tiny_multi()
    model, hooks = make(data, keep=0.3, groups="task")
    select_masks(model, data, 0.3)
    check_disjoint(model)
    rows, ok = ownership_report(model)
    assert ok
    for r in rows:
        owners = [n for n in model.subnet_names if n in r and r[n] > 0]
        if r["layer"] != "head":  # heads keep 30% of each of their own output units
            assert all(r[n] == pytest.approx(0.3, abs=0.02) for n in owners)
    # the image input (1, 8, 8) and the table (5,) have different shapes: one first layer each
    assert len(model.first) == 2 and model.first[0].names == ["img"] and model.first[1].names == ["tab_bin", "tab_reg"]


def test_gradient_criterion_picks_the_largest_gradients():
    """Reference for the first subnetwork: all positions free, |dL/dW| on its batch, top 25% kept."""
    data = tiny_shared()
    model, _ = make(data, groups="task")
    layer = model.fcs[0]
    for lay in masked_layers(model).values():
        lay.weight_mask[0], lay.bias_mask[0] = lay.allowed(0)
    x = data.train.inputs["x"][torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]]
    y = data.train.labels["bin"][torch.randperm(64, generator=torch.Generator().manual_seed(0))[:32]]
    model.tasks[0].loss(model.forward_subnets(x, only={0})[0], y).backward()
    grad = layer.weight.grad[0].abs().clone()
    select_masks(model, data, 0.25, batch=32, seed=0)
    chosen = layer.weight_mask[0]
    assert int(chosen.sum()) == 64  # 25% of 16 x 16
    assert grad[chosen].min() >= grad[~chosen].max()


def test_magnitude_criterion_picks_the_largest_weights():
    data = tiny_shared()
    model, _ = make(data, groups="task")
    w = model.fcs[0].weight[0].detach().abs().clone()
    select_masks(model, data, 0.25, criterion="magnitude")
    chosen = model.fcs[0].weight_mask[0]
    assert w[chosen].min() >= w[~chosen].max()


def test_selection_is_deterministic_even_with_zero_gradients():
    data = tiny_shared()
    zero = MultiTaskData("z", data.tasks, Split({"x": torch.zeros_like(data.train.inputs["x"])}, data.train.labels),
                         data.val, data.test)  # zero inputs: zero first-layer gradients, ties everywhere
    masks = []
    for _ in range(2):
        model, _ = make(zero, groups="task")
        select_masks(model, zero, 1 / 3)
        check_disjoint(model)
        masks.append(torch.cat([b.flatten().float() for n, b in model.named_buffers() if n.endswith("mask")]))
    assert torch.equal(masks[0], masks[1])


def test_capacity_check_names_layer_and_subnetworks():
    data = tiny_shared()
    model, _ = make(data, groups="task")
    with pytest.raises(ConfigError, match=r"layer first\.0: subnetworks \['bin', 'multi', 'reg'\].*1\.500 > 1"):
        select_masks(model, data, 0.5)
    with pytest.raises(ConfigError, match="keep=1.5"):
        make(data, keep=1.5)
    with pytest.raises(ConfigError, match=r"keep=0.5 for 3 subnetworks on layer first\.0 sums to 1\.500 > 1"):
        make(data, keep=0.5, groups="task")  # caught by the builder, before training starts


def test_a_layer_error_caused_by_keep_is_a_config_error():
    """The masked layer raises ValueError; select_masks turns a user-caused one into a ConfigError."""
    data = tiny_shared()
    model, _ = make(data, groups="task")
    message = r"layer head: keep=0.01 of 16 inputs per output unit leaves task 'bin' no weight"
    with pytest.raises(ConfigError, match=message):
        select_masks(model, data, 0.01)


def test_stage_tasks_reads_subnetworks_groups_and_tasks():
    data = tiny_multi()
    model, _ = make(data, groups="input", copies=2, keep=0.25)
    names = lambda stages: [[t.name for t in ts] for ts in stage_tasks(model, stages)]  # noqa: E731
    assert names([["img"], ["tab#1"]]) == [["img"], ["tab_bin", "tab_reg"]]
    assert names([["tab_reg"]]) == [["tab_bin", "tab_reg"]]  # a task trains its whole subnetwork
    with pytest.raises(ConfigError, match="stage 2: 'nope' names no subnetwork"):
        stage_tasks(model, [["img"], ["nope"]])


def test_loss_is_the_sum_of_the_trained_subnetworks_losses():
    """forward computes only the trained subnetworks; loss sums each subnetwork's own mean task loss."""
    data = tiny_multi()
    model, hooks = make(data, groups="input", keep=0.4)
    trainer = Trainer(model, data, FAST, hooks, tasks=[t for t in data.tasks if t.input == "tab"])
    hooks.before_training(trainer)
    x, y = next(trainer.batches())
    out = hooks.forward(trainer, x)
    assert set(out) == {1}  # the "tab" subnetwork only
    assert torch.equal(hooks.loss(trainer, out, y), mean_loss(trainer.tasks, model.task_outputs(1, out[1]), y))
    shared = tiny_shared()
    copies, copy_hooks = make(shared, groups="input", copies=2, keep=0.4)
    trainer = Trainer(copies, shared, FAST, copy_hooks)
    copy_hooks.before_training(trainer)
    x, y = next(trainer.batches())
    out = copy_hooks.forward(trainer, x)
    each = [mean_loss(shared.tasks, copies.task_outputs(s, out[s]), y) for s in (0, 1)]
    torch.testing.assert_close(copy_hooks.loss(trainer, out, y), each[0] + each[1])


def stage_data():
    return tiny_multi()


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_later_stages_leave_earlier_tasks_bit_identical(optimizer):
    """Weight decay and momentum on: stage 2 must not move a single bit of stage 1's subnetworks."""
    data = stage_data()
    model, hooks = make(data, groups="input", keep=0.4)
    cfg = dataclasses.replace(FAST, optimizer=optimizer, weight_decay=0.05, momentum=0.9)
    after = {}
    train_stages(model, hooks, data, stage_tasks(model, [["img"], ["tab"]]), [cfg, cfg],
                 on_stage=lambda i: after.setdefault(i, (predict_split(model, data.test, data.tasks),
                                                         {k: v.clone() for k, v in model.state_dict().items()})))
    (p1, s1), (p2, s2) = after[1], after[2]
    assert torch.equal(p1["img"], p2["img"])  # exact equality of the earlier task's test predictions
    assert not torch.equal(p1["tab_reg"], p2["tab_reg"])  # the later task did train
    for name, layer in masked_layers(model).items():
        if "img" in layer.names:
            t = layer.names.index("img")
            assert torch.equal(s1[f"{name}.weight"][t], s2[f"{name}.weight"][t]), name
            assert torch.equal(s1[f"{name}.bias"][t], s2[f"{name}.bias"][t]), name
    check_disjoint(model)


def test_masked_and_unowned_weights_never_change():
    data = tiny_shared()
    model, hooks = make(data, groups="task", keep=0.2)
    trainer = Trainer(model, data, dataclasses.replace(FAST, weight_decay=0.1), hooks)
    hooks.before_training(trainer)
    w0 = {n: lay.weight.detach().clone() for n, lay in masked_layers(model).items()}
    trainer.fit()
    for n, lay in masked_layers(model).items():
        off = ~lay.weight_mask
        assert torch.equal(lay.weight.detach()[off], w0[n][off]), n
        assert not torch.equal(lay.weight.detach()[~off], w0[n][~off]), n


def test_a_frozen_subnetwork_cannot_be_trained_again():
    data = stage_data()
    model, hooks = make(data, groups="input", keep=0.4)
    with pytest.raises(ConfigError, match=r"\['img'\] were trained in an earlier stage"):
        train_stages(model, hooks, data, stage_tasks(model, [["img"], ["img"]]), [FAST, FAST])
    assert hooks.frozen == {"img"}  # after_training froze what the first stage trained


def test_forgetting_rows_cover_every_task_trained_so_far():
    data = stage_data()
    model, hooks = make(data, groups="input", keep=0.4)
    rows = train_stages(model, hooks, data, stage_tasks(model, [["img"], ["tab"]]), [FAST, FAST])
    assert [(r["stage"], r["task"]) for r in rows] == [(1, "img"), (2, "img"), (2, "tab_bin"), (2, "tab_reg")]
    assert rows[0]["loss"] == rows[1]["loss"]  # no forgetting


def test_ensemble_averages_disjoint_copies():
    data = tiny_shared()
    model, hooks = make(data, groups="input", copies=3)
    assert model.subnet_names == ["x#0", "x#1", "x#2"]
    Trainer(model, data, FAST, hooks).fit()
    check_disjoint(model)
    x = data.test.inputs["x"]
    ys, out = model.forward_subnets(x), model(x)
    probs = torch.stack([torch.softmax(ys[s][:, 1:4], 1) for s in range(3)]).mean(0)
    torch.testing.assert_close(torch.softmax(out["multi"], 1), probs)
    torch.testing.assert_close(out["reg"], torch.stack([ys[s][:, 4:5] for s in range(3)]).mean(0))
    torch.testing.assert_close(torch.sigmoid(out["bin"]), torch.stack([torch.sigmoid(ys[s][:, :1]) for s in range(3)]).mean(0))
    assert not torch.equal(ys[0], ys[1])  # the copies are different subnetworks
    assert average(Task("r", "regression"), [torch.ones(2, 1), 3 * torch.ones(2, 1)]).tolist() == [[2.0], [2.0]]


def test_conv_trunk_shares_first_layer_for_same_shaped_inputs():
    gen = torch.Generator().manual_seed(0)
    tasks = [Task("a", "multiclass", 3, input="a"), Task("b", "binary", input="b")]
    split = lambda n, m: Split({"a": torch.rand(n, 1, 8, 8, generator=gen), "b": torch.rand(m, 1, 8, 8, generator=gen)},  # noqa: E731
                               {"a": torch.randint(0, 3, (n,), generator=gen).float(),
                                "b": torch.randint(0, 2, (m,), generator=gen).float()})
    data = MultiTaskData("imgs", tasks, split(40, 24), split(8, 8), split(8, 6))
    model, hooks = make(data, conv=(4, 8), pool_every=1, groups="task", keep=0.5)
    assert len(model.first) == 1 and model.first[0].names == ["a", "b"]
    Trainer(model, data, FAST, hooks).fit()
    check_disjoint(model)
    out = model(model_input({"a": torch.rand(0, 1, 8, 8), "b": torch.rand(3, 1, 8, 8)}))  # 0-row chunk
    assert out["a"].shape == (0, 3) and out["b"].shape == (3, 1)
    with pytest.raises(ConfigError, match="needs image inputs"):
        make(tiny_shared(), conv=(4,))


def test_export_packs_into_one_model_with_equal_outputs(tmp_path):
    data = stage_data()
    model, hooks = make(data, groups="task", widths=(64, 64))
    Trainer(model, data, FAST, hooks).fit()
    size = export(model, tmp_path / "packed.safetensors")
    packed = load_packed(tmp_path / "packed.safetensors")
    a, b = predict_split(model, data.test, data.tasks), predict_split(packed, data.test, data.tasks)
    for t in data.tasks:
        torch.testing.assert_close(a[t.name], b[t.name], atol=1e-6, rtol=0)
    check_disjoint(packed)
    # the same architecture with ONE dense subnetwork (a dedicated control), exported the same way
    torch.manual_seed(0)
    control, _ = build([data.tasks[1]], {"tab": (5,)}, RSN2Config(widths=(64, 64), keep=1.0))
    for lay in masked_layers(control).values():
        lay.weight_mask.fill_(True)
        lay.bias_mask.fill_(True)
    one = export(control, tmp_path / "control.safetensors")
    # packed: two first layers (img 64 inputs, tab 5) + shared layers with a 1.6-bit owner index
    assert size < 2.2 * one
    with pytest.raises(ConfigError, match="not an rsn2 export"):
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
        load_packed(tmp_path / "other.safetensors")


# ---- selection in rounds --------------------------------------------------------------------------------
def draft(scores: torch.Tensor, k: int, rounds: int) -> torch.Tensor:
    """Reference for fixed scores (T, n): in each round every subnetwork in turn takes the best untaken
    positions until it holds floor(r / rounds * k). -> owner (n,), -1 where nobody."""
    owner = torch.full(scores.shape[1:], -1)
    for r in range(1, rounds + 1):
        for s in range(len(scores)):
            want = int(r * k / rounds + 1e-9) - int((owner == s).sum())
            free = torch.where(owner == -1, scores[s], torch.full_like(scores[s], -1.0))
            owner[torch.argsort(free, descending=True, stable=True)[:want]] = s
    return owner


@pytest.mark.parametrize("rounds", [1, 3])
def test_rounds_follow_the_reference_draft_and_one_round_is_algorithm_1(rounds):
    """criterion=magnitude scores do not depend on the masks, so the masks of a layer are the reference
    draft; rounds=1 is Algorithm 1 (subnetwork after subnetwork, each its top k of what is left)."""
    data = tiny_shared()
    model, _ = make(data, groups="task", criterion="magnitude")
    layer = model.fcs[0]  # (3, 16, 16): k = floor(256 / 3) = 85 each
    scores = layer.weight.detach().abs().flatten(1)
    select_masks(model, data, 1 / 3, criterion="magnitude", rounds=rounds)
    owner = torch.where(layer.weight_mask.any(0), layer.weight_mask.to(torch.uint8).argmax(0), -1).flatten()
    assert torch.equal(owner, draft(scores, 85, rounds))
    if rounds == 1:
        left = torch.ones(256, dtype=torch.bool)
        for s in range(3):  # Algorithm 1 directly: the top 85 of the positions earlier subnetworks left
            mine = layer.weight_mask[s].flatten()
            assert scores[s][mine].min() >= scores[s][left & ~mine].max()
            left &= ~mine


def test_rounds_give_every_subnetwork_its_budget_disjointly():
    data = tiny_multi()
    greedy, _ = make(data, keep=0.3, groups="task")
    select_masks(greedy, data, 0.3, batch=16)
    model, hooks = make(data, keep=0.3, groups="task", rounds=4)
    assert hooks.rounds == 4
    select_masks(model, data, 0.3, batch=16, rounds=hooks.rounds)
    check_disjoint(model)
    for (name, a, _), (_, b, _) in zip(greedy.layers(), model.layers()):
        assert a.weight_mask.flatten(1).sum(1).tolist() == b.weight_mask.flatten(1).sum(1).tolist(), name
        assert a.bias_mask.sum(1).tolist() == b.bias_mask.sum(1).tolist(), name
        assert int(b.weight_mask.sum(0).max()) <= 1
    head = model.head.weight_mask  # (3, 16, outputs): 4 of 16 inputs for every output unit a task has
    assert all(int(head[s, :, j].sum()) == 4 for s in range(3) for j in range(model.subnet_out[s]))
    assert not torch.equal(greedy.fcs[0].weight_mask, model.fcs[0].weight_mask)


def bordered(n=96, seed=0) -> MultiTaskData:
    """8x8 images whose outer ring (28 of 64 pixels) is always 0, like the border of MNIST-format digits;
    3 classes from the centre."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(36, generator=gen)
    splits = []
    for m in (n, n // 4, n // 4):
        x = torch.zeros(m, 1, 8, 8)
        x[:, 0, 1:-1, 1:-1] = torch.randn(m, 6, 6, generator=gen)
        y = torch.bucketize(x[:, 0, 1:-1, 1:-1].flatten(1) @ w, torch.tensor([-2.0, 2.0])).float()
        splits.append(Split({"x": x}, {"digit": y}))
    return MultiTaskData("bordered", [Task("digit", "multiclass", 3)], *splits)


@pytest.mark.parametrize("rounds", [1, 10])
def test_rounds_share_the_informative_first_layer_weights_out(rounds):
    """The first layer reads 64 pixels; the 28 border pixels are always 0, so their weights get zero
    gradient. 5 copies x 20%: Algorithm 1 gives the 576 centre weights to the first subnetworks and the
    last one border weights (but for centre weights of units with no gradient); in 10 rounds every
    subnetwork gets at least 80% of a fair fifth of the centre."""
    data = bordered()
    model, hooks = make(data, widths=(16,), groups="input", copies=5, keep=0.2, rounds=rounds)
    select_masks(model, data, hooks.keep, batch=64, rounds=hooks.rounds)
    check_disjoint(model)
    centre = torch.zeros(8, 8, dtype=torch.bool)
    centre[1:-1, 1:-1] = True
    on_centre = [int(model.first[0].weight_mask[s][centre.flatten()].sum()) for s in range(5)]  # of 576
    assert sum(on_centre) == 576  # 5 x 204 of 1024 weights: the centre is always taken in full
    if rounds == 1:
        assert on_centre[0] == 204 and on_centre[-1] < 0.1 * 576 / 5  # the failure the rounds remove
    else:
        assert min(on_centre) >= 0.8 * 576 / 5, on_centre


def test_molecule_graphs_get_masked_encoders_disjoint_from_the_atoms_up(mols, tmp_path):
    """data.encoder=dmpnn: every subnetwork has its own masked D-MPNN matrices (W_i, W_h, W_o). The masks are
    disjoint there too; a second stage trains task B without moving anything of task A's subnetwork,
    encoder included (A's predictions bit for bit); the packed export predicts the same."""
    from manytask import load_dataset
    from manytask.nn.dmpnn import MaskedDMPNN
    data = load_dataset("moleculenet", path=str(mols), encoder="dmpnn", descriptors=True, workers=1)
    model, hooks = make(data, widths=(8,), encoder_hidden=16, groups="task", criterion="gradient")
    (encoder,) = [m for m in model.modules() if isinstance(m, MaskedDMPNN)]
    assert [name for name, *_ in model.layers()][:3] == ["encoders.0.W_i", "encoders.0.W_h", "encoders.0.W_o"]
    stage_a, stage_b = stage_tasks(model, [["A"], ["B"]])
    train_stages(model, hooks, data, [stage_a], [FAST])
    check_disjoint(model)
    matrices = (encoder.W_i, encoder.W_h, encoder.W_o)
    assert all(layer.weight_mask[0].any() and layer.weight_mask[1].any() for layer in matrices)
    train = data.train.inputs["x"].descriptors  # standardised with the training rows
    known = ~torch.isnan(train).any(0)
    mean = train[:, known].double().mean(0).float()
    assert torch.allclose(encoder.descriptor_mean[known], mean, rtol=1e-5, atol=1e-5)
    a_before = predict_split(model, data.test, data.tasks)["A"]
    encoder_a = [layer.effective([0])[0].clone() for layer in matrices]
    encoder_b = [layer.effective([1])[0].clone() for layer in matrices]
    train_stages(model, hooks, data, [stage_b], [FAST])
    assert torch.equal(predict_split(model, data.test, data.tasks)["A"], a_before)
    assert all(torch.equal(layer.effective([0])[0], w) for layer, w in zip(matrices, encoder_a))
    assert all(not torch.equal(layer.effective([1])[0], w) for layer, w in zip(matrices, encoder_b))  # B's trained
    export(model, tmp_path / "packed.safetensors")
    packed = load_packed(tmp_path / "packed.safetensors")
    a, b = predict_split(model, data.test, data.tasks), predict_split(packed, data.test, data.tasks)
    assert all(torch.equal(a[t.name], b[t.name]) for t in data.tasks)


def test_molecule_graphs_refuse_a_shared_batch_norm():
    with pytest.raises(ConfigError, match="encoder_batch_norm=true would share the batch statistics"):
        build([Task("a", "binary")], {"x": ("graph", 72, 14, 0)}, RSN2Config(encoder_batch_norm=True))


@pytest.mark.parametrize("kinds,init,scale", [(("regression", "regression"), "auto", "torch"),
                                              (("binary", "regression"), "auto", "he"),
                                              (("regression",), "he", "he"), (("binary",), "torch", "torch")])
def test_initial_weights_he_or_torch_scale(kinds, init, scale):
    """init=auto starts regression-only data at nn.Linear's scale, U(+-1/sqrt(fan_in)), and any other at He's,
    U(+-sqrt(6/fan_in)): the same draws, divided by sqrt(6)."""
    tasks = [Task(f"t{i}", kind) for i, kind in enumerate(kinds)]
    torch.manual_seed(0)
    he, _ = build(tasks, {"x": (40,)}, dataclasses.replace(RSN2Config(), widths=(64,), init="he"))
    torch.manual_seed(0)
    model, _ = build(tasks, {"x": (40,)}, dataclasses.replace(RSN2Config(), widths=(64,), init=init))
    for (name, layer, _), (_, ref, _) in zip(model.layers(), he.layers()):
        fan_in = layer.weight.shape[1]  # Linear: (subnetworks, in, out)
        bound = (1 if scale == "torch" else 6 ** 0.5) / fan_in ** 0.5
        top = float(layer.weight.detach().abs().max())
        assert 0.9 * bound < top <= bound, name
        assert torch.allclose(layer.weight, ref.weight / (6 ** 0.5 if scale == "torch" else 1)), name


def test_regression_default_generalises_where_he_fits_the_training_rows(tmp_path):
    """On a small linear regression table (300 rows, 20 features, noise), rsn2's default (auto: torch scale)
    reaches a far lower validation RMSE than He's start, which fits the training rows instead of the trend."""
    from sklearn.datasets import make_regression
    from manytask.runs import resolve, train_run
    x, y = make_regression(n_samples=300, n_features=20, noise=5.0, random_state=3)
    path = tmp_path / "reg.csv"
    path.write_text(",".join([f"x{i}" for i in range(20)] + ["y"]) + "\n"
                    + "".join(",".join(f"{v:.6g}" for v in [*r, t]) + "\n" for r, t in zip(x, y)))
    val = {}
    for init in ("auto", "he"):
        spec = resolve("table", "rsn2", {"data.path": str(path), "data.target": "y", "widths": "256", "epochs": "60",
                                         "init": init, "progress": "false"})
        val[init] = train_run(spec, out=None, echo=False).summary["mean"]["val"]["nrmse"]
    assert val["auto"] < 0.6 * val["he"], val
