"""Synthetic tasks: fake correlated binary tasks (Ramabaja, Interconnected Neural Networks for Multi Task
Learning, 2018, scenario 2 and section 5.3) and the grouped linear regression benchmark of Kang, Grauman &
Sha, Learning with Whom to Share in Multi-task Feature Learning, 2011, as used by Meyerson & Miikkulainen,
Modular Universal Reparameterization: Deep Multi-Task Learning Across Diverse Domains, 2019."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, option
from ..registry import register_dataset
from ..tasks import Task
from .base import MultiTaskData, Split


def fake_correlated_labels(n: int, k: int, rho: float = 0.8, rate: float = 0.1,
                           seed: int = 0) -> np.ndarray:
    """(n, k) binary labels that are correlated with each other and independent of any input.

    Each column thresholds sqrt(rho) z + sqrt(1 - rho) e_j, with one latent z ~ N(0, 1) per example
    shared by all columns and private noise e_j ~ N(0, 1); the threshold gives a positive rate of `rate`.
    """
    if not 0 <= rho <= 1 or not 0 < rate < 1:
        raise ConfigError(f"need 0 <= rho <= 1 and 0 < rate < 1, got rho={rho}, rate={rate}")
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 1))  # (n, 1) shared latent
    score = np.sqrt(rho) * z + np.sqrt(1 - rho) * rng.standard_normal((n, k))  # (n, k)
    return (score > np.quantile(score, 1 - rate, axis=0)).astype(np.float32)


# ---- grouped linear regression (Kang, Grauman & Sha 2011; the MUiR poster's synthetic benchmark) ----

def grouped_regression_arrays(tasks: int = 30, groups: int = 3, dim: int = 20, train: int = 15, test: int = 50,
                              noise: float = 0.0, scale: tuple[float, float] = (0.5, 1.0),
                              seed: int = 0) -> dict[str, np.ndarray]:
    """Linear tasks y = x . w_t (+ noise), x ~ U(-1, 1)^dim, no bias; `groups` groups of consecutive tasks.
    Inside group g every w_t = a_t v_g with v_g ~ N(0, I) and a_t ~ U(scale) > 0 (rank one).

    Returns train_X (tasks, train, dim), train_Y (tasks, train), test_X (tasks, test, dim),
    test_Y (tasks, test), groups (tasks,) and W (tasks, dim), all float32 except groups (int64).
    """
    if tasks < 1 or groups < 1 or tasks % groups or dim < 1 or train < 2 or test < 1 or noise < 0:
        raise ConfigError(f"need tasks divisible by groups, dim >= 1, train >= 2, test >= 1 and noise >= 0; got "
                          f"tasks={tasks}, groups={groups}, dim={dim}, train={train}, test={test}, noise={noise}")
    rng = np.random.default_rng(seed)
    group = np.repeat(np.arange(groups), tasks // groups)  # (tasks,)
    v = rng.standard_normal((groups, dim))  # (groups, dim)
    w = rng.uniform(*scale, size=(tasks, 1)) * v[group]  # (tasks, dim)
    out = {"groups": group, "W": w.astype(np.float32)}
    for split, n in (("train", train), ("test", test)):
        x = rng.uniform(-1, 1, size=(tasks, n, dim))  # (tasks, n, dim)
        y = np.einsum("tnd,td->tn", x, w) + noise * rng.standard_normal((tasks, n))  # (tasks, n)
        out[f"{split}_X"], out[f"{split}_Y"] = x.astype(np.float32), y.astype(np.float32)
    return out


def write_grouped_regression(path: str | Path, with_groups: bool = True, **draw) -> Path:
    """A new draw of grouped_regression_arrays(**draw) (seed=, noise=, ...) as an .npz that data.path= reads:
    train_X, train_Y, test_X, test_Y and, with `with_groups`, the true group of every task (without it,
    the file is what a user with unlabelled tasks has). -> the path written."""
    arrays = grouped_regression_arrays(**draw)
    keep = ("train_X", "train_Y", "test_X", "test_Y") + (("groups",) if with_groups else ())
    np.savez(path, **{k: arrays[k] for k in keep})
    return Path(path)


def grouped_regression_data(arrays: dict[str, np.ndarray], val: int = 5,
                            name: str = "grouped_regression") -> MultiTaskData:
    """Arrays as from grouped_regression_arrays (or an .npz with train_X, train_Y, test_X, test_Y and
    optionally groups) -> MultiTaskData with one input per task: task "tNN" reads input "tNN" (n, dim).
    The last `val` training points of each task are the validation split. meta["groups"] holds the
    group of every task when known."""
    need = ("train_X", "train_Y", "test_X", "test_Y")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise ConfigError(f"grouped regression arrays lack {missing}; need train_X (tasks, n, d), train_Y (tasks, n), "
                          "test_X, test_Y")
    train_x, train_y, test_x, test_y = (np.asarray(arrays[k], dtype=np.float32) for k in need)
    if train_x.ndim != 3 or test_x.ndim != 3 or train_y.shape != train_x.shape[:2] \
            or test_y.shape != test_x.shape[:2] or train_x.shape[0] != test_x.shape[0] \
            or train_x.shape[2] != test_x.shape[2]:
        raise ConfigError(f"grouped regression arrays have inconsistent shapes: train_X {train_x.shape}, "
                          f"train_Y {train_y.shape}, test_X {test_x.shape}, test_Y {test_y.shape}; "
                          "need (tasks, n, d) and (tasks, n)")
    if not 0 < val < train_x.shape[1]:
        raise ConfigError(f"data.val={val}: need 0 < val < {train_x.shape[1]} training points per task")
    names = [f"t{i:02d}" for i in range(train_x.shape[0])]
    tasks = [Task(n, "regression", input=n) for n in names]

    def per_task(x, y):  # x (tasks, n, d), y (tasks, n) -> one input and one label vector per task
        return Split({n: torch.as_tensor(x[i]) for i, n in enumerate(names)},
                     {n: torch.as_tensor(y[i]) for i, n in enumerate(names)})

    cut = train_x.shape[1] - val
    meta = {"groups": np.asarray(arrays["groups"]).tolist()} if "groups" in arrays else {}
    return MultiTaskData(name, tasks, per_task(train_x[:, :cut], train_y[:, :cut]),
                         per_task(train_x[:, cut:], train_y[:, cut:]), per_task(test_x, test_y), meta)


@dataclass
class GroupedRegressionConfig:
    path: str = option("", "an .npz with train_X, train_Y, test_X, test_Y (optional groups); empty: generate")
    tasks: int = option(30, "number of tasks, a multiple of groups", low=1)
    groups: int = option(3, "number of rank-one groups of tasks", low=1)
    dim: int = option(20, "input dimension", low=1)
    train: int = option(15, "training points per task, including the val held out for validation", low=2)
    val: int = option(5, "of the training points per task, held out for validation (fewer than train)", low=1)
    test: int = option(50, "test points per task", low=1)
    noise: float = option(0.0, "std of Gaussian label noise (the noisy benchmark: 0.31)", low=0)
    seed: int = option(0, "seed of the weights, inputs and noise", low=0)


@register_dataset("grouped_regression", GroupedRegressionConfig,
                  "30 linear regression tasks in 3 rank-one groups, one input per task (Kang et al. 2011)")
def load_grouped_regression(cfg: GroupedRegressionConfig) -> MultiTaskData:
    if cfg.path:
        if not Path(cfg.path).exists():
            raise ConfigError(f"data.path={cfg.path}: no such file; give an .npz with train_X, train_Y, test_X, test_Y")
        with np.load(cfg.path) as z:
            arrays = {k: z[k] for k in z.files}
        return grouped_regression_data(arrays, cfg.val, Path(cfg.path).stem)
    arrays = grouped_regression_arrays(cfg.tasks, cfg.groups, cfg.dim, cfg.train, cfg.test, cfg.noise, seed=cfg.seed)
    return grouped_regression_data(arrays, cfg.val)
