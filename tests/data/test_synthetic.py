"""manytask/data/synthetic.py: the grouped regression generator, its .npz loader and its registration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from manytask.config import ConfigError
from manytask.data.synthetic import (GroupedRegressionConfig, fake_correlated_labels, grouped_regression_arrays,
                                     grouped_regression_data, load_grouped_regression, write_grouped_regression)
from manytask.registry import DATASETS


def test_groups_are_rank_one_with_positive_multiples():
    a = grouped_regression_arrays(tasks=12, groups=3, dim=7, seed=1)
    assert a["train_X"].shape == (12, 15, 7) and a["test_Y"].shape == (12, 50)
    assert a["groups"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    w = a["W"].astype(np.float64)
    for g in range(3):
        wg = w[a["groups"] == g]  # (4, 7)
        assert np.linalg.matrix_rank(wg, tol=1e-5) == 1
        cos = wg @ wg[0] / (np.linalg.norm(wg, axis=1) * np.linalg.norm(wg[0]))
        np.testing.assert_allclose(cos, 1.0, atol=1e-6)  # same direction: positive multiples
    assert np.linalg.matrix_rank(w, tol=1e-5) == 3
    # clean labels are exactly x . w_t, x in [-1, 1]
    np.testing.assert_allclose(np.einsum("tnd,td->tn", a["train_X"], w), a["train_Y"], atol=1e-5)
    assert a["train_X"].min() >= -1 and a["train_X"].max() <= 1


def test_noise_has_the_asked_std():
    clean = grouped_regression_arrays(test=2000, seed=3)
    noisy = grouped_regression_arrays(test=2000, noise=0.31, seed=3)
    np.testing.assert_array_equal(clean["test_X"], noisy["test_X"])
    assert abs(float(np.std(noisy["test_Y"] - clean["test_Y"])) - 0.31) < 0.01


def test_registered_with_its_config():
    entry = DATASETS["grouped_regression"]
    assert entry.fn is load_grouped_regression and entry.config is GroupedRegressionConfig


def test_data_set_layout_and_validation_split():
    d = load_grouped_regression(GroupedRegressionConfig(tasks=6, groups=2, dim=4))
    assert [t.name for t in d.tasks] == [f"t{i:02d}" for i in range(6)]
    assert all(t.input == t.name and t.kind == "regression" for t in d.tasks)
    assert d.train.size("t03") == 10 and d.val.size("t03") == 5 and d.test.size("t03") == 50
    assert d.input_shapes["t00"] == (4,) and d.meta["groups"] == [0, 0, 0, 1, 1, 1]


def test_npz_round_trip(tmp_path):
    a = grouped_regression_arrays(tasks=4, groups=2, dim=3, seed=5)
    path = tmp_path / "bench.npz"
    np.savez(path, **{k: a[k] for k in ("train_X", "train_Y", "test_X", "test_Y")})
    d = load_grouped_regression(GroupedRegressionConfig(path=str(path), val=3))
    assert d.name == "bench" and "groups" not in d.meta
    assert torch.equal(d.train.inputs["t02"], torch.as_tensor(a["train_X"][2, :12]))
    assert torch.equal(d.val.labels["t01"], torch.as_tensor(a["train_Y"][1, 12:]))
    assert torch.equal(d.test.labels["t03"], torch.as_tensor(a["test_Y"][3]))


def test_bad_input_says_what_is_wrong(tmp_path):
    a = grouped_regression_arrays(tasks=4, groups=2, dim=3)
    with pytest.raises(ConfigError, match="lack"):
        grouped_regression_data({"train_X": a["train_X"]})
    with pytest.raises(ConfigError, match="inconsistent shapes"):
        grouped_regression_data({**a, "test_Y": a["test_Y"][:, :3, None]})
    with pytest.raises(ConfigError, match="val"):
        grouped_regression_data(a, val=15)
    with pytest.raises(ConfigError, match="no such file"):
        load_grouped_regression(GroupedRegressionConfig(path=str(tmp_path / "missing.npz")))
    with pytest.raises(ConfigError, match="divisible"):
        load_grouped_regression(GroupedRegressionConfig(tasks=10, groups=3))
    with pytest.raises(ConfigError, match="rate"):
        fake_correlated_labels(10, 2, rate=1.0)


def test_fake_correlated_labels_unchanged():
    y = fake_correlated_labels(2000, 4, rho=0.8, rate=0.1, seed=0)
    assert y.shape == (2000, 4) and abs(float(y.mean()) - 0.1) < 0.01
    assert np.corrcoef(y.T)[0, 1] > 0.3


def test_written_draw_is_the_generated_one(tmp_path):
    """write_grouped_regression(seed=S, noise=...) gives the file data.path= reads, the same data as
    data.seed=S, data.noise=...; with_groups=False leaves the groups out."""
    path = write_grouped_regression(tmp_path / "d.npz", seed=104, noise=0.31)
    from_file = load_grouped_regression(GroupedRegressionConfig(path=str(path)))
    drawn = load_grouped_regression(GroupedRegressionConfig(seed=104, noise=0.31))
    for split in ("train", "val", "test"):
        for t in drawn.tasks:
            assert torch.equal(from_file.split(split).labels[t.name], drawn.split(split).labels[t.name])
            assert torch.equal(from_file.split(split).inputs[t.name], drawn.split(split).inputs[t.name])
    assert from_file.meta["groups"] == drawn.meta["groups"] == [0] * 10 + [1] * 10 + [2] * 10
    bare = write_grouped_regression(tmp_path / "bare.npz", with_groups=False, seed=104)
    assert sorted(np.load(bare).files) == ["test_X", "test_Y", "train_X", "train_Y"]
