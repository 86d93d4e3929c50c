"""Images: scikit-learn's digits (embedded) and MNIST-format IDX files.

Every loader returns a MultiTaskData with one input "x" of shape (n, 1, H, W) scaled to [0, 1] and one
10-class task named after the data set. MNIST and Fashion-MNIST read `data.dir=...` (the four IDX files,
.gz or not) or download into the cache directory, with the files' published MD5 sums checked.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, option
from ..registry import register_dataset
from ..tasks import Task
from .base import MultiTaskData, Split, random_split_indices
from .cache import cache_dir
from .download import fetch

FRACTION = {"low": 0, "high": 1, "low_open": True, "high_open": True}  # the range of a split fraction: (0, 1)
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

# (base url, {file: md5}) as published by the data sets' maintainers
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SOURCES = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
}


def read_idx(path: Path | str) -> np.ndarray:
    """An IDX file (gzipped or not) as an array of its stored type and shape; an unreadable, damaged or
    truncated file is a one-line ConfigError naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError: truncated gzip
        raise ConfigError(f"{path}: cannot read the file ({' '.join(str(e).split()) or type(e).__name__}); "
                          "the file is damaged or truncated, download it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number); expected MNIST-format files")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ConfigError(f"{path}: header says shape {dims} but the file holds {len(body)} bytes of data; "
                          "the file is truncated or corrupt")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def write_idx(path: Path | str, array: np.ndarray) -> None:
    """Write an array as an IDX file (uint8 or the other IDX types); gzipped when path ends in .gz."""
    code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}[array.dtype.newbyteorder("=")]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(np.dtype(IDX_TYPES[code])).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + body)


def _find(directory: Path, stem: str) -> Path:
    for cand in (directory / stem, directory / f"{stem}.gz"):
        if cand.exists():
            return cand
    raise ConfigError(f"{directory} has no {stem} (or {stem}.gz); data.dir must hold the four MNIST-format files")


def load_idx_dir(directory: Path | str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (train images (n, H, W), train labels (n,), test images, test labels) from a folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"data.dir={directory} is not a folder; pass the folder with the IDX files")
    arrays = [read_idx(_find(directory, s)) for s in MNIST_FILES]
    if arrays[0].shape[0] != arrays[1].shape[0] or arrays[2].shape[0] != arrays[3].shape[0]:
        raise ConfigError(f"{directory}: image and label files hold different numbers of examples")
    return tuple(arrays)


