"""Bad data files are one-line ConfigErrors at load time that name the file (and the line and column where
one applies); a UTF-8 byte-order mark, blank lines, gzip without a .gz name and NaN targets load."""
from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
import torch

from manytask.config import ConfigError
from manytask.data import images, moleculenet as mn, tabular
from manytask.data.base import read_csv_rows

SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "c1ccncc1", "CCCC", "c1ccccc1CC", "OCC(O)CO",
          "c1ccc2ccccc2c1", "CC(C)O"]


def table_text(n=20, value=None, row=3, column=0, target_value=None):
    """A CSV "f1,f2,y" of n rows; `value` replaces f{column+1} of data row `row`, `target_value` its y."""
    rng = np.random.default_rng(0)
    lines = ["f1,f2,y"]
    for i, (a, b) in enumerate(rng.normal(size=(n, 2))):
        cells = [f"{a:.3f}", f"{b:.3f}", f"{a + b:.3f}"]
        if i == row and value is not None:
            cells[column] = value
        if i == row and target_value is not None:
            cells[2] = target_value
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def load_table(path, **kw):
    return tabular.load_table(tabular.TabularConfig(path=str(path), target=kw.pop("target", ("y",)), **kw))


def load_molecules(path, **kw):
    return mn.load_any(mn.MoleculeNetConfig(path=str(path), bits=64, fractions=(0.6, 0.2, 0.2), **kw))


def raises_one_line(fn, *args, match, **kw) -> str:
    with pytest.raises(ConfigError, match=match) as e:
        fn(*args, **kw)
    assert "\n" not in str(e.value) and "\r" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("value,msg", [
    ("inf", r"line 5, column 'f1': 'inf' is beyond the float32 range"),
    ("-Infinity", r"line 5, column 'f1': '-Infinity' is beyond the float32 range"),
    ("1e300", r"line 5, column 'f1': '1e300' is beyond the float32 range"),
    ("nan", r"line 5, column 'f1': 'nan' \(not a number\)"),
    ("", r"line 5, column 'f1': blank value"),
    ("abc", r"line 5, column 'f1': 'abc' is not a number"),
])
def test_a_bad_feature_names_file_line_and_column(tmp_path, value, msg):
    path = tmp_path / "t.csv"
    path.write_text(table_text(value=value))
    assert str(path) in raises_one_line(load_table, path, match=msg)


@pytest.mark.parametrize("value,msg", [
    ("inf", r"line 5, column 'y': 'inf' is beyond the float32 range"),
    ("-1e39", r"line 5, column 'y': '-1e39' is beyond the float32 range"),
])
def test_a_non_finite_target_is_an_error(tmp_path, value, msg):
    path = tmp_path / "t.csv"
    path.write_text(table_text(target_value=value))
    raises_one_line(load_table, path, match=msg)


@pytest.mark.parametrize("value", ["", "nan", "NaN"])
def test_a_blank_or_nan_target_is_a_missing_label(tmp_path, value):
    path = tmp_path / "t.csv"
    path.write_text(table_text(target_value=value))
    data = load_table(path)
    labels = torch.cat([data.split(s).labels["y"] for s in ("train", "val", "test")])
    assert int(torch.isnan(labels).sum()) == 1


