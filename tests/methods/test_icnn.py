"""The icnn method: model shapes, isolation end to end through the model and a real training step,
NN2 STL parameter matching, config errors, the L1 hook, and the connector heatmaps."""
from __future__ import annotations

import csv

import pytest
import torch

from manytask.config import ConfigError, apply, check
from manytask.methods.icnn import ICNN, ConnectorL1, ICNNConfig, build, connector_heatmap
from manytask.nn.interconnected import InterLayer, connector_l1
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
    first = model.first.weight.grad.reshape(N, w[0], d)  # (N, w0, d)
    for k in range(N):
        own = k == task
        grads = [first[k], model.first.bias.grad.reshape(N, w[0])[k]]
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
    model = build(data.tasks, data.input_shapes, ICNNConfig(widths=(8, 6), targets=("reg",)))
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
    """ConnectorL1 adds lam * L1 to the mean task loss; the optimizer step stays the trainer's own."""
    data = tiny_shared()
    model, hooks = build(data.tasks, data.input_shapes, ICNNConfig(widths=(8, 6), connector_l1=0.01))
    assert isinstance(hooks, ConnectorL1) and type(hooks).training_step is Hooks.training_step
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
