"""MoleculeNet-style CSVs: a SMILES column and one column per task (blank = missing label).

Molecules become RDKit Morgan fingerprints (radius and size configurable, bits or counts), computed in
chunks by worker processes (data.workers; a progress bar on a terminal) and held packed: bits as
np.packbits rows (256 bytes a molecule at 2048 bits), counts as uint8 (saturating at 255), given out
as float32 one batch at a time (base.PackedRows). Invalid SMILES are dropped and counted, never fatal.
A task column of 0/1 labels is a binary task, any other numbers a regression task (ESOL, FreeSolv,
Lipophilicity and the like), whose model learns the target standardised with the training split's mean and
std (Task.shift, Task.scale) while its metrics stay in the target's units, as for tables (data/tabular.py);
blank (or nan) is a missing label. A task column without any label is dropped with a warning
when the tasks are the file's columns, and an error when data.tasks names it. The CSV is parsed row by
row, keeping only the SMILES and float32 labels. Features are cached under the cache directory
(manytask/data/cache.py), keyed by the file's sha256, the featuriser settings and the format's version.
With data.encoder=dmpnn molecules become graphs instead (manytask/data/graphs.py), for a method's learned
encoder. Splits: seeded random 80/10/10 or the Bemis-Murcko scaffold split as MoleculeNet defines it (largest
scaffold groups to train first).

Tox21 (7,831 molecules, 12 assays) is embedded; ToxCast, SIDER, ClinTox and MUV download on first use
(MD5-checked) into the cache directory, or read a local copy given with data.path=.
"""
from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from ..config import ConfigError, option
from ..registry import register_dataset
from ..tasks import Task
from .base import (MultiTaskData, PackedRows, check_fractions, check_split_sizes, column_list, parse_number,
                   random_split_indices, split_arrays, stream_csv_rows)
from .cache import cached_arrays
from .download import fetch, file_hash
from .graphs import GraphBatch, GraphRows, cached_graphs, graph_rows
from .synthetic import fake_correlated_labels
from .tabular import target_scale, units_line

log = logging.getLogger("manytask")

# name -> (url, MD5 of the file as published with the MoleculeNet loaders of DeepChem/TorchDrug)
_S3 = "https://deepchemdata.s3-us-west-1.amazonaws.com/datasets/"
SOURCES = {
    "tox21": (_S3 + "tox21.csv.gz", "2882d69e70bba0fec14995f26787cc25"),
    "toxcast": (_S3 + "toxcast_data.csv.gz", "92911bbf9c1e2ad85231014859388cd6"),
    "sider": (_S3 + "sider.csv.gz", "77c0ef421f7cc8ce963c5836c8761fd2"),
    "clintox": (_S3 + "clintox.csv.gz", "db4f2df08be8ae92814e9d6a2d015284"),
    "muv": (_S3 + "muv.csv.gz", "9c40bd41310991efd40f4d4868fa3ddf"),
}


FORMAT = 2  # version of the cached feature format: 2 = packed bits / uint8 counts
CHUNK = 2000  # molecules a worker process takes at a time
LOG_FROM = 50_000  # molecules from which featurising logs one line (the progress bar shows on a terminal only)
LABEL_BLOCK = 65536  # label rows parsed into one float32 block
QUICK_LABELS = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "": math.nan}  # what parse_number gives them


@dataclass
class FingerprintConfig:
    """The featuriser and split settings shared by every molecule data set."""
    radius: int = option(2, "Morgan fingerprint radius", low=0)
    bits: int = option(2048, "fingerprint length", low=1)
    counts: bool = option(False, "count fingerprints instead of bits")
    split: Literal["random", "scaffold"] = option("random", "seeded random split, or MoleculeNet's Bemis-Murcko "
                                                  "scaffold split")
    split_seed: int = option(0, "seed of the random split and of the fake tasks", low=0)
    fractions: tuple[float, ...] = option((0.8, 0.1, 0.1), "train, val and test fractions, summing to 1",
                                          low=0, high=1, min_len=3)
    workers: int = option(0, "processes that compute fingerprints: 0 = every usable core, 1 = this process only",
                          low=0)
    cache: bool = option(True, "keep the fingerprints (or graphs) in the cache directory")
    encoder: Literal["fingerprint", "dmpnn"] = option(
        "fingerprint", "molecule input: Morgan fingerprints, or graphs (chemprop's featuriser) that a method "
                       "encodes with a learned D-MPNN (hard_sharing, soft_order, icnn, stl, evolving; its encoder_* keys)")
    descriptors: bool = option(False, "dmpnn only: add RDKit's 2D descriptors of each molecule to the graph, "
                                      "standardised with the training split's mean and deviation")


