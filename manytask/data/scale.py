"""A synthetic molecule data set of any size, for scale tests without a download: N binary tasks in
planted groups over R rows of real SMILES, written as a MoleculeNet CSV and read by the molecule pipeline.

Molecules: the valid, distinct SMILES of the embedded Tox21 (7,823 of its 7,831 rows) and of any CSVs
named in `sources` (a `smiles` column; MoleculeNet's ToxCast file brings the pool to 15,101), in a seeded
order, cycled to reach R rows: beyond the pool's size molecules repeat (each repeat draws its own label
noise, so a repeated molecule may differ in labels; a random split then puts copies of a molecule in
more than one split).

Labels: the tasks form `groups` contiguous groups. Group g has a latent score z_g(m) = bits(m) . w_g
over the molecule's Morgan bits (radius 2, 2048 bits), w_g ~ N(0, I); over the pool the scores are
centred, made uncorrelated across groups (QR) and scaled to unit variance. Task t of group g is
1[sqrt(rho) z_g(m) + sqrt(1 - rho) e > c_t] with e ~ N(0, 1) fresh for every row and task, and c_t the
normal quantile of its positive rate (drawn from U(0.1, 0.4)); each label is blank with probability
`missing`. Tasks in a group correlate through z_g (latent correlation rho); tasks of different groups
are independent up to sampling noise.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ..config import ConfigError, option
from ..files import atomic_write
from ..registry import register_dataset
from .base import MultiTaskData, stream_csv_rows
from .cache import GENERATED, cache_dir, cached_arrays, file_lock
from .download import file_hash
from .moleculenet import (FORMAT, FingerprintConfig, MoleculeNetConfig, embedded_tox21, fingerprint_settings,
                          fingerprints, load_csv, predict_features)

LATENT_RADIUS, LATENT_BITS = 2, 2048  # the fingerprint the latent scores read, whatever the data's settings
ROW_BLOCK = 65536  # rows generated and written at a time
RATES = (0.1, 0.4)  # range of the tasks' positive rates


def task_groups(tasks: int, groups: int) -> np.ndarray:
    """(tasks,) int: the planted group of each task, contiguous blocks of (nearly) equal size."""
    return np.arange(tasks) * groups // tasks


def task_names(tasks: int, groups: int) -> list[str]:
    """Column names: t00_g0, t01_g0, ..., the task's number and its planted group."""
    width = len(str(tasks - 1))
    return [f"t{t:0{width}d}_g{g}" for t, g in enumerate(task_groups(tasks, groups))]


