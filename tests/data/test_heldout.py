"""Held-out digits written as MNIST-format IDX files: shapes, labels, disjoint sources, seeds, CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from manytask.config import ConfigError
from manytask.data import heldout, images


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_files_round_trip_with_shapes_and_labels(tmp_path, digits):
    out = heldout.write_digits_idx(tmp_path, size=20, seed=1, shift=2, noise=0.05, copies=2)
    x, y, xt, yt = images.load_idx_dir(tmp_path)
    n_train, n_test = len(out["train_sources"]), len(out["test_sources"])
    assert n_train + n_test == 1797 and n_test == round(0.2 * 1797)
    assert x.shape == (2 * n_train, 20, 20) and xt.shape == (2 * n_test, 20, 20)
    assert x.dtype == np.uint8 and y.dtype == np.uint8 and x.max() > 200
    assert out["files"]["t10k-labels-idx1-ubyte"] == (2 * n_test,)
    # every source digit contributes `copies` images with its own label
    for labels, src in ((y, out["train_sources"]), (yt, out["test_sources"])):
        np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                      2 * np.bincount(digits.target[src], minlength=10))


def test_test_images_come_from_sources_never_used_for_training(tmp_path, digits):
    """Without shift and noise every image is its source digit up-sampled: each written test image equals
    an up-sampled test source and differs from every up-sampled training source."""
    out = heldout.write_digits_idx(tmp_path, size=16, seed=0, shift=0, noise=0.0, copies=1)
    train_src, test_src = out["train_sources"], out["test_sources"]
    assert not set(train_src) & set(test_src)
    up = torch.nn.functional.interpolate(torch.as_tensor(digits.images / 16.0, dtype=torch.float32)[:, None],
                                         size=(16, 16), mode="bilinear", align_corners=False)[:, 0].numpy()
    up = np.round(np.clip(up, 0, 1) * 255).astype(np.uint8).reshape(len(up), -1)
    x, y, xt, yt = images.load_idx_dir(tmp_path)
    for imgs, labels, own in ((x, y, train_src), (xt, yt, test_src)):
        flat = imgs.reshape(len(imgs), -1).astype(int)
        nearest = np.array([np.abs(up.astype(int) - f).sum(1).argmin() for f in flat])
        assert np.all(np.abs(up[nearest].astype(int) - flat).max(1) == 0)  # each image is a source digit
        assert set(nearest) <= set(own) and len(set(nearest)) == len(own)
        np.testing.assert_array_equal(labels, digits.target[nearest])


def test_seeds_differ_and_repeat(tmp_path):
    a = heldout.write_digits_idx(tmp_path / "a", size=14, seed=0, copies=1)
    b = heldout.write_digits_idx(tmp_path / "b", size=14, seed=1, copies=1)
    again = heldout.write_digits_idx(tmp_path / "c", size=14, seed=0, copies=1)
    assert not np.array_equal(a["test_sources"], b["test_sources"])
    np.testing.assert_array_equal(a["test_sources"], again["test_sources"])
    xa, xb, xc = (images.load_idx_dir(tmp_path / d)[0] for d in "abc")
    assert not np.array_equal(xa, xb)
    np.testing.assert_array_equal(xa, xc)


def test_shift_moves_digits_and_noise_touches_the_background(digits):
    src = digits.images[:200] / 16.0
    still = heldout.variants(src, 16, 0, 0.0, 1, np.random.default_rng(0))
    clean = heldout.variants(src, 16, 3, 0.0, 1, np.random.default_rng(0))
    noisy = heldout.variants(src, 16, 3, 0.2, 1, np.random.default_rng(0))  # same shifts, then noise

    def first_row(x):  # (n, H, W) -> (n,) the first non-blank row of each image
        return (x.sum(2) > 0).argmax(1)

    assert len(np.unique(first_row(still))) <= 2 and len(np.unique(first_row(clean))) >= 5
    inner = heldout.variants(src, 10, 0, 0.0, 1, np.random.default_rng(0))  # the up-sampled digit, 16 - 2*3
    np.testing.assert_array_equal(clean.reshape(200, -1).astype(int).sum(1), inner.reshape(200, -1).astype(int).sum(1))
    lit = noisy[clean == 0] > 0  # background pixels the noise made brighter: about half of them
    assert 0.4 < lit.mean() < 0.6


def test_loaders_read_the_folder(tmp_path):
    heldout.write_digits_idx(tmp_path, size=12, shift=1, copies=1)
    data = images._idx_loader("mnist")(images.IDXConfig(dir=str(tmp_path)))
    assert data.input_shapes == {"x": (1, 12, 12)} and data.tasks[0].outputs == 10
    assert data.test.size("x") == round(0.2 * 1797)
    pairs = images.load_digit_pairs(images.DigitPairsConfig(dir=str(tmp_path), tasks=3, n_train=10))
    assert len(pairs.tasks) == 3 and pairs.train.inputs[pairs.tasks[0].name].shape == (10, 1, 12, 12)


@pytest.mark.parametrize("kwargs,msg", [
    ({"size": 10, "shift": 2}, "size - 2\\*shift >= 8"),
    ({"copies": 0}, "copies=0: must be >= 1"),
    ({"test_fraction": 1.0}, "test_fraction=1.0: must be in \\(0, 1\\)"),
])
def test_bad_settings_are_config_errors(tmp_path, kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        heldout.write_digits_idx(tmp_path, **kwargs)


def test_module_entry_point(tmp_path, capsys):
    assert heldout.main([str(tmp_path / "d"), "size=12", "shift=1", "copies=1", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "t10k-images-idx3-ubyte: 359 x 12 x 12" in printed and f"data.dir={tmp_path / 'd'}" in printed
    assert heldout.main([str(tmp_path / "e"), "colour=red"]) == 2
    assert "unknown held-out digits key 'colour'" in capsys.readouterr().err
    assert heldout.main([]) == 2