@dataclass
class MoleculeNetConfig(FingerprintConfig):
    path: str = option("", "a CSV (.csv or .csv.gz); empty: the embedded Tox21, or the download for other sets")
    smiles_col: str = option("smiles", "name of the SMILES column")
    tasks: tuple[str, ...] = option((), "task columns; empty: every column but SMILES and id columns")
    fake_tasks: int = option(0, "append k fake binary tasks correlated with each other, not with the data", low=0)
    fake_rho: float = option(0.8, "correlation of the fake tasks' latent scores", low=0, high=1)
    fake_rate: float = option(0.1, "positive rate of each fake task", low=0, high=1, low_open=True, high_open=True)


def fingerprint_settings(cfg: FingerprintConfig) -> dict:
    """cfg's FingerprintConfig fields by name (to build a MoleculeNetConfig from another config)."""
    return {f.name: getattr(cfg, f.name) for f in fields(FingerprintConfig)}


def embedded_tox21() -> Path:
    return Path(str(resources.files("manytask.data") / "tox21.csv.gz"))


def read_csv(path: Path, smiles_col: str, task_cols: tuple[str, ...]) -> tuple[list[str], list[str], np.ndarray]:
    """-> (smiles (n,), task names (T,), labels (n, T) float32 with NaN for blanks). The rows are parsed as
    they are read: what stays is the SMILES and the float32 labels, not the file's rows."""
    header, numbered = stream_csv_rows(path)
    if smiles_col not in header:
        raise ConfigError(f"{path} has no SMILES column {smiles_col!r}; its columns are {column_list(header)}; "
                          "name the right one with data.smiles_col=...")
    smiles_index = header.index(smiles_col)
    names = list(task_cols) or [h for h in header if h != smiles_col and h.lower() not in ("mol_id", "id", "name")]
    missing = [c for c in names if c not in header]
    if missing:
        raise ConfigError(f"{path} has no task column(s) {missing}; its columns are {column_list(header)}")
    if not names:
        raise ConfigError(f"{path} has a SMILES column but no task columns")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.tasks names a column twice: {names}")
    columns = [header.index(c) for c in names]
    hint = "labels must be numbers (0/1 for a binary task), blank for missing" + (
        "" if task_cols else "; if it is not a task, name the task columns with data.tasks=COL[,COL]")
    smiles, blocks = [], []
    block, r = np.empty((LABEL_BLOCK, len(names)), dtype=np.float32), 0
    for line, row in numbered:
        smiles.append(row[smiles_index].strip())
        for j, c in enumerate(columns):
            value = QUICK_LABELS.get(row[c])
            block[r, j] = value if value is not None else parse_number(
                row[c], path, line, names[j], hint)
        r += 1
        if r == LABEL_BLOCK:
            blocks.append(block)
            block, r = np.empty_like(block), 0
    blocks.append(block[:r])
    return smiles, names, np.concatenate(blocks) if len(blocks) > 1 else block[:r].copy()