def as_images(x: np.ndarray, scale: float) -> torch.Tensor:
    """(n, H, W) or (n, C, H, W) pixels -> float32 (n, C, H, W) divided by `scale`."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) / scale)
    return x.unsqueeze(1) if x.ndim == 3 else x


def three_pools(x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None, y_test: np.ndarray | None,
                val_fraction: float, test_fraction: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(x, y) of train, val, test]: one seeded split of (x, y) into train/val/test fractions, or, with test
    arrays, into train/val only and the test arrays as the test pool (test_fraction unused)."""
    if x_test is None:
        parts = random_split_indices(len(y), (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed)
        return [(x[p], y[p]) for p in parts]
    train, val, _ = random_split_indices(len(y), (1 - val_fraction, val_fraction, 0.0), seed)
    return [(x[train], y[train]), (x[val], y[val]), (x_test, y_test)]


def image_data(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray | None,
               y_test: np.ndarray | None, scale: float, val_fraction: float, test_fraction: float,
               seed: int, task: str | None = None) -> MultiTaskData:
    """Arrays (n, H, W) or (n, C, H, W) -> MultiTaskData with input "x" (n, C, H, W) in [0, 1] and one
    10-class task. Without a test set, test_fraction of the training set becomes the test set."""
    task_name = task or name
    pools = three_pools(x_train, np.asarray(y_train, dtype=np.float32), x_test, y_test, val_fraction,
                        test_fraction, seed)
    classes = int(max(np.max(y_train), np.max(pools[2][1]))) + 1
    splits = [Split({"x": as_images(x, scale)}, {task_name: torch.as_tensor(np.asarray(y, dtype=np.float32))})
              for x, y in pools]
    return MultiTaskData(name, [Task(task_name, "multiclass", classes)], *splits, {"scale": scale})


@dataclass
class DigitsConfig:
    val_fraction: float = option(0.15, "fraction of the images for validation", **FRACTION)
    test_fraction: float = option(0.25, "fraction of the images for testing", **FRACTION)
    split_seed: int = option(0, "seed of the train/val/test split", low=0)


@register_dataset("digits", DigitsConfig, "scikit-learn's 1,797 8x8 digits, one 10-class task (embedded)")
def load_digits(cfg: DigitsConfig) -> MultiTaskData:
    from sklearn.datasets import load_digits as sk_digits
    digits = sk_digits()
    return image_data("digits", digits.images, digits.target, None, None, 16.0, cfg.val_fraction,
                      cfg.test_fraction, cfg.split_seed)


@dataclass
class IDXConfig:
    dir: str = option("", "folder with the four MNIST-format IDX files (.gz or not); empty: download into "
                      "the cache directory")
    val_fraction: float = option(1 / 6, "fraction of the official training set held out for validation "
                                 "(1/6: 10,000 of 60,000)", **FRACTION)
    split_seed: int = option(0, "seed of the train/val split", low=0)


def _idx_loader(name: str):
    base, md5s = SOURCES[name]

    def load(cfg: IDXConfig) -> MultiTaskData:
        if cfg.dir:
            directory = Path(cfg.dir)
        else:
            directory = cache_dir() / name
            directory.mkdir(parents=True, exist_ok=True)
            for f, md5 in md5s.items():
                fetch(base + f, md5, "md5", directory / f)
        return image_data(name, *load_idx_dir(directory), 255.0, cfg.val_fraction, 0.0, cfg.split_seed)
    return load


for _name, _desc in (("mnist", "MNIST (data.dir=FOLDER of IDX files, or download)"),
                     ("fashion_mnist", "Fashion-MNIST (data.dir=FOLDER of IDX files, or download)")):
    register_dataset(_name, IDXConfig, _desc)(_idx_loader(_name))


def digit_pairs(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray | None, test_labels: np.ndarray | None,
                n_tasks: int = 10, n_train: int = 40, max_eval: int = 500, val_fraction: float = 0.15,
                test_fraction: float = 0.25, seed: int = 0, scale: float = 16.0,
                name: str = "digit_pairs") -> MultiTaskData:
    """Binary "digit a vs digit b" tasks, each with its own examples (Meyerson & Miikkulainen 2018, MNIST).

    images (n, H, W) or (n, C, H, W), labels (n,) digit classes. `n_tasks` distinct pairs a < b are drawn
    with `seed`; task "aVb" labels digit b as 1 and digit a as 0 and reads its own input named "aVb"
    (n, C, H, W) in [0, 1]. Train: n_train examples, half of each digit. Val and test: the pair's examples
    of the held-out pools (val at most max_eval). Without test arrays, the pools come from one seeded
    split of `images` (train/val/test fractions); with them, val comes from `images` and test from them.
    """
    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    test_labels = None if test_labels is None else np.asarray(test_labels).astype(int)
    pools = three_pools(images, labels, test_images, test_labels, val_fraction, test_fraction, seed)
    classes = np.unique(labels)
    all_pairs = [(int(a), int(b)) for i, a in enumerate(classes) for b in classes[i + 1:]]
    if not 1 <= n_tasks <= len(all_pairs):
        raise ConfigError(f"tasks={n_tasks}: choose between 1 and {len(all_pairs)} digit pairs")
    if n_train < 2 or n_train % 2:
        raise ConfigError(f"n_train={n_train}: need an even number >= 2 (half of each digit)")
    pairs = [all_pairs[i] for i in rng.choice(len(all_pairs), n_tasks, replace=False)]

    tasks, splits = [], [Split({}, {}), Split({}, {}), Split({}, {})]
    for a, b in pairs:
        task_name = f"{a}v{b}"
        tasks.append(Task(task_name, "binary", input=task_name))
        for which, (split, (x, y)) in enumerate(zip(splits, pools)):
            if which == 0:  # training: half of each digit
                halves = []
                for digit in (a, b):
                    have = np.flatnonzero(y == digit)
                    if len(have) < n_train // 2:
                        raise ConfigError(f"digit {digit} has {len(have)} training examples, fewer than n_train/2="
                                          f"{n_train // 2}; lower n_train")
                    halves.append(rng.choice(have, n_train // 2, replace=False))
                idx = rng.permutation(np.concatenate(halves))
            else:
                idx = np.flatnonzero((y == a) | (y == b))
                if which == 1 and len(idx) > max_eval:
                    idx = np.sort(rng.choice(idx, max_eval, replace=False))
            split.inputs[task_name] = as_images(x[idx], scale)
            split.labels[task_name] = torch.as_tensor((y[idx] == b).astype(np.float32))
    return MultiTaskData(name, tasks, *splits, {"pairs": pairs, "scale": scale})


@dataclass
class DigitPairsConfig:
    dir: str = option("", "folder with MNIST-format IDX files; empty: scikit-learn's embedded 8x8 digits")
    tasks: int = option(10, "number of digit pairs", low=1, high=45)
    n_train: int = option(40, "training examples per task, half of each digit (even)", low=2)
    max_eval: int = option(500, "validation examples per task at most", low=1)
    seed: int = option(0, "draws the pairs, the split and the training examples", low=0)
    val_fraction: float = option(0.15, "fraction of the images for validation", **FRACTION)
    test_fraction: float = option(0.25, "fraction of the images for testing (embedded digits only; an IDX "
                                  "folder brings its own test files)", **FRACTION)


@register_dataset("digit_pairs", DigitPairsConfig,
                  "binary 'digit a vs digit b' tasks with their own inputs (embedded digits, or data.dir=IDX folder)")
def load_digit_pairs(cfg: DigitPairsConfig) -> MultiTaskData:
    if cfg.dir:
        return digit_pairs(*load_idx_dir(cfg.dir), cfg.tasks, cfg.n_train, cfg.max_eval, cfg.val_fraction, 0.0,
                           cfg.seed, 255.0)
    from sklearn.datasets import load_digits as sk_digits
    digits = sk_digits()
    return digit_pairs(digits.images, digits.target, None, None, cfg.tasks, cfg.n_train, cfg.max_eval,
                       cfg.val_fraction, cfg.test_fraction, cfg.seed, 16.0)
