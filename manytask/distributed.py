"""Several processes training one model: torch.distributed and DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 -m manytask train tox21 hard_sharing
    torchrun --nnodes=2 --node-rank=R --nproc-per-node=G --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        -m manytask train tox21 hard_sharing

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous for every process it starts; `start` joins the
process group (gloo on the CPU, nccl on CUDA, one device per process: cuda:LOCAL_RANK). Without torchrun
(no WORLD_SIZE, or 1) nothing here does anything and every function answers as for one process.

How a run is shared (train.Trainer): every process holds the whole data set and the same seeded epoch
permutation; each takes a disjoint share of every global minibatch of `batch_size` examples; DDP averages
the gradients in backward; the loss of each share is weighted so that this average is the gradient of the
global minibatch's loss (tasks with missing labels included). Validation runs on rank 0 and its outcome
(the metrics row and the early-stopping decision) is broadcast. Only rank 0 writes the run directory.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.distributed as dist


def launched() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """The process group is up: several processes train together."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0, the process that writes (true without torchrun)."""
    return rank() == 0


def start(device: str = "auto") -> None:
    """Join torchrun's process group, once: nccl when this process trains on CUDA, gloo otherwise. A no-op
    without torchrun or when the group is up already."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """The device of this process: cuda:LOCAL_RANK for a CUDA run under torchrun, else `device`."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over every process (float64 on the CPU or the process's device); the tensor itself alone."""
    if active():
        dist.all_reduce(values)
    return values


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every process (picklable values)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def local_main_first() -> Iterator[None]:
    """The block runs on each machine's local rank 0 first, then on the other processes (e.g. featurising into
    the shared cache once per machine)."""
    first = local_rank() == 0
    if active() and not first:
        dist.barrier()
    try:
        yield
    finally:
        if active() and first:
            dist.barrier()


def shard(n: int) -> slice:
    """This process's share of a global minibatch of n rows: every world_size-th row from its rank."""
    return slice(rank(), n, world_size())