def usable_cores() -> int:
    """The CPU cores this process may run on (os.sched_getaffinity where the system has it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def chunked_map(fn: Callable[[list], object], items: list, workers: int, desc: str,
                chunk: int | None = None) -> Iterator[tuple[int, object]]:
    """(start, fn(items[start:start + chunk])) for consecutive chunks (default CHUNK items), in order.
    workers: processes (0 = every usable core); with one, or a single chunk, fn runs in this process. A
    progress bar counts the items on a terminal; a log gets one line from LOG_FROM items. fn must be a
    module-level function (or a partial of one)."""
    from tqdm import tqdm
    chunk = chunk or CHUNK
    starts = range(0, len(items), chunk)
    workers = min(workers or usable_cores(), len(starts))
    if multiprocessing.current_process().daemon:  # a pool's worker may not start processes of its own
        workers = 1
    if len(items) >= LOG_FROM:  # a long wait: say so once, also where no progress bar shows
        log.info("%s of %d molecules in %d process%s", desc, len(items), workers, "es" if workers > 1 else "")
    parts = (items[i:i + chunk] for i in starts)
    with tqdm(total=len(items), desc=desc, unit="mol", disable=None, leave=False) as bar:
        if workers <= 1:
            results = map(fn, parts)
            pool = None
        else:  # fork where the system has it: the workers start at once, without importing anything again
            methods = multiprocessing.get_all_start_methods()
            pool = multiprocessing.get_context("fork" if "fork" in methods else None).Pool(workers)
            results = pool.imap(fn, parts)
        try:
            for start, result in zip(starts, results):
                bar.update(min(chunk, len(items) - start))
                yield start, result
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()


def _fingerprint_chunk(smiles: list[str], radius: int, bits: int, counts: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """One chunk's (x, valid, molecules with a count above 255) as fingerprints() describes them."""
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    gen = _generator(radius, bits)
    dense = np.zeros((len(smiles), bits), dtype=np.uint32 if counts else np.uint8)
    valid = np.zeros(len(smiles), dtype=bool)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s) if s else None
        if mol is not None:
            dense[i] = gen.GetCountFingerprintAsNumPy(mol) if counts else gen.GetFingerprintAsNumPy(mol)
            valid[i] = True
    if counts:
        clipped = int((dense > 255).any(1).sum())
        return np.minimum(dense, 255).astype(np.uint8), valid, clipped
    return np.packbits(dense, axis=1), valid, 0


