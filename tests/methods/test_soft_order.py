"""soft_order: the forward pass equals the paper's equation written naively, the three orderings do what
they say, the mixing weights start uniform and become task-specific, runs reload exactly, and bad settings
fail with a one-line ConfigError."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from manytask.config import ConfigError, apply
from manytask.data.base import model_input
from manytask.methods.soft_order import SoftOrder, SoftOrderConfig, build, ordering_distance
from manytask.runs import evaluate_run, resolve, train_run
from manytask.tasks import module_key
from manytask.train import TrainConfig, Trainer

from ..conftest import tiny_multi, tiny_shared


def encoded(model, t, x):
    """Task t's encoder output (n_t, *feat): row model.slot[i] of its input's encoder (eval mode)."""
    i = model.tasks.index(t)
    return model.encoders[module_key(t.input)](t.select(x))[model.slot[i]]


def naive_forward(model, x):
    """y(0) = E_t(x); y(k) = sum_j softmax(s[t,k])_j relu(y(k-1) W_j + b_j) [+ identity]; out = D_t(y(D)),
    one task and one layer at a time, with weights read from the model."""
    W, b = model.bank.weight, model.bank.bias  # (D, w, w), (D, w)
    mix = model.mixing()  # (T, D, K)
    out = {}
    for i, t in enumerate(model.tasks):
        y = encoded(model, t, x)  # (n, w)
        for k in range(model.depth):
            new = sum(mix[i, k, j] * F.relu(y @ W[j] + b[j]) for j in range(model.depth))
            if mix.shape[-1] > model.depth:
                new = new + mix[i, k, -1] * y
            y = new
        out[t.name] = model.decoders[t.name](y)
    return out


def built(data, **cfg):
    torch.manual_seed(0)
    return build(data.tasks, data.input_shapes, SoftOrderConfig(dropout=0.0, **cfg))


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("maker", [tiny_shared, tiny_multi])
def test_soft_forward_equals_the_equation(maker, identity):
    data = maker()
    model = built(data, width=16, depth=3, identity=identity).eval()
    with torch.no_grad():
        model.scores.normal_(0, 2)  # non-uniform, different per task and depth
    x = model_input(data.train.inputs)  # tiny_multi: inputs of 48 and 32 rows, so padding is exercised
    out, ref = model(x), naive_forward(model, x)
    for t in data.tasks:
        torch.testing.assert_close(out[t.name], ref[t.name])


@pytest.mark.parametrize("maker", [tiny_shared, tiny_multi])
def test_encoders_are_each_tasks_own_linear_layer(maker):
    """One stacked product per input equals task t's encoder relu(x W_t + b_t), W_t = TaskLinear.task(slot)."""
    data = maker()
    model = built(data, width=8).eval()
    x = model_input(data.train.inputs)
    for i, t in enumerate(data.tasks):
        W, b = model.encoders[module_key(t.input)][0].task(model.slot[i])  # (in, w), (w,)
        torch.testing.assert_close(encoded(model, t, x), F.relu(t.select(x).flatten(1) @ W + b))
    h, sizes = model.encode(x)  # (T, n_max, w), zero rows beyond n_t
    assert sizes == [t.select(x).shape[0] for t in data.tasks]
    for i, t in enumerate(data.tasks):
        torch.testing.assert_close(h[i, :sizes[i]], encoded(model, t, x))
        assert not h[i, sizes[i]:].any()


@pytest.mark.parametrize("ordering", ["soft", "permuted"])
def test_evaluation_in_task_chunks_equals_one_pass(ordering):
    """Without gradients the depths run on chunks of tasks; the outputs are those of the one-pass forward."""
    from manytask.tasks import Task
    tasks = [Task(f"t{i}", "binary") for i in range(7)]
    torch.manual_seed(0)
    model = build(tasks, {"x": (12,)}, SoftOrderConfig(ordering=ordering, width=8, depth=3, identity=ordering == "soft"))
    model.eval()
    if model.scores is not None:
        with torch.no_grad():
            model.scores.normal_(0, 2)
    x = torch.randn(20, 12)
    one_pass = model(x)  # gradients enabled: all tasks at once
    model.chunk_elements = 3 * 20 * 8 * 2  # two tasks per chunk: 4 chunks, the last one short
    with torch.no_grad():
        chunked = model(x)
    for t in tasks:
        torch.testing.assert_close(chunked[t.name], one_pass[t.name])


