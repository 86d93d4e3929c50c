"""Fuzzing the CSV readers (base.read_csv_rows, the table and moleculenet loaders through their configs)
with Hypothesis: byte-order marks, other encodings, ragged rows, damaged gzip, huge and non-finite values,
names of any characters. Every file either loads, with finite inputs and labels that are finite or NaN
(missing), or raises a ConfigError whose message is one line; no other exception gets out."""
from __future__ import annotations

import csv
import gzip
import io
import math

from hypothesis import HealthCheck, given, settings, strategies as st
import torch

from manytask.config import ConfigError
from manytask.data import moleculenet as mn, tabular
from manytask.data.base import read_csv_rows

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SPECIAL = ["", " ", "nan", "NaN", "inf", "-Infinity", "1e300", "-1e39", "3e38", "1e30", "1e-50", "0x10", "1_0",
           " 2 ", "abc", "ü", '"', ",", "\n"]
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "c1ccncc1", "CCCC", "C1CC1", "not a smiles", ""]

names = st.text(min_size=1, max_size=8)  # any characters: dots, slashes, quotes, newlines, unicode
numbers = st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: f"{v:.4g}")
labels = st.sampled_from(["0", "1", "0", "1", "", "nan", "2", "0.5", "1e300", "inf"])
cells = st.one_of(numbers, numbers, numbers, st.sampled_from(SPECIAL), st.text(max_size=4),
                  st.floats().map(repr))


@st.composite
def csv_file(draw, first: st.SearchStrategy | None = None, rest: st.SearchStrategy = cells) -> bytes:
    """Bytes of a CSV: a header of any names, up to 30 rows (some ragged), any line ending, one of
    several encodings (with or without a byte-order mark), plain, gzipped or gzipped and damaged."""
    header = draw(st.lists(names, min_size=2, max_size=4, unique=True))
    rows = []
    for _ in range(draw(st.integers(0, 30))):
        row = [draw(first)] if first is not None else []
        row += [draw(rest) for _ in range(len(header) - len(row))]
        if draw(st.integers(0, 30)) == 0:  # now and then a ragged row
            row = row[:-1] if draw(st.booleans()) else row + ["1"]
        rows.append(row)
    text = io.StringIO()
    csv.writer(text, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows([header, *rows])
    encoding = draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "latin-1", "utf-16"]))
    raw = text.getvalue().encode(encoding, errors="replace")
    packing = draw(st.sampled_from(["plain"] * 3 + ["gzip", "truncated gzip", "flipped gzip"]))
    if packing != "plain":
        raw = gzip.compress(raw)
        cut = draw(st.integers(0, max(len(raw) - 1, 0)))
        if packing == "truncated gzip":
            raw = raw[:cut]
        elif packing == "flipped gzip":
            raw = raw[:cut] + bytes([raw[cut] ^ draw(st.integers(1, 255))]) + raw[cut + 1:]
    return raw


def loads_or_one_line_error(fn):
    """fn()'s result, or None after a ConfigError with a one-line message; any other exception fails."""
    try:
        return fn()
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None


def check_finite(data) -> None:
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert all(torch.isfinite(x).all() for x in split.inputs.values())
        assert all((torch.isfinite(y) | torch.isnan(y)).all() for y in split.labels.values())


def write(tmp_path, raw: bytes, gz: bool):
    path = tmp_path / ("data.csv.gz" if gz else "data.csv")
    path.write_bytes(raw)
    return path


@FUZZ
@given(raw=csv_file(), gz=st.booleans())
def test_read_csv_rows(tmp_path, raw, gz):
    result = loads_or_one_line_error(lambda: read_csv_rows(write(tmp_path, raw, gz)))
    if result is not None:
        header, rows, lines = result
        assert all(header) and len(set(header)) == len(header) and not header[0].startswith("\ufeff")
        assert all(len(row) == len(header) for row in rows) and len(lines) == len(rows)
        assert lines == sorted(lines) and (not lines or lines[0] >= 2)


@FUZZ
@given(raw=csv_file(), gz=st.booleans(), kind=st.sampled_from(["auto", "binary", "multiclass", "regression"]),
       standardize=st.booleans())
def test_table_loader(tmp_path, raw, gz, kind, standardize):
    path = write(tmp_path, raw, gz)
    header = loads_or_one_line_error(lambda: read_csv_rows(path)[0])
    target = (header[-1],) if header else ("y",)
    cfg = tabular.TabularConfig(path=str(path), target=target, kind=kind, standardize=standardize)
    data = loads_or_one_line_error(lambda: tabular.load_table(cfg))
    if data is not None:
        check_finite(data)
        assert [t.name for t in data.tasks] == list(target)


@FUZZ
@given(raw=csv_file(first=st.sampled_from(SMILES), rest=labels), gz=st.booleans(),
       split=st.sampled_from(["random", "scaffold"]))
def test_moleculenet_loader(tmp_path, raw, gz, split):
    path = write(tmp_path, raw, gz)
    header = loads_or_one_line_error(lambda: read_csv_rows(path)[0])
    cfg = mn.MoleculeNetConfig(path=str(path), smiles_col=header[0] if header else "smiles", bits=32,
                               cache=False, split=split)
    data = loads_or_one_line_error(lambda: mn.load_any(cfg))
    if data is not None:
        check_finite(data)
        assert {t.name for t in data.tasks} <= set(header[1:])
        assert all(math.isfinite(v) for s in ("train", "val", "test") for y in data.split(s).labels.values()
                   for v in y[~torch.isnan(y)].tolist())
