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


def _keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks of up to 32 MiB in the heap (mmap threshold 32 MiB, its
    maximum; trim threshold 1 GiB) instead of unmapping them and page-faulting them in again on the next
    step. A training step frees and re-allocates the same gradients and activations every time; for the ICNN
    layer at N=4, width 256 this was ~1,000 page faults a step and the difference between 0.95x and
    1.10x the per-pair reference (benchmarks/icnn_layer.py, docs/icnn.md). Linux/glibc only (PyTorch's own
    CPU-tuning advice is to preload jemalloc or tcmalloc, which do this too); MANYTASK_MALLOC_TUNE=0 opts out.
    Returns whether the settings were applied."""
    import ctypes
    import platform

    if os.environ.get("MANYTASK_MALLOC_TUNE", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


MALLOC_TUNED = _keep_freed_memory()

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