def test_parallel_is_the_plain_stack_and_permuted_follows_its_order():
    data = tiny_multi()
    x = model_input(data.train.inputs)
    for ordering in ("parallel", "permuted"):
        model = built(data, width=8, depth=4, ordering=ordering).eval()
        W, b = model.bank.weight, model.bank.bias
        out = model(x)
        for i, t in enumerate(data.tasks):
            y = encoded(model, t, x)
            for k in range(4):
                j = k if ordering == "parallel" else int(model.order[i, k])
                y = F.relu(y @ W[j] + b[j])
            torch.testing.assert_close(out[t.name], model.decoders[t.name](y))
        if ordering == "parallel":
            assert model.order.tolist() == [[0, 1, 2, 3]] * 3


def test_permutations_come_from_the_seed_and_differ_between_tasks():
    from manytask.tasks import Task
    tasks = [Task(f"t{i}", "binary") for i in range(10)]

    def order(seed):
        torch.manual_seed(seed)
        return build(tasks, {"x": (12,)}, SoftOrderConfig(ordering="permuted", depth=4)).order

    a, b = order(3), order(3)
    assert torch.equal(a, b)
    assert not torch.equal(a, order(4))
    assert all(sorted(row) == [0, 1, 2, 3] for row in a.tolist())  # each row a permutation
    assert len({tuple(r) for r in a.tolist()}) > 1  # tasks assemble the layers differently


def test_mixing_starts_uniform_and_distance_measures_disagreement():
    data = tiny_shared()
    soft = built(data, depth=4)
    torch.testing.assert_close(soft.mixing(), torch.full((3, 4, 4), 0.25))
    assert ordering_distance(soft.mixing().detach().numpy()) == 0.0
    assert ordering_distance(built(data, ordering="parallel", depth=4).mixing().numpy()) == 0.0
    perm = built(data, ordering="permuted", depth=4)
    o = perm.order.numpy()
    differ = np.mean([(o[a] != o[b]).mean() for a in range(3) for b in range(a + 1, 3)])
    assert ordering_distance(perm.mixing().numpy()) == pytest.approx(differ)
    with_id = built(data, depth=3, identity=True)
    assert with_id.mixing().shape == (3, 3, 4)


def test_identity_candidate_lets_a_task_skip_every_layer():
    data = tiny_multi()
    model = built(data, width=8, depth=3, identity=True).eval()
    with torch.no_grad():
        model.scores.zero_()
        model.scores[:, :, -1] = 50.0  # all mass on the identity
    x = model_input(data.test.inputs)
    out = model(x)
    for t in data.tasks:
        torch.testing.assert_close(out[t.name], model.decoders[t.name](encoded(model, t, x)))


def test_conv_variant_trains_on_images_and_matches_its_equation():
    from manytask.data.images import digit_pairs
    from sklearn.datasets import load_digits
    d = load_digits()
    data = digit_pairs(d.images, d.target, None, None, n_tasks=2, n_train=20, max_eval=20, seed=0)
    model = built(data, width=8, depth=2, conv=True).eval()
    with torch.no_grad():
        model.scores.normal_()
    x = model_input(data.test.inputs)
    out = model(x)
    W, b, mix = model.bank.weight, model.bank.bias, model.mixing()
    for i, t in enumerate(data.tasks):
        y = encoded(model, t, x)  # (n, C, 8, 8)
        for k in range(2):
            y = sum(mix[i, k, j] * F.relu(F.conv2d(y, W[j], b[j], padding=1)) for j in range(2))
        torch.testing.assert_close(out[t.name], model.decoders[t.name](y))
    model.train()
    tr = Trainer(model, data, TrainConfig(epochs=20, batch_size=20, lr=1e-2, patience=0, progress=False))
    before = tr.evaluate("train")[1]
    tr.fit()
    assert tr.evaluate("train")[1] < 0.8 * before


