"""The icnn method: model shapes, isolation end to end through the model and a real training step,
NN2 STL parameter matching, config errors, the L1 hook, the connector heatmaps, and sparse connectors (the
automatic rule, the three source rules, saving and resuming the chosen sources)."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from manytask.config import ConfigError, apply, check
from manytask.data.base import MultiTaskData, Split
from manytask.methods.icnn import (AUTO_CONNECTORS, DENSE_UP_TO, HEATMAP_UP_TO, ICNN, ICNNConfig, ICNNHooks,
                                   SourceRule, build, connector_heatmap, label_correlation)
from manytask.nn.interconnected import InterLayer, connector_l1, interlayers, random_sources, top_sources
from manytask.nn.mlp import mlp_params
from manytask.report import write_matrix
from manytask.runs import RunSpec, build as build_run, n_params
from manytask.tasks import Task, mean_loss
from manytask.train import Hooks, TrainConfig, Trainer

from ..conftest import tiny_multi, tiny_shared


def tasks(k=4):
    return [Task(f"t{i}", "binary") for i in range(k)]


def test_outputs_and_zero_rows():
    model = ICNN(tasks(), 10, (6, 5, 4), dropout=0.1)
    model.eval()
    for b in (3, 0):
        out = model(torch.randn(b, 10))
        assert set(out) == {"t0", "t1", "t2", "t3"}
        assert all(v.shape == (b, 1) for v in out.values())
    assert len(model.inter) == 2 and all(isinstance(m, InterLayer) for m in model.inter)


def test_parameter_count():
    """first layer N*(d*w0 + w0), inter-layers n*m*N^2 + N*m each, heads N*(w + 1)."""
    N, d, w = 5, 10, (6, 4)
    model = ICNN(tasks(N), d, w)
    assert n_params(model) == N * (d * w[0] + w[0]) + w[0] * w[1] * N ** 2 + N * w[1] + N * (w[1] + 1)
    # root weights + biases of one subnetwork = an MLP of the same widths (the NN2 STL target)
    assert model.root_params_per_subnetwork() == mlp_params(d, w, 1)
    roots = model.first.weight.numel() // N + w[0] + w[0] * w[1] + w[1] + w[1] + 1
    assert model.root_params_per_subnetwork() == roots


@pytest.mark.parametrize("task", range(3))
def test_task_loss_updates_only_its_subnetwork_end_to_end(task):
    """Through the whole model: task i's loss gives zero gradient to every other subnetwork's first
    layer, roots, biases, incoming connectors and head."""
    N, d, w = 3, 8, (5, 4, 3)
    torch.manual_seed(0)
    model = ICNN(tasks(N), d, w)
    out = model(torch.randn(6, d))
    out[f"t{task}"].pow(2).sum().backward()
    assert_gradient_only_in_subnetwork(model, task)


def assert_gradient_only_in_subnetwork(model: ICNN, task: int) -> None:
    """After a backward of task `task`'s output alone: subnetwork `task`'s first layer, biases, weights into
    it and head all have a nonzero gradient, every other subnetwork's none."""
    N, w0 = len(model.tasks), model.widths[0]
    first = model.first.weight.grad.reshape(N, w0, -1)  # (N, w0, d)
    for k in range(N):
        own = k == task
        grads = [first[k], model.first.bias.grad.reshape(N, w0)[k]]
        for lay in model.inter:
            grads += [lay.weight.grad[k], lay.bias.grad[k]]  # everything INTO subnetwork k (N_dst first)
        head = model.heads[k].weight.grad
        grads.append(head if head is not None else torch.zeros(1))
        nz = [int(torch.count_nonzero(g)) for g in grads]
        assert all(v > 0 for v in nz) if own else all(v == 0 for v in nz), (k, nz)


def test_isolate_false_shares_gradients():
    torch.manual_seed(0)
    model = ICNN(tasks(3), 8, (5, 4), isolate=False)
    model(torch.randn(6, 8))["t0"].pow(2).sum().backward()
    first = model.first.weight.grad.reshape(3, 5, 8)
    assert torch.count_nonzero(first[1]) > 0 and torch.count_nonzero(first[2]) > 0


