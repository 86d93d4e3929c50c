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


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        mn.load_any(mn.MoleculeNetConfig(path=str(tmp_path / "nope.csv")))


def test_numeric_columns_are_regression_tasks_standardised_on_the_training_split(tmp_path):
    """A column of 0/1 is a binary task, one of other numbers a regression task: its labels stay in the
    target's units and its shift and scale are the training split's mean and std (blank = missing)."""
    rows = [f"{s},{i % 2},{'' if i == 4 else 10 + 2.5 * i}" for i, s in enumerate(SMILES * 2)]
    p = write_csv(tmp_path / "mixed.csv", rows, "smiles,active,logS")
    data = mn.load_any(mn.MoleculeNetConfig(path=str(p), bits=64))
    active, logs = data.tasks
    assert (active.kind, active.shift, active.scale) == ("binary", 0.0, 1.0) and logs.kind == "regression"
    train = data.train.labels["logS"].numpy()
    train = train[~np.isnan(train)]
    assert train.min() >= 10 and logs.shift == pytest.approx(train.mean(), rel=1e-5)
    assert logs.scale == pytest.approx(train.std() + 1e-8, rel=1e-5)
    assert sum(int(torch.isnan(s.labels["logS"]).sum()) for s in (data.train, data.val, data.test)) == 1


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


# ---- packed fingerprints, parallel featurising, streamed CSV reading ----

MANY = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "not_a_smiles", "", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C",
        "C1CC1", "OC(=O)CCCCCCCCCCCCCCCCC", "c1ccc2ccccc2c1", "Clc1ccc(Cl)cc1", "[Na+].[Cl-]", "C" * 40]


@pytest.mark.parametrize("bits", [13, 64, 2048])
def test_packed_bits_equal_rdkit_bit_for_bit(bits):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator
    from manytask.data.base import PackedRows
    cfg = mn.MoleculeNetConfig(bits=bits, workers=1)
    x, valid = mn.fingerprints(MANY, cfg)
    assert x.shape == (len(MANY), (bits + 7) // 8) and x.dtype == np.uint8
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=bits)
    ref = np.zeros((len(MANY), bits), dtype=np.float32)
    for i, s in enumerate(MANY):
        mol = Chem.MolFromSmiles(s) if s else None
        assert valid[i] == (mol is not None)
        if mol is not None:
            ref[i] = gen.GetFingerprintAsNumPy(mol)
    rows = mn.as_rows(x, cfg)
    assert rows.shape == (len(MANY), bits) and rows.nbytes == len(MANY) * ((bits + 7) // 8)
    dense = torch.from_numpy(ref)
    index = torch.tensor([5, 0, 11, 5])
    for got, want in [(rows[:], dense), (rows[2:7], dense[2:7]), (rows[index], dense[index]), (rows[3], dense[3]),
                      (rows[np.arange(12) % 3 == 0], dense[::3]), (rows[:, :5], dense[:, :5]),
                      (rows[1, 4], dense[1, 4]), (rows.rows(index)[:], dense[index]), (rows.dense(), dense)]:
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(PackedRows.pack(ref).data, torch.from_numpy(x))
    assert np.array_equal(np.unpackbits(x, axis=1, count=bits), ref)  # np.packbits' layout


def test_counts_are_uint8_and_saturate_at_255_with_a_warning(caplog):
    cfg = mn.MoleculeNetConfig(bits=64, counts=True, workers=1)
    big = "C" * 300  # 300 carbons: a count above 255
    with caplog.at_level("WARNING", logger="manytask"):
        x, valid = mn.fingerprints(["c1ccccc1O", big], cfg)
    assert x.dtype == np.uint8 and x.shape == (2, 64) and valid.all()
    assert x[1].max() == 255 and "1 molecule(s) have a Morgan count above 255" in caplog.text
    dense, _ = mn.featurize(["c1ccccc1O"], cfg)
    assert torch.equal(mn.as_rows(x, cfg)[:1], torch.from_numpy(dense))


@pytest.mark.parametrize("counts", [False, True])
def test_parallel_featurising_equals_serial(monkeypatch, counts):
    monkeypatch.setattr(mn, "CHUNK", 5)  # 60 molecules: 12 chunks over 2 processes
    smiles = MANY * 5
    serial = mn.fingerprints(smiles, mn.MoleculeNetConfig(bits=256, counts=counts, workers=1))
    parallel = mn.fingerprints(smiles, mn.MoleculeNetConfig(bits=256, counts=counts, workers=2))
    assert np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])
    assert serial[1].sum() == 5 * 10
    readable = [s for s, ok in zip(smiles, serial[1]) if ok]
    parts = mn.scaffold_split_indices(readable, workers=2), mn.scaffold_split_indices(readable, workers=1)
    assert all(np.array_equal(a, b) for a, b in zip(*parts))


def test_parallel_load_equals_serial_load(csv_file, monkeypatch):
    monkeypatch.setattr(mn, "CHUNK", 3)
    loads = [mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), bits=64, cache=False, split=split, workers=w,
                                              fractions=(0.5, 0.25, 0.25)))
             for split in ("random", "scaffold") for w in (1, 2)]
    for a, b in (loads[:2], loads[2:]):
        assert a.meta["smiles"] == b.meta["smiles"]
        for s in ("train", "val", "test"):
            assert torch.equal(a.split(s).inputs["x"][:], b.split(s).inputs["x"][:])


