"""IDX reading (MNIST format), digits, tabular CSVs, scikit-learn tables, combined multi-input data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manytask.cli import main as cli_main
from manytask.config import ConfigError, apply
from manytask.data import images, tabular
from manytask.data.base import batches, combine, random_split_indices
from manytask.tasks import Task
from manytask.train import evaluate_split


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
    assert both.tasks == [Task("wine", "multiclass", 3, "wine"), Task("diabetes", "regression", 1, "diabetes",
                                                                       shift=diab.tasks[0].shift, scale=diab.tasks[0].scale)]
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


# ---- a CSV without a header row, the units of regression metrics, the default split ----------------------

def numbers_csv(path, n=50, header: str | None = None, seed=0):
    """n rows of three features and a regression target 100 + 20 (f1 - f2) + noise (column 4); a header
    line first when given. Returns the values (n, 4) as written (4 decimals)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    values = np.round(np.column_stack([x, 100 + 20 * (x[:, 0] - x[:, 1]) + rng.normal(size=n)]), 4)
    path.write_text((header + "\n" if header else "") + "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in values))
    return values


def test_headerless_csv_is_detected_and_said(tmp_path, caplog):
    values = numbers_csv(tmp_path / "nh.csv")
    with caplog.at_level("INFO", logger="manytask"):
        data = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "nh.csv"), target=("4",)))
    (said,) = [r.getMessage() for r in caplog.records if "header" in r.getMessage()]
    assert said.startswith("nh.csv has no header row: its first row (") and "numbered 1..4" in said
    assert "\n" not in said and "data.header=true" in said
    assert [t.name for t in data.tasks] == ["4"] and data.input_shapes == {"x": (3,)}
    assert sum(data.split(s).size("x") for s in ("train", "val", "test")) == len(values)  # the first row is data
    labels = torch.cat([data.split(k).labels["4"] for k in ("train", "val", "test")]).numpy()  # in the file's units
    np.testing.assert_allclose(np.sort(labels), np.sort(values[:, 3]), atol=1e-3)  # column 4, counted from 1


def test_a_header_row_is_read_as_names_and_not_said(tmp_path, caplog):
    numbers_csv(tmp_path / "h.csv", header="a,b,c,y")
    with caplog.at_level("INFO", logger="manytask"):
        data = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "h.csv"), target=("y",)))
    assert [t.name for t in data.tasks] == ["y"] and data.train.size("x") == 40
    assert not [r for r in caplog.records if "header" in r.getMessage()]


@pytest.mark.parametrize("first", ["1,2,3,4", "1.5,,-2e3,nan", "  7 , 0, 0, 0"])
def test_numbers_only_first_row_means_no_header(first):
    assert tabular.headerless(first.split(","))


@pytest.mark.parametrize("first", ["a,b,c,y", "1,2,3,y", ",,,", "x1,2"])
def test_a_named_first_row_is_a_header(first):
    assert not tabular.headerless(first.split(","))


def test_header_setting_overrides_the_guess(tmp_path):
    values = numbers_csv(tmp_path / "nh.csv", n=20)
    forced = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "nh.csv"), target=("4",), header="false"))
    assert sum(forced.split(s).size("x") for s in ("train", "val", "test")) == 20
    first = ",".join(f"{v:.4f}" for v in values[0])  # data.header=true: the first row names the columns
    named = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "nh.csv"), target=(first.split(",")[3],),
                                                     header="true"))
    assert named.tasks[0].name == f"{values[0, 3]:.4f}"
    assert sum(named.split(s).size("x") for s in ("train", "val", "test")) == 19
    numbers_csv(tmp_path / "h.csv", n=20, header="a,b,c,y")  # header=false on a named first row: line 1 is data
    with pytest.raises(ConfigError, match="h.csv, line 1, column '1': 'a' is not a number"):
        tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "h.csv"), target=("4",), header="false"))


@pytest.mark.parametrize("target,msg", [
    (("y",), r"no column\(s\) \['y'\]; its columns are 1, 2, 3, 4 \(numbered from 1: the file has no header row"),
    (("0",), r"no column\(s\) \['0'\]; its columns are 1, 2, 3, 4"),
    ((), r"data.target=COL\[,COL\]; columns: 1, 2, 3, 4 \(numbered from 1"),
])
def test_a_target_that_names_no_column_lists_the_numbered_columns(tmp_path, target, msg):
    numbers_csv(tmp_path / "nh.csv", n=20)
    with pytest.raises(ConfigError, match=msg):
        tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "nh.csv"), target=target))