def test_training_changes_only_trained_tasks_subnetworks():
    """A real optimizer step with one task's labels (the others missing) leaves the other subnetworks'
    roots and biases unchanged (SGD without momentum or weight decay)."""
    data = tiny_shared()
    for t in ("multi", "reg"):
        data.train.labels[t][:] = float("nan")
    spec = RunSpec("tiny", "icnn", None, ICNNConfig(widths=(8, 6), dropout=0.0),
                   TrainConfig(epochs=1, batch_size=16, patience=0, progress=False, optimizer="sgd", momentum=0.0, lr=0.1))
    model, hooks = build_run(spec, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Trainer(model, data, spec.train, hooks).fit()
    after = model.state_dict()
    N, w0 = 3, 8
    d_first = (after["first.weight"] - before["first.weight"]).reshape(N, w0, -1)
    assert torch.count_nonzero(d_first[0]) > 0 and torch.count_nonzero(d_first[1:]) == 0
    d_inter = after["inter.0.weight"] - before["inter.0.weight"]  # (N_dst, N_src, n, m)
    assert torch.count_nonzero(d_inter[0]) > 0 and torch.count_nonzero(d_inter[1:]) == 0
    assert torch.equal(after["heads.1.weight"], before["heads.1.weight"])


def test_config_errors():
    """Ranges of single fields are checked by the config; the builder checks the rest against the data."""
    with pytest.raises(ConfigError, match="widths=8: need .*at least 2 values"):
        check(ICNNConfig(widths=(8,)))
    with pytest.raises(ConfigError, match="connector_l1"):
        check(ICNNConfig(connector_l1=-1.0))
    for key, value in (("widths", "8,0"), ("dropout", "1.0"), ("activation", "swish")):
        with pytest.raises(ConfigError, match=key if key != "activation" else "choose one of relu"):
            apply(ICNNConfig(), {key: value}, "icnn method")
    shapes = {"x": (12,)}
    with pytest.raises(ConfigError, match="unknown task"):
        build(tasks(), shapes, ICNNConfig(targets=("nope",)))
    with pytest.raises(ConfigError, match="at least 2 subnetworks"):  # the layer's ValueError, re-raised
        build(tasks(1), shapes, ICNNConfig(targets=("t0",)))
    data = tiny_multi()
    with pytest.raises(ConfigError, match="same input"):
        build(data.tasks, data.input_shapes, ICNNConfig())


def test_targets_config_and_l1_hook_shrink_connectors():
    data = tiny_shared()
    model, _ = build(data.tasks, data.input_shapes, ICNNConfig(widths=(8, 6), targets=("reg",)))
    lay = model.inter[0]
    assert lay.targets.tolist() == [2] and lay.connector.shape == (1, 2, 8, 6)

    def trained(lam):
        spec = RunSpec("tiny", "icnn", None, ICNNConfig(widths=(8, 6), dropout=0.0, connector_l1=lam),
                       TrainConfig(epochs=15, batch_size=16, patience=0, progress=False, lr=3e-3))
        model, hooks = build_run(spec, data)
        Trainer(model, data, spec.train, hooks).fit()
        return float(connector_l1(model).detach())

    assert trained(0.05) < 0.5 * trained(0.0)


def test_l1_hook_changes_the_loss_only():
    """ICNNHooks add lam * L1 to the mean task loss; the optimizer step stays the trainer's own."""
    data = tiny_shared()
    model, hooks = build(data.tasks, data.input_shapes, ICNNConfig(widths=(8, 6), connector_l1=0.01))
    assert isinstance(hooks, ICNNHooks) and type(hooks).training_step is Hooks.training_step
    tr = Trainer(model, data, TrainConfig(progress=False), hooks)
    x, y = next(tr.batches())
    out = model(x)
    expected = mean_loss(tr.tasks, out, y) + 0.01 * connector_l1(model)
    torch.testing.assert_close(hooks.loss(tr, out, y), expected)


def test_connector_heatmap_files(tmp_path):
    names = ["a", "b", "c"]
    model = ICNN([Task(n, "binary") for n in names], 6, (4, 3, 2))
    with torch.no_grad():
        model.inter[1].weight.zero_()
        model.inter[1].weight[2, 0] = 1.0  # only a->c (weight[dst, src]): |W| sum = 3*2
    paths = write_matrix(tmp_path, connector_heatmap(model, names, name="conn"))
    assert {p.name for p in paths} == {"conn.csv", "conn.png"} and all(p.stat().st_size > 0 for p in paths)
    rows = list(csv.reader(open(tmp_path / "conn.csv")))
    assert rows[0] == ["source", "a", "b", "c"]
    assert [float(v) for v in rows[1][1:]] == [0.0, 0.0, 6.0] and rows[2][0] == "b"
    _, (last,) = model.artifacts()  # what every run directory gets: the last inter-layer as connectors.csv/png
    assert last.name == "connectors" and (last.values == connector_heatmap(model, names).values).all()
    every = [connector_heatmap(model, names, j, f"all_layer{j + 1}") for j in range(len(model.inter))]
    assert [m.title.split(", ")[1].split(" (")[0] for m in every] == ["inter-layer 1 of 2", "inter-layer 2 of 2"]
    written = [p.name for m in every for p in write_matrix(tmp_path, m)]
    assert written == ["all_layer1.csv", "all_layer1.png", "all_layer2.csv", "all_layer2.png"]
    with pytest.raises(ValueError, match="task names"):
        connector_heatmap(model, names[:2])


def test_label_correlation_is_pairwise_complete_pearson():
    """Against numpy: |corrcoef| of every pair over the rows labelled in both; 0 below min_joint rows or for a
    constant column."""
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(60, 5, generator=gen) > 0.5).float()
    y[:, 1] = y[:, 0]  # a copy: |phi| = 1
    y[:, 2] = 1 - y[:, 0]  # the complement: |phi| = 1
    y[torch.rand(60, 5, generator=gen) < 0.3] = float("nan")
    y[:, 4] = float("nan")
    y[:3, 4] = torch.tensor([0.0, 1.0, 0.0])  # 3 labelled rows
    got = label_correlation(y, min_joint=5)
    for i in range(5):
        for j in range(5):
            both = ~(torch.isnan(y[:, i]) | torch.isnan(y[:, j]))
            if int(both.sum()) < 5:
                assert got[i, j] == 0
                continue
            want = abs(np.corrcoef(y[both, i].numpy(), y[both, j].numpy())[0, 1])
            assert math.isclose(float(got[i, j]), want, abs_tol=1e-5), (i, j)
    assert float(got[0, 1]) == pytest.approx(1.0) and float(got[0, 2]) == pytest.approx(1.0)
    const = y.clone()
    const[:, 3] = 1.0
    assert torch.all(label_correlation(const, min_joint=5)[3] == 0)