def smiles_pool(sources: tuple[str, ...] = (), workers: int = 1) -> tuple[list[str], np.ndarray]:
    """The distinct SMILES of the embedded Tox21 and the `sources` CSVs that RDKit reads, in file order,
    with their latent-score fingerprints (kept in the cache): (smiles (P,), bits (P, LATENT_BITS / 8)
    packed uint8)."""
    seen: dict[str, None] = {}
    for path in (embedded_tox21(), *map(Path, sources)):
        header, rows = stream_csv_rows(path)
        lower = [h.lower() for h in header]
        if "smiles" not in lower:
            raise ConfigError(f"{path} has no smiles column; its columns are {', '.join(header[:10])}")
        column = lower.index("smiles")
        seen.update((row[column].strip(), None) for _, row in rows if row[column].strip())
    smiles = list(seen)
    key = hashlib.sha256("".join(file_hash(p) for p in (embedded_tox21(), *map(Path, sources))).encode()).hexdigest()

    def build() -> dict[str, np.ndarray]:
        x, valid = fingerprints(smiles, FingerprintConfig(radius=LATENT_RADIUS, bits=LATENT_BITS, workers=workers))
        return {"x": x, "valid": valid}

    arrays = cached_arrays(f"morgan-pool-{key[:16]}-r{LATENT_RADIUS}-b{LATENT_BITS}-v{FORMAT}.npz", build,
                           {"x": (len(smiles), LATENT_BITS // 8), "valid": (len(smiles),)})
    valid = arrays["valid"].astype(bool)
    return [s for s, ok in zip(smiles, valid) if ok], arrays["x"][valid]


def latent_scores(bits: np.ndarray, groups: int, rng: np.random.Generator) -> np.ndarray:
    """(P, groups) scores of the pool's molecules, one column per group: packed bits (P, bytes) times
    Gaussian weights, centred, uncorrelated across columns, unit variance."""
    if len(bits) <= groups:
        raise ConfigError(f"the SMILES pool has {len(bits)} molecules; need more than groups={groups}")
    w = rng.standard_normal((LATENT_BITS, groups))  # (bits, groups)
    z = np.concatenate([np.unpackbits(bits[i:i + 4096], axis=1)[:, :LATENT_BITS] @ w
                        for i in range(0, len(bits), 4096)])  # (P, groups)
    q, _ = np.linalg.qr(z - z.mean(0))  # orthonormal columns: uncorrelated, centred
    return q * np.sqrt(len(bits))


def write_scale_csv(path: Path | str, tasks: int, rows: int, groups: int, seed: int, missing: float,
                    rho: float = 0.8, sources: tuple[str, ...] = (), workers: int = 1) -> Path:
    """Write the synthetic data set as a MoleculeNet CSV: a `smiles` column and `tasks` columns named by
    task_names() holding 0, 1 or blank. Seeded: the same arguments write the same file. Rows are made
    and written ROW_BLOCK at a time (memory does not grow with `rows`). -> path."""
    if tasks < 1 or rows < 1 or not 1 <= groups <= tasks or not 0 <= missing < 1 or not 0 <= rho <= 1:
        raise ConfigError(f"scale data: need tasks >= 1, rows >= 1, 1 <= groups <= tasks, 0 <= missing < 1 and "
                          f"0 <= rho <= 1; got tasks={tasks}, rows={rows}, groups={groups}, missing={missing}, "
                          f"rho={rho}")
    path = Path(path)
    smiles, bits = smiles_pool(tuple(sources), workers)
    rng = np.random.default_rng(seed)
    z = latent_scores(bits, groups, rng)[:, task_groups(tasks, groups)]  # (P, tasks)
    cut = np.array([NormalDist().inv_cdf(1 - r) for r in rng.uniform(*RATES, size=tasks)])  # (tasks,)
    order = rng.permutation(len(smiles))
    cells = np.array(["0", "1", ""])

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        text.write(",".join(["smiles", *task_names(tasks, groups)]) + "\n")
        for start in range(0, rows, ROW_BLOCK):
            mol = order[np.arange(start, min(start + ROW_BLOCK, rows)) % len(smiles)]  # (b,)
            score = np.sqrt(rho) * z[mol] + np.sqrt(1 - rho) * rng.standard_normal((len(mol), tasks))  # (b, tasks)
            code = (score > cut).astype(np.int64)
            code[rng.random(code.shape) < missing] = 2
            labels = cells[code]  # (b, tasks) strings
            text.write("".join(f"{smiles[m]},{','.join(row)}\n" for m, row in zip(mol, labels.tolist())))
        text.flush()
        text.detach()

    atomic_write(path, write)
    return path


@dataclass
class ScaleConfig(FingerprintConfig):
    n_tasks: int = option(12, "number of binary tasks", low=1)
    rows: int = option(2000, "rows; the SMILES pool (Tox21's distinct molecules, plus data.sources) is cycled to "
                             "reach it", low=3)
    groups: int = option(3, "planted task groups: tasks of a group share a latent score", low=1)
    seed: int = option(0, "seed of the latent scores, the molecule order and the labels", low=0)
    missing: float = option(0.2, "fraction of labels left blank", low=0, high=1, high_open=True)
    rho: float = option(0.8, "correlation of the latent scores of two tasks in one group", low=0, high=1)
    sources: tuple[str, ...] = option((), "more CSVs with a smiles column whose SMILES join Tox21's")

    @property
    def smiles_col(self) -> str:
        """The generated CSV's SMILES column: the column `manytask predict` reads from an input CSV."""
        return "smiles"


def scale_csv(cfg: ScaleConfig) -> Path:
    """The data set's CSV in the cache directory (generated/scale-KEY.csv), written the first time; KEY
    holds every setting that changes the file (and the sources' sha256)."""
    sources = hashlib.sha256("".join(file_hash(Path(s)) for s in cfg.sources).encode()).hexdigest()[:12]
    key = (f"t{cfg.n_tasks}-r{cfg.rows}-g{cfg.groups}-s{cfg.seed}-m{cfg.missing:g}-rho{cfg.rho:g}"
           + (f"-{sources}" if cfg.sources else ""))
    path = cache_dir() / GENERATED / f"scale-{key}.csv"
    path.parent.mkdir(exist_ok=True)
    with file_lock(path):
        if not path.exists():
            write_scale_csv(path, cfg.n_tasks, cfg.rows, cfg.groups, cfg.seed, cfg.missing, cfg.rho, cfg.sources,
                            cfg.workers)
    return path


@register_dataset("scale", ScaleConfig, "synthetic, any size: n_tasks tasks in planted groups over `rows` rows of "
                  "real SMILES (no download)", featurize=predict_features)
def load_scale(cfg: ScaleConfig) -> MultiTaskData:
    """meta["groups"]: {task: planted group}."""
    if cfg.groups > cfg.n_tasks:
        raise ConfigError(f"data.groups={cfg.groups} is more than data.n_tasks={cfg.n_tasks}; lower it")
    for s in cfg.sources:
        if not Path(s).exists():
            raise ConfigError(f"data.sources: {s} does not exist; pass CSVs with a smiles column")
    data = load_csv(MoleculeNetConfig(path=str(scale_csv(cfg)), **fingerprint_settings(cfg)), "scale")
    data.meta["groups"] = dict(zip(task_names(cfg.n_tasks, cfg.groups), task_groups(cfg.n_tasks, cfg.groups).tolist()))
    return data