def test_headerless_rows_of_other_lengths_are_named(tmp_path):
    (tmp_path / "r.csv").write_text("1,2,3\n4,5,6\n\n7,8\n")
    with pytest.raises(ConfigError, match="r.csv, line 4: 2 fields where the first row has 3"):
        tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "r.csv"), target=("3",)))


def test_table_default_split_is_80_10_10(tmp_path):
    numbers_csv(tmp_path / "t.csv", n=200, header="a,b,c,y")
    data = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "t.csv"), target=("y",)))
    assert [data.split(s).size("x") for s in ("train", "val", "test")] == [160, 20, 20]
    assert tabular.TabularConfig().fractions == (0.8, 0.1, 0.1)


def test_reported_rmse_is_in_the_target_units(tmp_path, caplog):
    """What the loader says of the units holds: evaluate_split's RMSE equals the RMSE of the predictions in the
    file's units, computed here by hand from the model's standardised output and the training mean and std,
    and nrmse is that RMSE divided by the std; the loss stays the MSE of the standardised target."""
    values = numbers_csv(tmp_path / "nh.csv", n=60)
    with caplog.at_level("INFO", logger="manytask"):
        data = tabular.load_table(tabular.TabularConfig(path=str(tmp_path / "nh.csv"), target=("4",)))
    train, _, test = random_split_indices(60, (0.8, 0.1, 0.1), 0)
    m, s = values[train, 3].mean(), values[train, 3].std()
    np.testing.assert_allclose((data.tasks[0].shift, data.tasks[0].scale), (m, s), rtol=1e-5)
    (said,) = [r.getMessage() for r in caplog.records if "units" in r.getMessage()]
    assert "MSE and RMSE of 4 are in the target's own units" in said and f"std {s:.4g}" in said

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)

        def forward(self, x):
            return {"4": self.lin(x)}

    torch.manual_seed(0)
    model = Linear()
    table, loss = evaluate_split(model, data.test, data.tasks)
    xs = (values[:, :3] - values[train, :3].mean(0)) / (values[train, :3].std(0) + 1e-8)  # the loader's features
    with torch.no_grad():
        out = model.lin(torch.as_tensor(xs[test], dtype=torch.float32))[:, 0].double().numpy()
    by_hand = float(np.sqrt(np.mean((out * s + m - values[test, 3]) ** 2)))
    assert by_hand > 10  # an untrained model: far off in target units
    assert table["4"]["rmse"] == pytest.approx(by_hand, rel=1e-4)
    assert table["4"]["nrmse"] == pytest.approx(by_hand / s, rel=1e-4)
    assert loss == pytest.approx(np.mean((out - (values[test, 3] - m) / s) ** 2), rel=1e-4)  # standardised MSE


def test_end_to_end_on_a_headerless_csv(tmp_path, monkeypatch, capsys, caplog):
    """manytask train table ... on a CSV without a header: one line says so, one line says the units, the task
    is column 4; a target named like a header column is a one-line error listing the numbered columns."""
    numbers_csv(tmp_path / "nh.csv", n=40)
    monkeypatch.chdir(tmp_path)
    args = ["train", "table", "hard_sharing", "data.path=nh.csv", "epochs=1", "progress=false", "widths=8"]
    with caplog.at_level("INFO", logger="manytask"):
        cli_main([*args, "data.target=4", "--out", "runs"])
    said = [r.getMessage() for r in caplog.records]
    assert sum("nh.csv has no header row" in ln for ln in said) == 1
    assert sum("MSE and RMSE of 4 are in the target's own units" in ln for ln in said) == 1
    (row,) = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("4 ")]
    assert row[1] == "rmse" and len(row) == 5
    assert len(list((tmp_path / "runs").iterdir())) == 1
    with pytest.raises(SystemExit) as stop:
        cli_main([*args, "data.target=y", "--out", "runs2"])
    assert stop.value.code == 2 and "its columns are 1, 2, 3, 4 (numbered from 1" in capsys.readouterr().err
    assert not (tmp_path / "runs2").exists()