def test_connectors_config_auto_rule_and_errors():
    """connectors=0: dense up to DENSE_UP_TO tasks (ICNNHooks), AUTO_CONNECTORS sources above (SourceRule); an
    explicit k < N-1 is sparse at any N, k = N-1 dense; k > N-1 is a ConfigError."""
    shapes = {"x": (6,)}
    dense, hooks = build(tasks(4), shapes, ICNNConfig(widths=(3, 2)))
    assert isinstance(dense, ICNN) and dense.inter[0].full and type(hooks) is ICNNHooks
    model, hooks = build(tasks(4), shapes, ICNNConfig(widths=(3, 2, 2), connectors=2, sources="random"))
    assert isinstance(hooks, SourceRule) and all(lay.sources.shape == (4, 2) for lay in model.inter)
    assert build(tasks(4), shapes, ICNNConfig(widths=(3, 2), connectors=3))[0].inter[0].full  # k = N-1: dense
    at_limit, _ = build(tasks(DENSE_UP_TO), shapes, ICNNConfig(widths=(2, 2)))
    assert isinstance(at_limit, ICNN) and at_limit.inter[0].full
    many, _ = build(tasks(DENSE_UP_TO + 1), shapes, ICNNConfig(widths=(2, 2)))
    assert many.inter[0].connector.shape == (DENSE_UP_TO + 1, AUTO_CONNECTORS, 2, 2)
    with pytest.raises(ConfigError, match="connectors=4: a subnetwork has only 3 others"):
        build(tasks(4), shapes, ICNNConfig(connectors=4))
    with pytest.raises(ConfigError, match="sources"):
        apply(ICNNConfig(), {"sources": "best"}, "icnn method")


