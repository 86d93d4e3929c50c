"""manytask: deep multi-task learning in PyTorch.

The public API on one screen (each name is imported from its module on first use, so `import manytask`
is quick, imports no torch and changes nothing in the process):

    create_model(name, tasks, input_shapes, **cfg) -> (model, hooks)   a registered method's model
    load_dataset(name, **cfg) -> MultiTaskData                          a registered data set
    Task, MultiTaskData, Split          what to predict and the data for it
    TrainConfig, Trainer, Hooks         the one training loop and the hooks a method may override
    register_method / _dataset / _experiment, get_method, get_dataset, get_experiment, load_all
    resolve, train_run, evaluate_run, predict_run, load_run   runs on disk
    task_metrics, mean_over_tasks, delta_m                    metrics
    tune_allocator                      faster CPU allocations; call it before importing torch
    ConfigError                         a bad key, value, data set or file

The layers that methods compose are in manytask.nn.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {  # public name -> the module that defines it
    "create_model": "manytask.runs", "load_dataset": "manytask.runs", "resolve": "manytask.runs",
    "train_run": "manytask.runs", "evaluate_run": "manytask.runs", "predict_run": "manytask.runs",
    "load_run": "manytask.runs",
    "Task": "manytask.tasks", "MultiTaskData": "manytask.data.base", "Split": "manytask.data.base",
    "TrainConfig": "manytask.train", "Trainer": "manytask.train", "Hooks": "manytask.train",
    "register_method": "manytask.registry", "register_dataset": "manytask.registry",
    "register_experiment": "manytask.registry", "get_method": "manytask.registry",
    "get_dataset": "manytask.registry", "get_experiment": "manytask.registry", "load_all": "manytask.registry",
    "task_metrics": "manytask.metrics", "mean_over_tasks": "manytask.metrics", "delta_m": "manytask.metrics",
    "tune_allocator": "manytask.allocator",
    "ConfigError": "manytask.config",
}
__all__ = list(_API)

if TYPE_CHECKING:
    from .allocator import tune_allocator
    from .config import ConfigError
    from .data.base import MultiTaskData, Split
    from .metrics import delta_m, mean_over_tasks, task_metrics
    from .registry import (get_dataset, get_experiment, get_method, load_all, register_dataset,
                           register_experiment, register_method)
    from .runs import create_model, evaluate_run, load_dataset, load_run, predict_run, resolve, train_run
    from .tasks import Task
    from .train import Hooks, TrainConfig, Trainer


def __getattr__(name: str) -> Any:
    """manytask.NAME: import NAME's module now and remember the value (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'manytask' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
