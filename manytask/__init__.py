"""manytask: deep multi-task learning in PyTorch.

The public API on one screen:
    Task, MultiTaskData, Split          what to predict and the data for it
    TrainConfig, Trainer, Hooks         the one training loop and the hooks a method may override
    register_method / _dataset / _experiment, get_method, get_dataset, get_experiment, load_all
    resolve, train_run, evaluate_run, predict_run, load_run   runs on disk
    task_metrics, mean_over_tasks, delta_m                    metrics
"""
import os

# PyTorch's CPU allocator hands large tensors back to the OS when they are freed and page-faults them in
# again on the next step; with transparent huge pages it takes 512x fewer faults. This matters for big
# fresh gradients such as the ICNN layer's weight gradient (150 MB at N=12, width 512: 0.83x -> 1.10-1.14x
# the per-pair reference; 1 GB at N=32: 0.68x -> 0.98x; docs/icnn.md). It must be set before torch
# allocates anything; THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .config import ConfigError  # noqa: E402
from .data.base import MultiTaskData, Split
from .metrics import delta_m, mean_over_tasks, task_metrics
from .registry import (get_dataset, get_experiment, get_method, load_all, register_dataset,
                       register_experiment, register_method)
from .runs import evaluate_run, load_run, predict_run, resolve, train_run
from .tasks import Task
from .train import Hooks, TrainConfig, Trainer

__all__ = ["ConfigError", "MultiTaskData", "Split", "Task", "TrainConfig", "Trainer", "Hooks",
           "register_method", "register_dataset", "register_experiment", "get_method", "get_dataset",
           "get_experiment", "load_all", "resolve", "train_run", "evaluate_run", "predict_run", "load_run",
           "task_metrics", "mean_over_tasks", "delta_m"]
__version__ = "0.1.0"
