"""IDX reading (MNIST format), digits, tabular CSVs, scikit-learn tables, combined multi-input data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manytask.config import ConfigError, apply
from manytask.data import images, tabular
from manytask.data.base import batches, combine
from manytask.tasks import Task


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    images.write_idx(tmp_path / f"a{suffix}", a)
    np.testing.assert_array_equal(images.read_idx(tmp_path / f"a{suffix}"), a)


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ConfigError, match="bad magic"):
        images.read_idx(tmp_path / "junk")
    images.write_idx(tmp_path / "t", np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ConfigError, match="truncated"):
        images.read_idx(tmp_path / "t")


def write_mnist_dir(d, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    d.mkdir(exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images.write_idx(d / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        images.write_idx(d / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))


def test_mnist_loader_reads_a_folder(tmp_path):
    write_mnist_dir(tmp_path / "m")
    data = images._idx_loader("mnist")(images.IDXConfig(dir=str(tmp_path / "m"), val_fraction=0.2))
    assert data.input_shapes == {"x": (1, 28, 28)} and data.tasks[0].outputs == 10
    assert (data.train.size("x"), data.val.size("x"), data.test.size("x")) == (24, 6, 10)
    assert 0 <= float(data.train.inputs["x"].min()) and float(data.train.inputs["x"].max()) <= 1


def test_mnist_loader_names_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no train-images-idx3-ubyte"):
        images._idx_loader("mnist")(images.IDXConfig(dir=str(tmp_path / "empty")))


def test_digits():
    data = images.load_digits(images.DigitsConfig())
    assert data.input_shapes == {"x": (1, 8, 8)}
    assert sum(data.split(s).size("x") for s in ("train", "val", "test")) == 1797


def test_table_csv(tmp_path):
    p = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    rows = [f"{a:.3f},{b:.3f},{int(a > 0)},{a + b:.3f}" for a, b in rng.normal(size=(40, 2))]
    p.write_text("f1,f2,label,value\n" + "\n".join(rows))
    data = tabular.load_table(tabular.TabularConfig(path=str(p), target=("label", "value")))
    assert [(t.name, t.kind) for t in data.tasks] == [("label", "binary"), ("value", "regression")]
    assert data.input_shapes == {"x": (2,)}
    assert abs(float(data.train.inputs["x"].mean())) < 1e-5  # standardised on train


@pytest.mark.parametrize("content,target,msg", [
    ("a,b\n1,2\n", (), "data.target=COL"),
    ("a,b\n1,2\n", ("c",), "no column"),
    ("a,b\n1,x\n", ("a",), "'x' is not a number"),
    ("a,b,c\n1,,3\n", ("a",), "blank values"),
])
def test_table_errors(tmp_path, content, target, msg):
    p = tmp_path / "t.csv"
    p.write_text(content)
    with pytest.raises(ConfigError, match=msg):
        tabular.load_table(tabular.TabularConfig(path=str(p), target=target))


def test_sklearn_tables_and_combine_batches():
    wine, diab = tabular.sklearn_table("wine"), tabular.sklearn_table("diabetes")
    both = combine(wine, diab)
    assert both.tasks == [Task("wine", "multiclass", 3, "wine"), Task("diabetes", "regression", 1, "diabetes")]
    steps = list(batches(both.train, both.tasks, 32, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert len(steps) == int(np.ceil(diab.train.size("x") / 32))  # the larger input sets the epoch
    for x, y in steps:
        assert x["wine"].shape[0] == y["wine"].shape[0] and x["diabetes"].shape[0] == y["diabetes"].shape[0]


def test_sklearn_tables_is_one_input_and_task_per_table():
    data = tabular.load_sklearn_tables(tabular.SklearnTablesConfig())
    assert [(t.name, t.kind, t.input) for t in data.tasks] == [
        ("wine", "multiclass", "wine"), ("breast_cancer", "binary", "breast_cancer"), ("iris", "multiclass", "iris")]
    assert data.input_shapes == {"wine": (13,), "breast_cancer": (30,), "iris": (4,)}
    assert data.train.size("iris") == 90 and data.test.size("iris") == 30  # 60/20/20 of 150 rows
    again = tabular.load_sklearn_tables(tabular.SklearnTablesConfig(names=("iris",)))
    assert torch.equal(again.train.inputs["iris"], data.train.inputs["iris"])  # each table split on its own


@pytest.mark.parametrize("cfg_cls,values,msg", [
    (tabular.SklearnTablesConfig, {"names": "wine,titanic"}, "names=wine,titanic: choose one of wine, breast_cancer"),
    (tabular.SklearnTablesConfig, {"names": ""}, "names=: need one of wine"),
    (tabular.SklearnTablesConfig, {"fractions": "0.5,0.5,-0.1"}, "fractions=0.5,0.5,-0.1: must be in \\[0, 1\\]"),
    (tabular.TabularConfig, {"split_seed": "-1"}, "split_seed=-1: must be >= 0"),
    (tabular.TabularConfig, {"kind": "ordinal"}, "kind=ordinal: choose one of auto"),
    (tabular.SklearnTableConfig, {"fractions": "0.7,0.3"}, "fractions=0.7,0.3: need .*at least 3 values"),
])
def test_table_config_ranges(cfg_cls, values, msg):
    with pytest.raises(ConfigError, match=msg):
        apply(cfg_cls(), values, "data")


@pytest.mark.parametrize("cfg,msg", [
    (tabular.SklearnTablesConfig(names=("iris", "iris")), "name every table once"),
    (tabular.SklearnTablesConfig(fractions=(0.6, 0.6, 0.2)), "sum to 1"),
])
def test_sklearn_tables_cross_field_errors(cfg, msg):
    with pytest.raises(ConfigError, match=msg):
        tabular.load_sklearn_tables(cfg)
