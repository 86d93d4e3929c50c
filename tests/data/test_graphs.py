"""Molecule graphs (data.encoder=dmpnn): chemprop's featurisation, the cache, batches by row index."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manytask import load_dataset
from manytask.config import ConfigError
from manytask.data import graphs
from manytask.data.base import batches
from manytask.data.cache import cache_dir, read_arrays
from manytask.data.moleculenet import MoleculeNetConfig, predict_features

from .test_moleculenet import SMILES, write_csv


@pytest.fixture
def csv_file(tmp_path):
    return write_csv(tmp_path / "mols.csv", [f"{s},{i % 2},{(i // 2) % 2}" for i, s in enumerate(SMILES * 2)])


def chemprop_graph(smiles: str):
    from chemprop.featurizers import SimpleMoleculeMolGraphFeaturizer
    from chemprop.utils import make_mol
    return SimpleMoleculeMolGraphFeaturizer()(make_mol(smiles, keep_h=False, add_h=False))


def test_graphs_are_chemprops_molgraphs_and_invalid_smiles_are_dropped(csv_file, caplog):
    data = load_dataset("moleculenet", path=str(csv_file), encoder="dmpnn", workers=1, fractions=(0.5, 0.25, 0.25))
    assert "dropped 2 of 24" in caplog.text  # "not_a_smiles" twice
    assert data.input_shapes == {"x": ("graph", 72, 14, 0)}
    assert graphs.graph_dims(data.input_shapes["x"]) == graphs.GraphDims(72, 14, 0)
    assert graphs.graph_dims((2048,)) is None
    rows, smiles = data.train.inputs["x"], data.meta["smiles"]["train"]
    assert len(rows) == rows.shape[0] == len(smiles) == 11
    for g, s in zip(rows.graphs, smiles):
        ref = chemprop_graph(s)
        np.testing.assert_array_equal(g.V, ref.V)
        np.testing.assert_array_equal(g.E, ref.E.astype(np.float32))
        np.testing.assert_array_equal(g.edge_index, ref.edge_index)
        np.testing.assert_array_equal(g.rev_edge_index, ref.rev_edge_index)


def test_graphs_are_cached_and_read_back_without_featurising(csv_file, monkeypatch, tmp_path):
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path / "cache"))  # empty: other tests may have cached this file
    first = load_dataset("moleculenet", path=str(csv_file), encoder="dmpnn", workers=1)
    (entry,) = cache_dir().glob("graphs-*.npz")
    assert f"-v{graphs.FORMAT}.npz" in entry.name
    arrays = read_arrays(entry, graphs.graph_arrays_shapes(24))
    assert arrays["V"].dtype == np.float32 and arrays["atoms"][-1] == len(arrays["V"])
    monkeypatch.setattr(graphs, "featurize_graphs", lambda *a: (_ for _ in ()).throw(AssertionError("featurised again")))
    again = load_dataset("moleculenet", path=str(csv_file), encoder="dmpnn", workers=1)
    for a, b in zip(first.train.inputs["x"].graphs, again.train.inputs["x"].graphs):
        np.testing.assert_array_equal(a.V, b.V)
        np.testing.assert_array_equal(a.edge_index, b.edge_index)


def test_parallel_featurising_equals_serial(monkeypatch):
    from manytask.data import moleculenet
    monkeypatch.setattr(moleculenet, "CHUNK", 5)
    serial, parallel = graphs.featurize_graphs(SMILES * 2, 1), graphs.featurize_graphs(SMILES * 2, 2)
    for k in serial:
        np.testing.assert_array_equal(serial[k], parallel[k])
    assert serial["valid"].sum() == 22 and serial["atoms"][-1] == len(serial["V"])


def test_batch_by_index_is_chemprops_batch_of_those_molecules(csv_file):
    from chemprop.data import BatchMolGraph
    data = load_dataset("moleculenet", path=str(csv_file), encoder="dmpnn", workers=1)
    rows = data.train.inputs["x"]
    index = torch.tensor([4, 0, 7])
    batch = rows[index]
    assert isinstance(batch, graphs.GraphBatch) and len(batch) == batch.shape[0] == 3
    ref = BatchMolGraph([rows.graphs[i] for i in index.tolist()])
    for k in ("V", "E", "edge_index", "rev_edge_index", "batch"):
        assert torch.equal(getattr(batch.graph, k), getattr(ref, k))
    moved = batch.to("cpu")
    assert isinstance(moved, graphs.GraphBatch) and moved is not batch and torch.equal(moved.graph.V, batch.graph.V)
    assert len(rows[1:3]) == 2 and len(rows[np.array([1])]) == 1
    mask = torch.zeros(len(rows), dtype=torch.bool)
    mask[[1, 2]] = True
    sub = rows.rows(mask)
    assert len(sub) == 2 and sub.graphs[0] is rows.graphs[1]
    seen = 0
    for x, y in batches(data.train, data.tasks, 4, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert isinstance(x["x"], graphs.GraphBatch) and len(x["x"]) == len(y["A"])
        seen += len(x["x"])
    assert seen == len(rows)


def test_predict_features_give_one_graph_per_input_and_flag_invalid():
    x, valid = predict_features(["CCO", "not_a_smiles", "c1ccccc1"], MoleculeNetConfig(encoder="dmpnn", workers=1))
    assert isinstance(x, graphs.GraphBatch) and len(x) == 3
    assert valid.tolist() == [True, False, True]
    assert int((x.graph.batch == 1).sum()) == 1 and not x.graph.V[x.graph.batch == 1].any()  # one blank atom


def test_descriptors_are_rdkits_and_need_graphs(csv_file):
    from rdkit import Chem
    from rdkit.Chem import Descriptors
    d = graphs.featurize_descriptors(["CCO", "not_a_smiles"], workers=1)
    names = graphs.descriptor_names()
    assert d.shape == (2, len(Descriptors.descList)) and d.dtype == np.float32
    assert d[0, names.index("MolWt")] == pytest.approx(Descriptors.MolWt(Chem.MolFromSmiles("CCO")), rel=1e-6)
    assert np.isnan(d[1]).all()
    data = load_dataset("moleculenet", path=str(csv_file), encoder="dmpnn", descriptors=True, workers=1)
    assert data.input_shapes["x"] == ("graph", 72, 14, len(names))
    assert data.train.inputs["x"][torch.arange(3)].descriptors.shape == (3, len(names))
    with pytest.raises(ConfigError, match="data.descriptors=true .* data.encoder=dmpnn"):
        load_dataset("moleculenet", path=str(csv_file), descriptors=True)


def test_cache_shapes_may_leave_a_length_open(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros((5, 3)))
    assert read_arrays(path, {"a": (None, 3)})["a"].shape == (5, 3)
    with pytest.raises(ValueError, match="expected"):
        read_arrays(path, {"a": (None, 4)})
    with pytest.raises(ValueError, match="expected"):
        read_arrays(path, {"a": (None,)})