def planted_data(n=200, seed=0) -> MultiTaskData:
    """6 binary tasks: t1 = t0 with 10% flipped, t3 = 1 - t2, t4 and t5 independent; 30% labels missing."""
    gen = torch.Generator().manual_seed(seed)
    tasks6 = [Task(f"t{i}", "binary") for i in range(6)]
    splits = []
    for m in (n, n // 4, n // 4):
        x = torch.randn(m, 8, generator=gen)
        base = (x[:, :3] > 0).float()  # (m, 3)
        flip = (torch.rand(m, generator=gen) < 0.1).float()
        y = torch.stack([base[:, 0], (base[:, 0] + flip) % 2, base[:, 1], 1 - base[:, 1], base[:, 2],
                         (torch.rand(m, generator=gen) > 0.5).float()], dim=1)
        y[torch.rand(m, 6, generator=gen) < 0.3] = float("nan")
        splits.append(Split({"x": x}, {f"t{i}": y[:, i] for i in range(6)}))
    return MultiTaskData("planted", tasks6, *splits)


def sparse_trainer(rule, k=1, seed=0, train=None, **cfg):
    data = planted_data()
    spec = RunSpec("planted", "icnn", None, ICNNConfig(widths=(6, 4, 3), dropout=0.0, connectors=k, sources=rule, **cfg),
                   TrainConfig(epochs=1, batch_size=32, patience=0, progress=False, seed=seed, **(train or {})))
    model, hooks = build_run(spec, data)
    return Trainer(model, data, spec.train, hooks)


def test_correlation_rule_finds_the_planted_pairs():
    """sources=correlation: the most correlated task of the training split feeds each subnetwork (t0 <-> t1,
    t2 <-> t3), the same in every inter-layer."""
    tr = sparse_trainer("correlation")
    tr.hooks.before_training(tr)
    for lay in interlayers(tr.model):
        assert lay.sources[:4, 0].tolist() == [1, 0, 3, 2]
    names = [t.name for t in tr.model.tasks]
    want = top_sources(label_correlation(torch.stack([tr.data.train.labels[t] for t in names], 1)), 1)
    assert torch.equal(tr.model.inter[0].sources, want)


def test_random_rule_follows_the_seed():
    a, b, c = sparse_trainer("random", k=2, seed=0), sparse_trainer("random", k=2, seed=0), sparse_trainer("random", k=2, seed=1)
    for tr in (a, b, c):
        tr.hooks.before_training(tr)
    assert torch.equal(a.model.inter[0].sources, random_sources(6, 2, torch.Generator().manual_seed(0)))
    assert torch.equal(a.model.inter[0].sources, b.model.inter[1].sources)
    assert not torch.equal(a.model.inter[0].sources, c.model.inter[0].sources)


def test_learned_rule_keeps_the_largest_blocks_of_a_dense_twin():
    """sources=learned: per inter-layer the k largest sum |W(k->i)| of a dense ICNN trained learn_epochs epochs
    with the connector L1; the global random state is left as it was (the sparse run's dropout and batches do
    not depend on the rule)."""
    tr = sparse_trainer("learned", k=2, connector_l1=1e-3, learn_epochs=2)
    state = torch.get_rng_state()
    dense = tr.hooks.learned(tr)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(lay.full for lay in dense.inter) and dense.inter[0].weight.shape == (6, 6, 6, 4)
    tr.hooks.before_training(tr)
    assert torch.equal(torch.get_rng_state(), state)
    for lay, d in zip(tr.model.inter, dense.inter):  # the same dense twin: training it is deterministic
        assert torch.equal(lay.sources, top_sources(d.blocks_abs_sum(), 2))


def test_sparse_isolation_through_a_training_step_and_resume():
    """With only task t0 labelled, an SGD step changes only subnetwork 0 (roots, connectors into it); the
    chosen sources are in the checkpoint state and a resumed trainer gets them back although its own
    before_training would choose others."""
    sgd = {"optimizer": "sgd", "momentum": 0.0, "lr": 0.1}
    tr = sparse_trainer("correlation", k=2, seed=0, train=sgd)
    tr.tasks = tr.data.tasks[:1]  # train t0 only: the other subnetworks get no gradient
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    after = tr.model.state_dict()
    for name in ("inter.0.root", "inter.0.connector", "inter.1.root", "inter.1.connector"):
        d = after[name] - before[name]
        assert torch.count_nonzero(d[0]) > 0 and torch.count_nonzero(d[1:]) == 0, name
    saved = tr.state_dict()
    other = sparse_trainer("random", k=2, seed=5, train=sgd)
    other.hooks.before_training(other)
    assert not torch.equal(other.model.inter[0].sources, after["inter.0.sources"])
    other.fit(resume=saved)
    for lay, src in zip(other.model.inter, (after["inter.0.sources"], after["inter.1.sources"])):
        assert torch.equal(lay.sources, src)


def test_many_tasks_get_their_sources_in_results_not_a_heatmap():
    """Above HEATMAP_UP_TO tasks artifacts() draws no heatmap; it lists each task's sources in the last
    inter-layer with their sum |W|, strongest first."""
    N = HEATMAP_UP_TO + 1
    model = ICNN(tasks(N), 4, (3, 2, 2), connectors=3)
    figures, matrices = model.artifacts()
    assert matrices == []
    src = figures["connector_sources"]
    last = model.inter[-1]
    strength = last.connector.detach().abs().sum(dim=(2, 3))  # (N, 3)
    for i in range(N):
        got = src[f"t{i}"]
        assert set(got) == {f"t{j}" for j in last.sources[i].tolist()}
        assert sorted(got.values(), reverse=True) == list(got.values())
        assert max(got.values()) == pytest.approx(float(strength[i].max()))
    small_figs, (heat,) = ICNN(tasks(4), 4, (3, 2)).artifacts()
    assert small_figs == {} and heat.name == "connectors"


def test_max_units_scales_widths_only_at_many_tasks(caplog):
    from manytask.methods.icnn import capped_widths
    assert capped_widths((128, 64), 12, 20_000) == (128, 64)
    assert capped_widths((128, 64), 156, 20_000) == (128, 64)  # 156 * 128 = 19,968
    with caplog.at_level("WARNING", logger="manytask"):
        assert capped_widths((128, 64), 617, 20_000) == (32, 16)
    assert "widths 128,64 -> 32,16" in caplog.text
    assert capped_widths((128, 64), 617, 0) == (128, 64)
    assert capped_widths((4, 2), 10_000, 20_000) == (2, 1)  # never below one unit


def test_built_model_follows_max_units():
    tasks = [Task(f"t{i}", "binary") for i in range(200)]
    model, _ = build(tasks, {"x": (16,)}, ICNNConfig(widths=(128, 64)))
    assert model.widths == (100, 50)  # 20,000 / (200 * 128) = 0.78


GRAPH = {"x": ("graph", 72, 14, 0)}  # a molecule graph input (data.encoder=dmpnn), no descriptors


def test_graph_input_one_shared_encoder_trained_by_every_task_isolation_above_it():
    """data.encoder=dmpnn: one D-MPNN below the subnetworks; each task's loss reaches the whole encoder,
    and above it only its own subnetwork (the isolation of the fingerprint model)."""
    from manytask.data.graphs import GraphRows, featurize_graphs
    from manytask.nn.dmpnn import DMPNN
    from manytask.runs import create_model
    torch.manual_seed(0)
    model, _ = create_model("icnn", tasks(3), GRAPH, widths=(5, 4, 3), dropout=0.0, encoder_hidden=16)
    encoders = [m for m in model.modules() if isinstance(m, DMPNN)]
    assert encoders == [model.encoder] and model.first.in_features == 16
    x = GraphRows(featurize_graphs(["CCO", "c1ccccc1O", "CCN", "c1ccncc1", "OCC(O)CO", "CC(=O)O"]))[torch.arange(6)]
    for task in range(3):
        model.zero_grad(set_to_none=True)
        model(x)[f"t{task}"].pow(2).sum().backward()
        assert_gradient_only_in_subnetwork(model, task)
        assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.encoder.parameters())


