"""SMILES CSVs: fingerprints, dropped invalid SMILES, missing labels, cache, splits, clear errors."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from manytask import load_dataset
from manytask.config import ConfigError
from manytask.data import moleculenet as mn
from manytask.data.cache import cache_dir

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "not_a_smiles", "CCN", "c1ccncc1", "CCCC", "c1ccccc1CC",
          "OCC(O)CO", "c1ccc2ccccc2c1", "CC(C)O", "c1ccccc1N"]


def write_csv(path, rows, header="smiles,A,B"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def csv_file(tmp_path):
    rows = [f"{s},{i % 2},{'' if i % 3 == 0 else (i // 2) % 2}" for i, s in enumerate(SMILES)]
    return write_csv(tmp_path / "mols.csv", rows)


def test_loads_fingerprints_drops_invalid_and_keeps_missing(csv_file, caplog):
    cfg = mn.MoleculeNetConfig(path=str(csv_file), bits=256, fractions=(0.5, 0.25, 0.25))
    with caplog.at_level("WARNING", logger="manytask"):
        data = mn.load_any(cfg)
    assert "dropped 1 of 12" in caplog.text
    assert [t.name for t in data.tasks] == ["A", "B"]
    n = sum(data.split(s).size("x") for s in ("train", "val", "test"))
    assert n == 11 and data.input_shapes == {"x": (256,)}
    x = data.train.inputs["x"]
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0} and x.sum() > 0
    labels_b = torch.cat([data.split(s).labels["B"] for s in ("train", "val", "test")])
    assert torch.isnan(labels_b).sum() == 3  # rows 0, 6, 9 (row 3 is the invalid SMILES)


def test_fingerprints_match_rdkit(csv_file):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator
    x, valid = mn.featurize(["c1ccccc1O", "xx"], mn.MoleculeNetConfig(radius=3, bits=512, counts=True))
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=512)
    assert valid.tolist() == [True, False]
    np.testing.assert_array_equal(x[0], gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles("c1ccccc1O")))
    assert not x[1].any()


def test_features_are_cached_by_file_and_settings(csv_file):
    cfg = mn.MoleculeNetConfig(path=str(csv_file), bits=128, fractions=(0.5, 0.25, 0.25))
    before = set(cache_dir().glob("morgan-*.npz"))
    a = mn.load_any(cfg)
    made = set(cache_dir().glob("morgan-*.npz")) - before
    assert len(made) == 1
    b = mn.load_any(cfg)  # from the cache
    assert torch.equal(a.train.inputs["x"], b.train.inputs["x"])
    mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), bits=64, fractions=(0.5, 0.25, 0.25)))
    assert len(set(cache_dir().glob("morgan-*.npz")) - before) == 2


def test_gzipped_csv_and_task_selection(tmp_path, csv_file):
    gz = tmp_path / "mols.csv.gz"
    with gzip.open(gz, "wt") as f:
        f.write(csv_file.read_text())
    data = mn.load_any(mn.MoleculeNetConfig(path=str(gz), tasks=("B",), bits=64, fractions=(0.5, 0.25, 0.25)))
    assert [t.name for t in data.tasks] == ["B"]


@pytest.mark.parametrize("content,msg", [
    ("name,A\nCCO,1\n", "no SMILES column 'smiles'; its columns are name, A"),
    ("smiles,A\nCCO,1,2\n", "line 2: 3 fields where the header has 2"),
    ("smiles,A\nCCO,yes\n", "'yes' is not a number"),
    ("", "is empty"),
])
def test_malformed_csv_gives_one_line_error(tmp_path, content, msg):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(ConfigError, match=msg) as e:
        mn.load_any(mn.MoleculeNetConfig(path=str(p)))
    assert "\n" not in str(e.value)


def test_missing_file_and_non_binary_column(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        mn.load_any(mn.MoleculeNetConfig(path=str(tmp_path / "nope.csv")))
    p = write_csv(tmp_path / "reg.csv", [f"{s},{i * 0.5}" for i, s in enumerate(SMILES[:6])], "smiles,A")
    with pytest.raises(ConfigError, match="values other than 0/1"):
        mn.load_any(mn.MoleculeNetConfig(path=str(p)))


def test_random_split_is_seeded_and_disjoint(csv_file):
    a = mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), split_seed=1, bits=64))
    b = mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), split_seed=1, bits=64))
    c = mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), split_seed=2, bits=64))
    sm = lambda d: [d.meta["smiles"][s] for s in ("train", "val", "test")]  # noqa: E731
    assert sm(a) == sm(b) and sm(a) != sm(c)
    flat = sum(sm(a), [])
    assert len(flat) == len(set(flat)) == 11


def test_scaffold_split_keeps_scaffolds_together():
    from rdkit.Chem.Scaffolds import MurckoScaffold
    smiles = ["c1ccccc1C", "c1ccccc1CC", "c1ccccc1O", "c1ccncc1C", "c1ccncc1O", "CCO", "CCC", "C1CCCCC1C",
              "c1ccc2ccccc2c1", "c1ccc2ccccc2c1C"]
    parts = mn.scaffold_split_indices(smiles, (0.6, 0.2, 0.2))
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(smiles)))
    where = {i: k for k, p in enumerate(parts) for i in p}
    scaf = [MurckoScaffold.MurckoScaffoldSmiles(smiles=s, includeChirality=False) for s in smiles]
    for i in range(len(smiles)):
        for j in range(len(smiles)):
            if scaf[i] == scaf[j]:
                assert where[i] == where[j]
    # the largest group (benzene, 3 molecules) goes to train first
    assert {0, 1, 2} <= set(parts[0].tolist())


def test_fake_tasks_are_correlated_with_each_other_not_with_data(csv_file):
    from manytask.data.synthetic import fake_correlated_labels
    y = fake_correlated_labels(4000, 4, rho=0.8, rate=0.2, seed=0)
    c = np.corrcoef(y.T)
    assert c[np.triu_indices(4, 1)].min() > 0.3
    assert abs(y.mean() - 0.2) < 0.01
    data = mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), fake_tasks=3, bits=64))
    assert [t.name for t in data.tasks] == ["A", "B", "fake0", "fake1", "fake2"]


def test_embedded_tox21():
    data = mn.load_tox21(mn.MoleculeNetConfig(bits=64))
    assert len(data.tasks) == 12 and data.tasks[0].name == "NR-AR"
    n = sum(data.split(s).size("x") for s in ("train", "val", "test"))
    assert n == 7831 - data.meta["dropped"]
    assert data.train.size("x") == round(0.8 * n)


@pytest.mark.parametrize("key,value,msg", [
    ("bits", "0", "bits=0: must be >= 1"),
    ("radius", "-1", "radius=-1: must be >= 0"),
    ("split", "cluster", "choose one of random, scaffold"),
    ("fake_rate", "1", "fake_rate=1.0: must be in (0, 1)"),
    ("fractions", "0.8,0.2", "fractions=0.8,0.2: need in [0, 1], at least 3 values"),
])
def test_settings_out_of_range_name_the_valid_values(csv_file, key, value, msg):
    with pytest.raises(ConfigError) as e:
        load_dataset("moleculenet", path=str(csv_file), **{key: value})
    assert msg in str(e.value)


@pytest.mark.parametrize("split", ["random", "scaffold"])
def test_fractions_must_sum_to_one_for_either_split(csv_file, split):
    with pytest.raises(ConfigError, match="data.fractions=0.5,0.5,0.5: need three fractions"):
        mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), split=split, fractions=(0.5, 0.5, 0.5), bits=64))