def test_learned_orderings_differ_between_tasks(tmp_path):
    spec = resolve("digit_pairs", "soft_order", {"data.tasks": "3", "data.n_train": "20", "epochs": "10",
                                                 "patience": "0", "lr": "0.01", "progress": "false", "width": "16",
                                                 "depth": "4"})
    run = train_run(spec, out=tmp_path, name="run", echo=False)
    mix = run.model.mixing().detach().numpy()  # (3, 4, 4)
    assert not np.allclose(mix, 0.25, atol=1e-3)  # moved away from uniform
    dist = run.summary["artifacts"]["ordering_distance"]  # train_run wrote mixing.csv and mixing.png
    assert dist == pytest.approx(ordering_distance(mix)) and dist > 0.01
    assert json.loads((run.dir / "results.json").read_text())["artifacts"] == {
        "ordering_distance": dist, "files": ["mixing.csv", "mixing.png"]}
    header, *rows = list(csv.reader(open(run.dir / "mixing.csv")))  # rows: task and depth, columns: layers
    assert header == ["task, depth", "F1", "F2", "F3", "F4"]
    assert [r[0] for r in rows] == [f"{t.name} d{k}" for t in run.model.tasks for k in (1, 2, 3, 4)]
    weights = np.array([[float(v) for v in r[1:]] for r in rows])  # (3 * 4, 4)
    np.testing.assert_allclose(weights, mix.reshape(12, 4), rtol=1e-6)
    assert np.allclose(weights.sum(1), 1.0, atol=1e-5)
    assert (run.dir / "mixing.png").stat().st_size > 1000


@pytest.mark.parametrize("ordering", ["soft", "permuted"])
def test_run_reloads_exactly(tmp_path, ordering):
    spec = resolve("digit_pairs", "soft_order", {"data.tasks": "3", "data.n_train": "10", "epochs": "2",
                                                 "ordering": ordering, "seed": "5", "progress": "false"})
    run = train_run(spec, out=tmp_path, name="run", echo=False)
    _, same = evaluate_run(run.dir, echo=False)
    assert same


@pytest.mark.parametrize("cfg,match", [
    ({"identity": True, "ordering": "parallel"}, "identity=true needs ordering=soft"),
    ({"conv": True}, "conv=true needs image inputs"),
    ({"width": 0}, "width=0: must be >= 1"),
    ({"depth": 0}, "depth=0: must be >= 1"),
    ({"dropout": 1.0}, "dropout=1.0: must be in \\[0, 1\\)"),
])
def test_bad_settings_are_config_errors(cfg, match):
    """Ranges fail when the config is parsed (config.apply), cross-field settings in the builder."""
    data = tiny_multi()
    with pytest.raises(ConfigError, match=match):
        build(data.tasks, data.input_shapes, apply(SoftOrderConfig(), cfg, "soft_order"))


def test_conv_needs_one_image_size():
    from manytask.tasks import Task
    tasks = [Task("a", "binary", input="a"), Task("b", "binary", input="b")]
    with pytest.raises(ConfigError, match="one image size"):
        build(tasks, {"a": (1, 8, 8), "b": (1, 28, 28)}, SoftOrderConfig(conv=True))
    with pytest.raises(ConfigError, match="ordering=.*choose one of"):
        resolve("digit_pairs", "soft_order", {"ordering": "random"})


def test_scores_get_their_own_learning_rate():
    data = tiny_shared()
    model, hooks = build(data.tasks, data.input_shapes, SoftOrderConfig(scores_lr=0.05))
    tr = Trainer(model, data, TrainConfig(lr=1e-3, progress=False), hooks)
    groups = tr.optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 0.05]
    assert groups[1]["params"] == [model.scores]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert not isinstance(build(data.tasks, data.input_shapes, SoftOrderConfig(ordering="parallel", scores_lr=0.05)), tuple)
    with pytest.raises(ConfigError, match="scores_lr=-1.0: must be >= 0"):
        build(data.tasks, data.input_shapes, apply(SoftOrderConfig(), {"scores_lr": "-1"}, "soft_order"))