def test_icnn_trains_on_molecule_graphs(mols):
    from manytask import load_dataset
    data = load_dataset("moleculenet", path=str(mols), encoder="dmpnn", workers=1)
    torch.manual_seed(0)
    spec = RunSpec("moleculenet", "icnn", None, ICNNConfig(widths=(16, 8), dropout=0.0, encoder_hidden=32),
                   TrainConfig(epochs=20, batch_size=16, patience=0, progress=False, lr=1e-2, device="cpu"))
    model, hooks = build_run(spec, data)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    losses = [row["train_loss"] for row in Trainer(model, data, spec.train, hooks).fit().history]
    assert losses[-1] < 0.9 * losses[0], losses
    assert all(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items() if k in dict(
        model.encoder.named_parameters()))


def test_graph_input_with_descriptors_standardises_them_and_keeps_sparse_sources(mols):
    """With descriptors, the hooks (ICNNHooks, or SourceRule for sparse connectors) fill the encoder's
    descriptor statistics from the training split before training."""
    from manytask import load_dataset
    data = load_dataset("moleculenet", path=str(mols), encoder="dmpnn", descriptors=True, workers=1)
    for cfg in (ICNNConfig(widths=(4, 4), encoder_hidden=8), ICNNConfig(widths=(4, 4), encoder_hidden=8, connectors=1)):
        torch.manual_seed(0)
        spec = RunSpec("moleculenet", "icnn", None, cfg, TrainConfig(epochs=1, progress=False, device="cpu"))
        model, hooks = build_run(spec, data)
        assert isinstance(hooks, ICNNHooks)
        Trainer(model, data, spec.train, hooks).fit()
        assert torch.count_nonzero(model.encoder.descriptor_mean) > 0