def test_fingerprints_stay_packed_through_splits_batches_and_hide_labels(csv_file):
    from manytask.data.base import PackedRows, Split, batches, hide_labels
    from manytask.train import predict_split
    data = mn.load_any(mn.MoleculeNetConfig(path=str(csv_file), bits=2048, fractions=(0.5, 0.25, 0.25)))
    x = data.train.inputs["x"]
    assert isinstance(x, PackedRows) and x.nbytes == len(x) * 256 and data.input_shapes == {"x": (2048,)}
    dense = {"x": x[:]}
    gen_a, gen_b = (torch.Generator().manual_seed(3) for _ in range(2))
    plain = Split(dense, data.train.labels)
    pairs = zip(batches(data.train, data.tasks, 4, True, gen_a), batches(plain, data.tasks, 4, True, gen_b))
    for (xa, _), (xb, _) in pairs:
        assert torch.equal(xa["x"], xb["x"]) and xa["x"].dtype == torch.float32
    import manytask
    model, _ = manytask.create_model("hard_sharing", data.tasks, data.input_shapes, widths=(8,))
    packed_out, dense_out = predict_split(model, data.train, data.tasks, 2), predict_split(model, plain, data.tasks, 2)
    assert all(torch.equal(packed_out[t.name], dense_out[t.name]) for t in data.tasks)
    semi = hide_labels(data, 2, 1, seed=0)
    assert isinstance(semi.train.inputs["x"], PackedRows) and semi.train.size("x") == 3
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:3]  # hide_labels' seeded order
    assert torch.equal(semi.train.inputs["x"][:], dense["x"][order])


def test_any_other_tensor_operation_sees_the_unpacked_float32_tensor():
    from manytask.data.base import PackedRows
    bits = np.random.default_rng(0).random((9, 21)) < 0.3
    x, dense = PackedRows.pack(bits), torch.as_tensor(bits, dtype=torch.float32)
    layer = torch.nn.Linear(21, 3)
    assert torch.equal(layer(x), layer(dense)) and torch.equal(x, dense) and bool(torch.isfinite(x).all())
    assert float(x.sum()) == bits.sum() and torch.equal(x.flatten(1), dense) and np.array_equal(np.asarray(x), bits)
    assert torch.equal(torch.cat([x, dense]), torch.cat([dense, dense]))
    assert isinstance(x.to("cpu"), PackedRows) and x.to(torch.float64).dtype == torch.float64
    assert x.shape == (9, 21) and x.dtype == torch.float32 and len(x) == 9 and x.nbytes == 9 * 3


def test_streamed_rows_split_lines_as_the_csv_module_does(tmp_path):
    import csv
    import io
    from manytask.data.base import read_csv_rows
    text = 'smiles,A\r\nCCO,1\r\r\n"C\nC",0\rCCN,\n\n c1ccccc1 ,1'
    (tmp_path / "t.csv").write_bytes(text.encode())
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if r]
    header, got, lines = read_csv_rows(tmp_path / "t.csv")
    assert [header, *got] == rows and lines == [2, 4, 6, 8]  # the line where each row starts
    smiles, names, labels = mn.read_csv(tmp_path / "t.csv", "smiles", ())
    assert smiles == ["CCO", "C\nC", "CCN", "c1ccccc1"] and names == ["A"]
    assert labels.dtype == np.float32 and np.array_equal(labels[:, 0], [1, 0, np.nan, 1], equal_nan=True)


def test_labels_are_parsed_in_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(mn, "LABEL_BLOCK", 4)
    rows = [f"{SMILES[i % 12]},{i % 2},{'' if i % 3 else '1.0'}" for i in range(10)]
    smiles, names, labels = mn.read_csv(write_csv(tmp_path / "m.csv", rows), "smiles", ())
    assert len(smiles) == 10 and labels.shape == (10, 2)
    assert labels[:, 0].tolist() == [i % 2 for i in range(10)]
    assert np.array_equal(labels[:, 1], [1.0 if i % 3 == 0 else np.nan for i in range(10)], equal_nan=True)


def test_a_molecule_regression_csv_trains_and_predicts_in_its_units(tmp_path, capsys):
    """End to end through the command line: a SMILES CSV with one numeric column (a logP-like target far from
    0 and 1) trains as a regression task, its table is in the target's units, and `manytask predict` answers
    in them too."""
    from manytask.cli import main
    rows = [f"{s},{100 + 10 * len(s) + i % 3}" for i, s in enumerate(SMILES * 4)]
    p = write_csv(tmp_path / "reg.csv", rows, "smiles,target")
    main(["train", "moleculenet", "hard_sharing", f"data.path={p}", "data.bits=64", "epochs=30", "widths=16",
          "progress=false", "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["target", "rmse"] for line in out.splitlines()), out
    run = next((tmp_path / "runs").iterdir())
    main(["predict", str(run), "CCO", "c1ccc2ccccc2c1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "smiles,valid,target"
    values = [float(line.split(",")[2]) for line in lines[1:]]
    assert all(100 < v < 300 for v in values), values  # in the target's units, not standardised


def test_a_numeric_column_of_few_values_is_read_as_regression_with_a_warning(tmp_path, caplog):
    """0/1/2 is not a binary label: the column is a regression task, and the log says what to do if it is a class."""
    p = write_csv(tmp_path / "three.csv", [f"{s},{i % 3}" for i, s in enumerate(SMILES * 2)], "smiles,cls")
    caplog.set_level("WARNING", logger="manytask")
    (task,) = mn.load_any(mn.MoleculeNetConfig(path=str(p), bits=64)).tasks
    assert task.kind == "regression" and "cls (0, 1, 2)" in caplog.text and "data.tasks=" in caplog.text