def test_values_too_large_to_standardise(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(table_text(value="1e30"))  # a float32, but its square overflows
    raises_one_line(load_table, path, match="feature column 'f1' has values too large to standardise")
    data = load_table(path, standardize=False)
    assert all(torch.isfinite(data.split(s).inputs["x"]).all() for s in ("train", "val", "test"))
    path.write_text(table_text(target_value="3e38"))
    raises_one_line(load_table, path, match="target column 'y' has values too large to standardise")


def test_an_all_missing_target_column_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("f1,y,z\n" + "".join(f"{i},{i % 2},\n" for i in range(20)))
    raises_one_line(load_table, path, target=("y", "z"), match="target column 'z' has no values")


def test_a_constant_or_too_large_regression_target_is_an_error(tmp_path):
    """One value on every labelled training row (standardising it would divide by ~0), a table's and a molecule
    file's; and a molecule target too large for float32, whose fix names no table key."""
    path = tmp_path / "t.csv"
    path.write_text("f1,y\n" + "".join(f"{i},7.5\n" for i in range(20)))
    raises_one_line(load_table, path, kind="regression", match="'y' has one value \\(7.5\\) on every labelled training row")
    mols = tmp_path / "m.csv"
    mols.write_text("smiles,y\n" + "".join(f"{s},2.5\n" for s in ["CCO", "CCN", "CCC", "c1ccccc1", "CCCl", "OCCO"] * 2))
    raises_one_line(load_molecules, mols, match="'y' has one value \\(2.5\\)")
    mols.write_text("smiles,y\n" + "".join(f"{s},{v}\n" for s, v in zip(["CCO", "CCN", "CCC", "c1ccccc1", "CCCl", "OCCO"] * 2,
                                                                     ["1e30", "-2e30", "3", "1e30", "5", "-1e30"] * 2)))
    message = raises_one_line(load_molecules, mols, match="too large to standardise in float32; rescale it")
    assert "standardize_target" not in message  # a table's key, which molecule files do not have


@pytest.mark.parametrize("kind,value,msg", [
    ("binary", "2", "is binary but holds \\[2.0\\]"),
    ("multiclass", "2.5", "is multiclass but holds values other than the integers 0..999"),
    ("multiclass", "-1", "is multiclass but holds values other than the integers"),
])
def test_labels_must_fit_the_kind(tmp_path, kind, value, msg):
    path = tmp_path / "t.csv"
    path.write_text("f1,y\n" + "".join(f"{i},{value if i == 4 else i % 2}\n" for i in range(20)))
    raises_one_line(load_table, path, kind=kind, match=msg)


@pytest.mark.parametrize("rows", [1, 3])
def test_too_few_rows_for_the_split(tmp_path, rows):
    path = tmp_path / "t.csv"
    path.write_text(table_text(n=rows))
    raises_one_line(load_table, path, match=f"t.csv: {rows} rows leave the (val|train) split empty")


def test_too_few_molecules_for_the_split(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("smiles,A\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(SMILES[:3])))
    raises_one_line(load_molecules, path, match="m.csv: 3 rows leave the (val|test) split empty")


def gz_bytes(text: str) -> bytes:
    return gzip.compress(text.encode())


@pytest.mark.parametrize("damage,msg", [
    ("truncated", "damaged or truncated gzip file"), ("flipped", "damaged or truncated gzip file"),
    ("empty", "is empty")])
def test_a_damaged_gzip_file_is_an_error(tmp_path, damage, msg):
    raw = gz_bytes(table_text(n=200))
    raw = {"truncated": raw[: len(raw) // 2], "flipped": raw[:40] + bytes(b ^ 0xFF for b in raw[40:80]) + raw[80:],
           "empty": b""}[damage]
    path = tmp_path / "t.csv.gz"
    path.write_bytes(raw)
    raises_one_line(load_table, path, match=f"t.csv.gz:? {msg}")
    raises_one_line(load_molecules, path, match=f"t.csv.gz:? {msg}")


def test_a_byte_order_mark_is_ignored_plain_and_gzipped(tmp_path):
    text = "\ufeff" + table_text()
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8")
    (tmp_path / "bom.csv.gz").write_bytes(gz_bytes(text))
    for name in ("bom.csv", "bom.csv.gz"):
        header, rows, _ = read_csv_rows(tmp_path / name)
        assert header == ["f1", "f2", "y"] and len(rows) == 20
        assert [t.name for t in load_table(tmp_path / name).tasks] == ["y"]
    molecules = "\ufeffsmiles,A\n" + "".join(f"{s},{i % 2}\n" for i, s in enumerate(SMILES))
    (tmp_path / "m.csv").write_text(molecules, encoding="utf-8")
    assert [t.name for t in load_molecules(tmp_path / "m.csv").tasks] == ["A"]


def test_gzip_is_told_by_the_content_not_the_name(tmp_path):
    (tmp_path / "t.csv").write_bytes(gz_bytes(table_text()))
    (tmp_path / "plain.csv.gz").write_text(table_text())
    assert load_table(tmp_path / "t.csv").train.size("x") == load_table(tmp_path / "plain.csv.gz").train.size("x") == 16


def test_text_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(table_text().encode().replace(b"\n", "\néè,".encode("latin-1"), 1))
    raises_one_line(load_table, path, match=r"t.csv, line 2: not UTF-8 text \(byte 0xe9\)")


def test_blank_lines_are_skipped_and_lines_counted_in_the_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('f1,y,"a\nb"\n\n1,0,2\n\n\n2,1,3\r\n3,x,4\n')
    header, rows, lines = read_csv_rows(path)
    assert header == ["f1", "y", "a\nb"] and lines == [4, 7, 8]
    raises_one_line(load_table, path, match=r"line 8, column 'y': 'x' is not a number")


@pytest.mark.parametrize("header,msg", [
    ("f1,,y", r"line 1: column 2 of the header has no name"),
    ("f1,y,f1", r"line 1: column name 'f1' appears twice in the header"),
])
def test_a_header_needs_distinct_names(tmp_path, header, msg):
    path = tmp_path / "t.csv"
    path.write_text(header + "\n" + "1,0,2\n" * 20)
    raises_one_line(load_table, path, match=msg)


def test_ragged_and_nul_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("f1,y\n1,0\n2,1,3\n")
    raises_one_line(load_table, path, match="line 3: 3 fields where the header has 2")
    path.write_bytes(b"f1,y\n1,0\n2\x00,1\n")
    raises_one_line(load_table, path, match=r"line 3, column 'f1': '2\\x00' is not a number")


def test_a_task_column_without_labels(tmp_path, caplog):
    path = tmp_path / "m.csv"
    path.write_text("smiles,A,empty.col\n" + "".join(f"{s},{i % 2},\n" for i, s in enumerate(SMILES)))
    with caplog.at_level(logging.WARNING, logger="manytask"):
        data = load_molecules(path)
    assert [t.name for t in data.tasks] == ["A"]
    assert "dropped 1 task column(s) without any label: empty.col" in caplog.text
    raises_one_line(load_molecules, path, tasks=("A", "empty.col"), match=r"\['empty.col'\] have no labels")


def test_molecule_labels_must_be_finite(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("smiles,A\n" + "".join(f"{s},{'inf' if i == 2 else i % 2}\n" for i, s in enumerate(SMILES)))
    raises_one_line(load_molecules, path, match=r"line 4, column 'A': 'inf' is beyond the float32 range")


def test_a_damaged_gzipped_idx_file(tmp_path):
    images.write_idx(tmp_path / "a.gz", np.zeros((50, 28, 28), np.uint8))
    raw = (tmp_path / "a.gz").read_bytes()
    (tmp_path / "a.gz").write_bytes(raw[: len(raw) // 2])
    raises_one_line(images.read_idx, tmp_path / "a.gz", match="a.gz: cannot read the file")
