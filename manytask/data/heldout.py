"""Held-out check data for image methods: scikit-learn's 8x8 digits made into MNIST-format IDX files.

The embedded digits are small and every split of them is drawn from the same 1,797 images. This module
writes a larger, harder image set whose test images come from source digits that no training image was
made from, so `data.dir=FOLDER` (mnist, fashion_mnist, digit_pairs and the experiments that take
data.dir) can check a method on images it has never seen any variant of:

    python -m manytask.data.heldout FOLDER [size=28 seed=0 shift=3 noise=0.1 copies=5 test_fraction=0.2]

Each source digit (8, 8) in 0..16 is scaled to [0, 1], up-sampled bilinearly to (size - 2*shift) pixels a
side, placed in a size x size black canvas at a random offset of up to +-shift pixels from the centre
(so no shift crops the digit), given Gaussian pixel noise of std `noise`, clipped to [0, 1] and stored
as uint8 0..255. `copies` variants (own shift and noise each) are made of every source digit. A seeded
permutation of the source digits puts test_fraction of them in the test files and the rest in the
training files; each file's images are shuffled.

The IDX loaders take their validation split from the training files at random, so validation images
share source digits with training images; only the test files are held out by source.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, apply, option, split_overrides
from .images import MNIST_FILES, write_idx


@dataclass
class HeldoutConfig:
    size: int = option(28, "side of the written images in pixels (28 like MNIST)", low=8)
    seed: int = option(0, "seed of the source split, the shifts, the noise and the order", low=0)
    shift: int = option(3, "largest shift of a digit from the centre, in pixels", low=0)
    noise: float = option(0.1, "std of the Gaussian pixel noise, pixels in [0, 1]", low=0)
    copies: int = option(5, "variants written per source digit", low=1)
    test_fraction: float = option(0.2, "fraction of the source digits whose variants form the test files",
                                  low=0, high=1, low_open=True, high_open=True)


def variants(images: np.ndarray, size: int, shift: int, noise: float, copies: int,
             rng: np.random.Generator) -> np.ndarray:
    """images (n, 8, 8) in [0, 1] -> uint8 (n * copies, size, size): `copies` consecutive variants of
    each image, up-sampled to size - 2*shift, shifted by up to +-shift pixels and noised."""
    inner = size - 2 * shift
    up = torch.nn.functional.interpolate(torch.as_tensor(images, dtype=torch.float32)[:, None], size=(inner, inner),
                                         mode="bilinear", align_corners=False)[:, 0].numpy()
    up = np.repeat(up, copies, axis=0)  # (n * copies, inner, inner)
    out = np.zeros((len(up), size, size), np.float32)
    offsets = rng.integers(0, 2 * shift + 1, size=(len(up), 2))  # top-left corner, 0..2*shift
    for k, (r, c) in enumerate(offsets):
        out[k, r:r + inner, c:c + inner] = up[k]
    if noise > 0:
        out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def write_digits_idx(folder: Path | str, size: int = 28, seed: int = 0, shift: int = 3, noise: float = 0.1,
                     copies: int = 5, test_fraction: float = 0.2) -> dict:
    """Write the four MNIST-format files into `folder` (made if missing) -> {"files": {name: shape},
    "train_sources": (n_train_src,), "test_sources": (n_test_src,)} with the indices into scikit-learn's
    digits that each split was made from. Images (n, size, size) uint8, labels (n,) uint8 digits 0..9."""
    cfg = apply(HeldoutConfig(), {"size": size, "seed": seed, "shift": shift, "noise": noise,
                                  "copies": copies, "test_fraction": test_fraction}, "held-out digits")
    if cfg.size - 2 * cfg.shift < 8:
        raise ConfigError(f"size={cfg.size}, shift={cfg.shift}: a shifted digit needs size - 2*shift >= 8 pixels; "
                          "raise size or lower shift")
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(digits.target))
    n_test = round(cfg.test_fraction * len(order))
    if not 0 < n_test < len(order):
        raise ConfigError(f"test_fraction={cfg.test_fraction}: leaves no source digits for one of the splits")
    sources = {"train": np.sort(order[n_test:]), "test": np.sort(order[:n_test])}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for names, src in zip((MNIST_FILES[:2], MNIST_FILES[2:]), sources.values()):  # train, then test files
        x = variants(digits.images[src] / 16.0, cfg.size, cfg.shift, cfg.noise, cfg.copies, rng)
        y = np.repeat(digits.target[src], cfg.copies).astype(np.uint8)
        mix = rng.permutation(len(y))
        for name, array in zip(names, (x[mix], y[mix])):
            write_idx(folder / name, array)
            files[name] = array.shape
    return {"files": files, "train_sources": sources["train"], "test_sources": sources["test"]}


def main(argv: list[str]) -> int:
    """python -m manytask.data.heldout FOLDER [key=value ...]: write the files and print what was written."""
    if not argv or "=" in argv[0] or argv[0] in ("-h", "--help"):
        keys = " ".join(f"{k}={v}" for k, v in vars(HeldoutConfig()).items())
        print(f"usage: python -m manytask.data.heldout FOLDER [{keys}]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        cfg = apply(HeldoutConfig(), split_overrides(argv[1:]), "held-out digits")
        out = write_digits_idx(argv[0], **vars(cfg))
    except ConfigError as e:
        print(f"manytask.data.heldout: error: {e}", file=sys.stderr)
        return 2
    for name, shape in out["files"].items():
        print(f"{Path(argv[0]) / name}: {' x '.join(map(str, shape))}")
    print(f"{len(out['train_sources'])} training and {len(out['test_sources'])} test source digits (disjoint), "
          f"{cfg.copies} variants each; use data.dir={argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