def test_model_rejects_identity_with_a_fixed_order():
    data = tiny_shared()
    model = built(data, width=8, depth=2, ordering="parallel")
    with pytest.raises(ValueError, match="identity needs soft ordering"):
        SoftOrder(data.tasks, dict(model.encoders), dict(model.decoders), model.bank, model.order, identity=True)


def depth_spread(d: int, ordering: str, preserve_scale: bool, seed: int) -> tuple[float, float]:
    """(example-to-example spread of y(D), of y(0)) at initialisation: std over 256 inputs of d sparse
    non-negative pixels, mean over tasks and units."""
    from manytask.tasks import Task
    torch.manual_seed(seed)
    tasks = [Task(f"t{i}", "binary") for i in range(3)]
    model = build(tasks, {"x": (d,)}, SoftOrderConfig(ordering=ordering, preserve_scale=preserve_scale, width=64, depth=4,
                                                      dropout=0.0))
    x = torch.rand(256, d) * (torch.rand(256, d) < 0.3)  # digit-like: non-negative, mostly dark
    with torch.no_grad():
        h, _ = model.eval().encode(x)
        y = model.depths(h, slice(0, 3))
    return float(y.std(dim=1).mean()), float(h.std(dim=1).mean())


@pytest.mark.parametrize("d", [64, 784])  # 8x8 and 28x28 digits
@pytest.mark.parametrize("seed", [0, 1])
def test_preserve_scale_keeps_the_signal_through_the_depths(d, seed):
    """The cause of soft ordering's collapse on 28x28 digits: mixing D independently initialised layers
    uniformly shrinks the part of the representation that differs between examples by about sqrt(D) per
    depth, on top of nn.Linear's initialisation, so soft ordering starts with near-constant outputs
    (y(D) keeps < 1% of y(0)'s spread, a tenth of what parallel ordering keeps). preserve_scale keeps it
    within a factor 4 of y(0)'s for soft and parallel ordering alike, at 64 and at 784 inputs."""
    soft, enc = depth_spread(d, "soft", False, seed)
    parallel, _ = depth_spread(d, "parallel", False, seed)
    assert soft / enc < 0.01 and soft < 0.2 * parallel  # the cause, kept visible
    for ordering in ("soft", "parallel"):
        out, enc = depth_spread(d, ordering, True, seed)
        assert 0.25 < out / enc < 4


def test_preserve_scale_changes_nothing_for_a_one_hot_mixture():
    """||m||_2 = 1 for a one-hot row: soft ordering with all mass on layer k at depth k is parallel ordering."""
    data = tiny_multi()
    soft = built(data, width=8, depth=3, preserve_scale=True).eval()
    parallel = built(data, width=8, depth=3, preserve_scale=True, ordering="parallel").eval()
    parallel.load_state_dict({k: v for k, v in soft.state_dict().items() if k != "scores"}, strict=False)
    with torch.no_grad():
        soft.scores.copy_(torch.eye(3).expand(3, 3, 3) * 60.0)
    x = model_input(data.test.inputs)
    a, b = soft(x), parallel(x)
    for t in data.tasks:
        torch.testing.assert_close(a[t.name], b[t.name])
    mix = soft.mixing()
    assert torch.allclose(mix.sum(-1), torch.ones(3, 3))  # the reported weights still sum to 1


@pytest.mark.parametrize("ordering", ["soft", "parallel"])
def test_recomputed_depths_give_the_same_training_step(ordering):
    """Many tasks: the depths are recomputed in the backward pass (torch.utils.checkpoint) instead of keeping
    every depth's candidates. Same dropout masks, outputs, gradients and random stream afterwards."""
    data = tiny_shared()
    x, y = model_input(data.train.inputs), data.train.labels

    def one_step(chunk_elements):
        model = built(data, width=8, depth=3, ordering=ordering)
        model.bank.dropout = 0.3
        model.chunk_elements = chunk_elements
        torch.manual_seed(7)
        out = model.train()(x)
        from manytask.tasks import mean_loss
        mean_loss(data.tasks, out, y).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}, torch.rand(3)

    kept, recomputed = one_step(1 << 30), one_step(1)
    for a, b in zip(kept, recomputed):
        if isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                torch.testing.assert_close(a[k], b[k])
        else:
            torch.testing.assert_close(a, b)