def fingerprints(smiles: list[str], cfg: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """SMILES -> (x, valid (n,) bool): x (n, ceil(bits / 8)) uint8 of bits packed as np.packbits does, or
    (n, bits) uint8 counts (saturating at 255, with a warning) when cfg.counts; an invalid row is all zero.
    Computed in cfg.workers processes, chunk by chunk; any number of workers gives the same arrays."""
    x = np.zeros((len(smiles), cfg.bits if cfg.counts else (cfg.bits + 7) // 8), dtype=np.uint8)
    valid = np.zeros(len(smiles), dtype=bool)
    clipped = 0
    one = functools.partial(_fingerprint_chunk, radius=cfg.radius, bits=cfg.bits, counts=cfg.counts)
    for start, (xc, vc, cc) in chunked_map(one, smiles, cfg.workers, "fingerprints"):
        x[start:start + len(vc)], valid[start:start + len(vc)] = xc, vc
        clipped += cc
    if clipped:
        log.warning("%d molecule(s) have a Morgan count above 255; their counts are kept as 255", clipped)
    return x, valid


def as_rows(x: np.ndarray, cfg: FingerprintConfig) -> PackedRows:
    """fingerprints()'s x as PackedRows (n, bits)."""
    return PackedRows(torch.from_numpy(x), None if cfg.counts else cfg.bits)


def featurize(smiles: list[str], cfg: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """SMILES -> (fingerprints (n, bits) float32, valid (n,) bool); invalid rows are all zero. The values
    training reads (counts saturate at 255 as there)."""
    x, valid = fingerprints(smiles, cfg)
    return as_rows(x, cfg).dense().numpy(), valid


def _generator(radius: int, bits: int):
    from rdkit.Chem import rdFingerprintGenerator
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)


def _scaffold_chunk(smiles: list[str]) -> list[str]:
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold
    return [MurckoScaffold.MurckoScaffoldSmiles(mol=Chem.MolFromSmiles(s), includeChirality=False) for s in smiles]


def scaffold_split_indices(smiles: list[str], fractions=(0.8, 0.1, 0.1), workers: int = 1) -> tuple[np.ndarray, ...]:
    """MoleculeNet's scaffold split: group by Bemis-Murcko scaffold, put the groups, largest first
    (ties: earliest first), into train until it would pass its share, then val, then test. The
    scaffolds are computed in `workers` processes (0 = every usable core)."""
    groups: dict[str, list[int]] = {}
    for start, scaffolds in chunked_map(_scaffold_chunk, smiles, workers, "scaffolds"):
        for i, scaffold in enumerate(scaffolds, start):
            groups.setdefault(scaffold, []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (len(g), -g[0]), reverse=True)
    n = len(smiles)
    train_cut, val_cut = fractions[0] * n, (fractions[0] + fractions[1]) * n
    train, val, test = [], [], []
    for g in ordered:
        if len(train) + len(g) > train_cut:
            (test if len(train) + len(val) + len(g) > val_cut else val).extend(g)
        else:
            train.extend(g)
    return np.array(train, dtype=int), np.array(val, dtype=int), np.array(test, dtype=int)


def cached_features(path: Path, smiles: list[str], cfg: MoleculeNetConfig) -> tuple[PackedRows | GraphRows, np.ndarray]:
    """fingerprints(smiles, cfg) as (PackedRows (n, bits), valid (n,)), kept in the cache as
    morgan-KEY-vFORMAT.npz (KEY: the file's sha256 and the featuriser settings) unless cfg.cache is false.
    An entry of an older format has another name: it is not read, the features are built again.
    With cfg.encoder=dmpnn: the molecules' graphs (GraphRows), cached by graphs.cached_graphs."""
    check_encoder(cfg)
    if cfg.encoder == "dmpnn":
        return cached_graphs(path, smiles, cfg)
    if not cfg.cache:
        x, valid = fingerprints(smiles, cfg)
        return as_rows(x, cfg), valid
    key = f"{file_hash(path)[:16]}-{cfg.smiles_col}-r{cfg.radius}-b{cfg.bits}-{'counts' if cfg.counts else 'bits'}"

    def build() -> dict[str, np.ndarray]:
        x, valid = fingerprints(smiles, cfg)
        return {"x": x, "valid": valid}

    width = cfg.bits if cfg.counts else (cfg.bits + 7) // 8
    arrays = cached_arrays(f"morgan-{key}-v{FORMAT}.npz", build, {"x": (len(smiles), width), "valid": (len(smiles),)})
    return as_rows(np.asarray(arrays["x"], dtype=np.uint8), cfg), arrays["valid"].astype(bool)


def load_csv(cfg: MoleculeNetConfig, name: str, default: Path | None = None) -> MultiTaskData:
    """The CSV at cfg.path (or `default`) as a MultiTaskData with one input "x": fingerprints, or graphs."""
    check_fractions(cfg.fractions)
    if not cfg.path and default is None:
        raise ConfigError(f"data set {name!r} needs a file: pass data.path=my.csv")
    path = Path(cfg.path) if cfg.path else default
    smiles, names, labels = read_csv(path, cfg.smiles_col, tuple(cfg.tasks))
    x, valid = cached_features(path, smiles, cfg)
    dropped = int((~valid).sum())
    if dropped:
        log.warning("%s: dropped %d of %d rows whose SMILES RDKit cannot parse", path.name, dropped, len(smiles))
        keep = np.flatnonzero(valid)
        x, labels, smiles = x.rows(keep), labels[keep], [smiles[i] for i in keep]
    if len(smiles) < 3:
        raise ConfigError(f"{path}: only {len(smiles)} valid molecules; need at least 3 to split")
    empty = [c for j, c in enumerate(names) if np.isnan(labels[:, j]).all()]
    if empty and cfg.tasks:
        raise ConfigError(f"{path}: task column(s) {empty} have no labels (on rows with a valid SMILES); "
                          "drop them from data.tasks")
    if empty:
        log.warning("%s: dropped %d task column(s) without any label: %s", path.name, len(empty), column_list(empty))
        names, labels = [c for c in names if c not in empty], labels[:, [c not in empty for c in names]]
        if not names:
            raise ConfigError(f"{path}: no task column has a label")
    values = [np.unique(labels[~np.isnan(labels[:, j]), j]) for j in range(len(names))]
    kinds = ["binary" if set(v.tolist()) <= {0.0, 1.0} else "regression" for v in values]
    few = [f"{c} ({', '.join(f'{x:g}' for x in v)})" for c, k, v in zip(names, kinds, values) if k == "regression" and len(v) <= 3]
    if few:
        log.warning("%s: read as regression task(s), with only a few distinct values: %s; a class label here is 0/1 "
                    "(binary), and a column that is not a task is left out by naming the tasks with data.tasks=",
                    path.name, "; ".join(few[:5]))
    if cfg.fake_tasks > 0:
        fake = fake_correlated_labels(len(smiles), cfg.fake_tasks, cfg.fake_rho, cfg.fake_rate, seed=cfg.split_seed + 1)
        labels = np.concatenate([labels, fake], axis=1)
        names = names + [f"fake{k}" for k in range(cfg.fake_tasks)]
        kinds = kinds + ["binary"] * cfg.fake_tasks
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: a task column is called like a fake task (fake0, fake1, ...); rename "
                              "it or select columns with data.tasks=...")
    fractions = tuple(cfg.fractions)
    if cfg.split == "scaffold":
        parts = scaffold_split_indices(smiles, fractions, cfg.workers)
    else:
        parts = random_split_indices(len(smiles), fractions, cfg.split_seed)
    check_split_sizes(parts, fractions, path)
    train, val, test = split_arrays(x, labels, names, parts)
    tasks = []
    for j, (task_name, kind) in enumerate(zip(names, kinds)):
        shift, scale = target_scale(labels[:, j], parts[0], task_name, path, table=False) if kind == "regression" \
            else (0.0, 1.0)
        tasks.append(Task(task_name, kind, shift=shift, scale=scale))
    meta = {"smiles": {s: [smiles[i] for i in p] for s, p in zip(("train", "val", "test"), parts)},
            "dropped": dropped}
    data = MultiTaskData(name, tasks, train, val, test, meta)
    if units := units_line(data, path.name):
        log.info(units)
    return data


def check_encoder(cfg: FingerprintConfig) -> None:
    if cfg.descriptors and cfg.encoder != "dmpnn":
        raise ConfigError("data.descriptors=true adds descriptors to molecule graphs: pass data.encoder=dmpnn too")


def predict_features(smiles: list[str], cfg: FingerprintConfig) -> tuple[torch.Tensor | GraphBatch, np.ndarray]:
    """SMILES (n,) -> (model input of n rows: fingerprints (n, bits) float32, or a GraphBatch with
    cfg.encoder=dmpnn; valid (n,) bool)."""
    check_encoder(cfg)
    if cfg.encoder == "dmpnn":
        rows, valid = graph_rows(smiles, cfg)
        return rows[:], valid
    x, valid = featurize(smiles, cfg)
    return torch.as_tensor(x), valid


@register_dataset("tox21", MoleculeNetConfig, "Tox21, 7,831 molecules x 12 assays (embedded)",
                  featurize=predict_features)
def load_tox21(cfg: MoleculeNetConfig) -> MultiTaskData:
    return load_csv(cfg, "tox21", embedded_tox21())


@register_dataset("moleculenet", MoleculeNetConfig, "any CSV with a SMILES column and task columns: 0/1 (binary) or numbers (regression) (data.path=)",
                  featurize=predict_features)
def load_any(cfg: MoleculeNetConfig) -> MultiTaskData:
    return load_csv(cfg, Path(cfg.path).name.split(".")[0] if cfg.path else "moleculenet")


def _downloadable(name: str):
    url, md5 = SOURCES[name]

    def load(cfg: MoleculeNetConfig) -> MultiTaskData:
        return load_csv(cfg, name, None if cfg.path else fetch(url, md5, "md5"))
    return load


for _name in ("toxcast", "sider", "clintox", "muv"):
    register_dataset(_name, MoleculeNetConfig, f"MoleculeNet {_name} (downloads on first use, or data.path=)",
                     featurize=predict_features)(_downloadable(_name))
