"""The D-MPNN encoder: shapes, agreement with chemprop's MPNN, descriptor standardisation, methods on
graph inputs, and the command line end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from manytask.config import ConfigError
from manytask.data.graphs import GraphDims, GraphRows, featurize_graphs
from manytask.nn.dmpnn import DMPNN, check_graph_method, graph_methods
from manytask.runs import create_model, evaluate_run
from manytask.tasks import Task

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "c1ccncc1", "CCCC", "OCC(O)CO", "[Na+].[Cl-]"]


@pytest.fixture(scope="module")
def rows():
    return GraphRows(featurize_graphs(SMILES, 1))


def test_forward_shapes_and_options(rows):
    torch.manual_seed(0)
    x = rows[torch.arange(len(SMILES))]
    for aggregation in ("norm", "mean", "sum"):
        enc = DMPNN(GraphDims(72, 14, 0), hidden=32, depth=2, aggregation=aggregation, batch_norm=True)
        assert enc(x).shape == (len(SMILES), 32) and enc.out_dim == 32
    enc = DMPNN(GraphDims(72, 14, 0), hidden=16, aggregation="mean").eval()
    one = enc(rows[torch.tensor([2])])
    assert torch.allclose(enc(x)[2], one[0], atol=1e-6)  # a molecule's vector does not depend on its batch
    with pytest.raises(ValueError, match="aggregation"):
        DMPNN(GraphDims(72, 14, 0), aggregation="max")


def test_padded_features_change_no_output(rows):
    """pad_to=16: W_i reads 80 + 16 columns and W_o 80 + hidden, multiples of 16; with the real columns'
    weights copied from an unpadded encoder (the padding's are anything) both give the same vectors."""
    torch.manual_seed(0)
    plain, padded = DMPNN(GraphDims(72, 14, 0), hidden=32), DMPNN(GraphDims(72, 14, 0), hidden=32, pad_to=16)
    a, b = plain.message_passing, padded.message_passing
    assert b.W_i.weight.shape == (32, 96) and b.W_h.weight.shape == (32, 32) and b.W_o.weight.shape == (32, 112)
    atoms = torch.arange(72)
    with torch.no_grad():
        b.W_h.weight.copy_(a.W_h.weight)
        b.W_i.weight[:, torch.cat([atoms, 80 + torch.arange(14)])] = a.W_i.weight
        b.W_o.weight[:, torch.cat([atoms, 80 + torch.arange(32)])] = a.W_o.weight
        b.W_o.bias.copy_(a.W_o.bias)
    x = rows[torch.arange(len(SMILES))]
    assert torch.allclose(padded(x), plain(x), atol=1e-6)
    assert x.graph.V.shape[1] == 72 and x.graph.E.shape[1] == 14  # the batch itself is not padded


def test_a_mask_keeps_molecules_of_a_batch(rows):
    """GraphBatch[mask] (a method's x[labelled]) is the batch of those rows, atoms and edges renumbered."""
    x = rows[torch.arange(len(SMILES))]
    keep = torch.tensor([False, True, True, False, True, False, True, True])
    sub, ref = x[keep], rows[keep]
    assert len(sub) == 5 and sub.shape == ref.shape
    for field in ("V", "E", "edge_index", "rev_edge_index", "batch"):
        assert torch.equal(getattr(sub.graph, field), getattr(ref.graph, field)), field
    enc = DMPNN(GraphDims(72, 14, 0), hidden=8).eval()
    assert torch.allclose(enc(sub), enc(x)[keep], atol=1e-6)
    with pytest.raises(ValueError, match="bool mask"):
        x[torch.tensor([0, 1])]


def test_encoder_is_chemprops_mpnn_fingerprint_and_hard_sharing_its_model(rows):
    """hard_sharing with widths=300, dropout=0 on a graph input computes what chemprop's default
    classification MPNN computes with the same weights."""
    from chemprop import nn as cnn
    from chemprop.models import MPNN
    torch.manual_seed(0)
    tasks = [Task(f"t{i}", "binary") for i in range(3)]
    model, _ = create_model("hard_sharing", tasks, {"x": ("graph", 72, 14, 0)}, widths=(300,), dropout=0.0)
    mpnn = MPNN(cnn.BondMessagePassing(), cnn.NormAggregation(),
                cnn.BinaryClassificationFFN(n_tasks=3, input_dim=300, hidden_dim=300, n_layers=1))
    dmpnn, first = model.encoders["x"][0], model.encoders["x"][1][1]
    mpnn.message_passing.load_state_dict(dmpnn.message_passing.state_dict())
    ffn = mpnn.predictor.ffn
    with torch.no_grad():
        ffn[0][0].weight.copy_(first.weight)
        ffn[0][0].bias.copy_(first.bias)
        ffn[1][2].weight.copy_(torch.cat([model.heads[t.name].weight for t in tasks]))
        ffn[1][2].bias.copy_(torch.cat([model.heads[t.name].bias for t in tasks]))
    model.eval(), mpnn.eval()
    x = rows[torch.arange(len(SMILES))]
    assert torch.allclose(dmpnn(x), mpnn.fingerprint(x.graph), atol=1e-5)
    ours = torch.cat([torch.sigmoid(model(x)[t.name]) for t in tasks], 1)
    assert torch.allclose(ours, mpnn(x.graph), atol=1e-5)


def test_descriptors_are_standardised_with_the_training_statistics():
    torch.manual_seed(0)
    enc = DMPNN(GraphDims(72, 14, 3), hidden=8)
    train = torch.tensor([[1.0, 5.0, float("nan")], [3.0, 5.0, float("nan")], [float("nan"), 5.0, float("nan")]])
    enc.set_descriptor_stats(train)
    assert torch.allclose(enc.descriptor_mean, torch.tensor([2.0, 5.0, 0.0]))
    assert torch.allclose(enc.descriptor_std, torch.tensor([1.0, 1.0, 1.0]))  # constant and never known: 1
    rows = GraphRows(featurize_graphs(["CCO", "CCN"], 1), train[:2].numpy())
    z = enc(rows[torch.arange(2)])
    assert z.shape == (2, 8 + 3) and enc.out_dim == 11
    assert torch.equal(z[:, 8:], torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert "descriptor_mean" in enc.state_dict()  # saved with the weights: predictions use the same statistics


@pytest.mark.parametrize("method", ["hard_sharing", "soft_order", "icnn", "evolving"])
def test_graph_methods_train_every_parameter(rows, method):
    torch.manual_seed(0)
    tasks = [Task("a", "binary"), Task("b", "regression")]
    model, hooks = create_model(method, tasks, {"x": ("graph", 72, 14, 0)}, encoder_hidden=16)
    out = model(rows[torch.arange(5)])
    assert out["a"].shape == (5, 1) and out["b"].shape == (5, 1)
    sum(o.sum() for o in out.values()).backward()
    dmpnn = [m for m in model.modules() if isinstance(m, DMPNN)]
    assert len(dmpnn) == 1 and all(p.grad is not None for p in dmpnn[0].parameters())


@dataclass
class PlainConfig:  # a method's keys without the encoder's (a user's own method, say)
    widths: tuple[int, ...] = (8,)


@pytest.fixture
def plain_method(monkeypatch):
    """A registered method whose config does not declare the D-MPNN keys, removed after the test."""
    from manytask.registry import METHODS, Entry, get_method
    hard = get_method("hard_sharing")
    monkeypatch.setitem(METHODS, "plain_mlp", Entry("plain_mlp", PlainConfig, hard.fn, "an MLP without encoder keys"))
    return "plain_mlp"


def test_only_methods_with_the_encoder_keys_take_graphs(plain_method):
    from manytask.registry import METHODS, get_method
    graph = {"x": ("graph", 72, 14, 0)}
    builtin = ["evolving", "hard_sharing", "icnn", "muir", "rsn2", "soft_order", "stl"]
    for name in builtin:
        check_graph_method(name, get_method(name).config, graph)
    assert set(builtin) <= set(graph_methods()) == set(METHODS) - {plain_method}  # every built-in method
    check_graph_method(plain_method, PlainConfig, {"x": (2048,)})
    with pytest.raises(ConfigError, match=f"method {plain_method} cannot take molecule graphs") as e:
        check_graph_method(plain_method, PlainConfig, graph)
    assert str(e.value).endswith(", ".join(graph_methods()))  # the message lists the methods that take them


def test_stl_gives_every_task_its_own_encoder_and_shares_nothing(rows):
    """stl on a graph input: one D-MPNN per task; task a's loss leaves task b's encoder and MLP without
    gradient, and an optimizer step on it leaves them unchanged."""
    from manytask.methods.stl import SingleTaskGraphNets, SingleTaskNets
    torch.manual_seed(0)
    tasks = [Task("a", "binary"), Task("b", "regression"), Task("c", "binary")]
    model, _ = create_model("stl", tasks, {"x": ("graph", 72, 14, 0)}, widths=(8,), encoder_hidden=16, dropout=0.0)
    assert isinstance(model, SingleTaskGraphNets)
    encoders = [m for m in model.modules() if isinstance(m, DMPNN)]
    assert len(encoders) == 3 and len({id(p) for m in encoders for p in m.parameters()}) == 3 * len(
        list(encoders[0].parameters()))
    x = rows[torch.arange(len(SMILES))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(x)["a"].pow(2).sum().backward()
    for key, net in model.nets.items():
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads) if key == "a" else \
            all(g is None for g in grads), key
    opt.step()
    changed = {k.split(".")[1] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"a"}
    fingerprint, _ = create_model("stl", tasks, {"x": (64,)}, widths=(8,))
    assert isinstance(fingerprint, SingleTaskNets)  # the batched path of other inputs is unchanged
    mixed, _ = create_model("stl", [Task("a", "binary", input="g"), Task("b", "binary", input="t")],
                            {"g": ("graph", 72, 14, 0), "t": (5,)}, widths=(8,), encoder_hidden=16)
    out = mixed({"g": x, "t": torch.randn(len(SMILES), 5)})  # a graph task and a table task side by side
    assert out["a"].shape == out["b"].shape == (len(SMILES), 1)
    assert len([m for m in mixed.nets["b"].modules() if isinstance(m, DMPNN)]) == 0


def test_stl_trains_on_graphs_and_refuses_too_many_encoders(mols, caplog):
    from manytask import load_dataset
    from manytask.nn.dmpnn import GRAPH_ENCODERS_UP_TO
    from manytask.tasks import mean_loss
    from manytask.train import TrainConfig, Trainer
    data = load_dataset("moleculenet", path=str(mols), encoder="dmpnn", workers=1)
    torch.manual_seed(0)
    model, hooks = create_model("stl", data.tasks, data.input_shapes, widths=(16,), dropout=0.0, encoder_hidden=32)
    assert "stl: 2 D-MPNN encoders, one per task" in caplog.text  # the cost, said at build time
    x, y = data.train.inputs["x"][torch.arange(len(data.train.inputs["x"]))], data.train.labels

    def loss():
        model.eval()
        with torch.no_grad():
            return float(mean_loss(data.tasks, model(x), y))
    start = loss()
    Trainer(model, data, TrainConfig(epochs=20, batch_size=16, lr=1e-2, patience=0, progress=False, device="cpu"),
            hooks).fit()
    assert loss() < 0.8 * start, (start, loss())
    many = [Task(f"t{i}", "binary") for i in range(GRAPH_ENCODERS_UP_TO + 1)]
    with pytest.raises(ConfigError, match=f"stl with data.encoder=dmpnn: {len(many)} D-MPNN encoders.*use "
                                          "hard_sharing or icnn"):
        create_model("stl", many, {"x": ("graph", 72, 14, 0)})


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "manytask.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["hard_sharing", "rsn2", "muir"])
def test_train_a_dmpnn_run_from_the_command_line_and_evaluate_it(tmp_path, mols, method):
    r = cli("train", "moleculenet", method, f"data.path={mols}", "data.encoder=dmpnn", "widths=16",
            "encoder_hidden=16", "epochs=1", "progress=false", "data.fractions=0.5,0.25,0.25", "data.workers=1",
            "--out", "runs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (run,) = (tmp_path / "runs").iterdir()
    card = json.loads((run / "config.json").read_text())
    assert card["model"]["input_shapes"] == {"x": ["graph", 72, 14, 0]}
    assert evaluate_run(run, echo=False)[1]  # the weights rebuilt from the run directory give its results
    pr = cli("predict", run, "CCO", "not-a-molecule", cwd=tmp_path)
    assert pr.returncode == 0, pr.stderr
    assert pr.stdout.splitlines()[2] == "not-a-molecule,false,,"


def test_a_method_without_the_encoder_keys_refuses_graphs_in_one_line(tmp_path, mols, plain_method, monkeypatch,
                                                                      capsys):
    from manytask.cli import main
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["train", "moleculenet", plain_method, f"data.path={mols}", "data.encoder=dmpnn", "epochs=1",
              "--out", "runs"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert e.value.code == 2 and len(errors) == 1 and "cannot take molecule graphs" in errors[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["hard_sharing", "muir"])
def test_training_standardises_descriptors_with_the_training_split(mols, method):
    """Before training, every D-MPNN of the model (muir: one per task) standardises its descriptors with the
    training rows."""
    from manytask import load_dataset
    from manytask.train import TrainConfig, Trainer
    data = load_dataset("moleculenet", path=str(mols), encoder="dmpnn", descriptors=True, workers=1)
    torch.manual_seed(0)
    model, hooks = create_model(method, data.tasks, data.input_shapes, widths=(16,), encoder_hidden=16)
    Trainer(model, data, TrainConfig(epochs=1, progress=False, device="cpu"), hooks).fit()
    encoders = [m for m in model.modules() if isinstance(m, DMPNN)]
    assert len(encoders) == (1 if method == "hard_sharing" else len(data.tasks))
    train = data.train.inputs["x"].descriptors
    known = ~torch.isnan(train).any(0)
    for enc in encoders:
        assert torch.allclose(enc.descriptor_mean[known], train[:, known].double().mean(0).float(), rtol=1e-5,
                              atol=1e-5)


def test_hard_sharing_on_graphs_takes_its_graph_recipe_unless_keys_are_given(capsys):
    from manytask.cli import main
    from manytask.runs import method_training, resolve
    plain = resolve("tox21", "hard_sharing", {})
    assert plain.method_cfg.widths == (512,) and plain.train.lr_schedule == "constant"
    graph = resolve("tox21", "hard_sharing", {"data.encoder": "dmpnn"})
    m, t = graph.method_cfg, graph.train
    assert (m.widths, m.dropout, m.encoder_aggregation) == ((300,), 0.0, "mean")
    assert (t.batch_size, t.lr, t.weight_decay, t.epochs, t.patience, t.lr_schedule) == (50, 1e-3, 0.0, 50, 50, "noam")
    given = resolve("tox21", "hard_sharing", {"data.encoder": "dmpnn", "lr": "0.01", "widths": "64",
                                              "method.encoder_aggregation": "norm"})
    assert (given.train.lr, given.method_cfg.widths, given.method_cfg.encoder_aggregation) == (0.01, (64,), "norm")
    assert given.train.batch_size == 50 and given.method_cfg.dropout == 0.0
    assert resolve("tox21", "hard_sharing", {"epochs": "3"}, base=given).train.lr == 0.01  # a saved run keeps its keys
    assert resolve("tox21", "stl", {"data.encoder": "dmpnn"}).train == method_training("stl")  # no graph recipe
    main(["list", "hard_sharing"])
    assert "on graphs (data.encoder=dmpnn) keys not given default to: widths=300 dropout=0.0" in capsys.readouterr().out
