"""Shared fixtures: tiny multi-task data sets built in memory, and a private cache directory."""
from __future__ import annotations

import pytest
import torch

from manytask.data.base import MultiTaskData, Split
from manytask.tasks import Task


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MANYTASK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _split(gen, n, d, w, with_nan=True):
    x = torch.randn(n, d, generator=gen)
    score = x @ w  # (n, 3) learnable signal
    y = {"bin": (score[:, 0] > 0).float(), "multi": torch.bucketize(score[:, 1].contiguous(), torch.tensor([-0.5, 0.5])).float(),
         "reg": score[:, 2]}
    if with_nan:
        y["bin"][::7] = float("nan")
    return x, y


def tiny_shared(n=64, d=12, seed=0) -> MultiTaskData:
    """One input (n, d) read by a binary, a 3-class and a regression task; some labels missing."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 3, generator=gen)
    tasks = [Task("bin", "binary"), Task("multi", "multiclass", 3), Task("reg", "regression")]
    splits = []
    for m in (n, n // 4, n // 4):
        x, y = _split(gen, m, d, w)
        splits.append(Split({"x": x}, y))
    return MultiTaskData("tiny", tasks, *splits)


def tiny_multi(seed=0) -> MultiTaskData:
    """Two inputs of different shapes: images (n, 1, 8, 8) for a 3-class task, a table (m, 5) for a
    binary and a regression task."""
    gen = torch.Generator().manual_seed(seed)
    wi, wt = torch.randn(64, 1, generator=gen), torch.randn(5, 2, generator=gen)
    tasks = [Task("img", "multiclass", 3, input="img"), Task("tab_bin", "binary", input="tab"),
             Task("tab_reg", "regression", input="tab")]
    splits = []
    for n, m in ((48, 32), (16, 12), (16, 12)):
        xi = torch.randn(n, 1, 8, 8, generator=gen)
        xt = torch.randn(m, 5, generator=gen)
        si, st = xi.flatten(1) @ wi, xt @ wt
        y = {"img": torch.bucketize(si[:, 0].contiguous(), torch.tensor([-2.0, 2.0])).float(),
             "tab_bin": (st[:, 0] > 0).float(), "tab_reg": st[:, 1]}
        splits.append(Split({"img": xi, "tab": xt}, y))
    return MultiTaskData("tiny-multi", tasks, *splits)


@pytest.fixture
def mols(tmp_path):
    """A molecule CSV of 60 rows (the SMILES of tests/data/test_moleculenet.py) with two 0/1 tasks A, B."""
    from .data.test_moleculenet import SMILES
    rows = [f"{s},{i % 2},{(i // 2) % 2}" for i, s in enumerate(SMILES * 3)]
    path = tmp_path / "mols.csv"
    path.write_text("smiles,A,B\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def shared_data():
    return tiny_shared()


@pytest.fixture
def multi_data():
    return tiny_multi()
