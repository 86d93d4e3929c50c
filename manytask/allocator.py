"""CPU allocator settings that speed up training steps which free and re-allocate large tensors.

`import manytask` changes nothing in the process; the `manytask` command calls tune_allocator() before it
imports torch. A Python program that wants the same settings calls it itself, before torch allocates its
first CPU tensor (safest: before `import torch`):

    from manytask.allocator import tune_allocator
    applied = tune_allocator()   # {"huge_pages": True, "malloc": True} on Linux with glibc
    import torch

Two settings, each with an opt-out:
- THP_MEM_ALLOC_ENABLE=1 (PyTorch's own switch): large CPU tensors are backed by transparent huge pages,
  so a freshly allocated tensor takes 512x fewer page faults. It matters for big fresh gradients such as
  the ICNN layer's weight gradient (docs/icnn.md). PyTorch reads the variable once, at its first CPU
  allocation. A value the user set (THP_MEM_ALLOC_ENABLE=0 to turn it off) is kept.
- glibc's malloc keeps freed blocks of up to 32 MiB in the heap (mmap threshold 32 MiB, its maximum;
  trim threshold 1 GiB) instead of unmapping them and page-faulting them in again on the next step. A
  training step frees and re-allocates the same gradients and activations every time; for the ICNN layer
  at N=4, width 256 this was ~1,000 page faults a step (benchmarks/icnn_layer.py). Linux/glibc only
  (PyTorch's own CPU-tuning advice is to preload jemalloc or tcmalloc, which do this too);
  MANYTASK_MALLOC_TUNE=0 opts out.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); -> whether both were set."""
    if os.environ.get("MANYTASK_MALLOC_TUNE", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


def tune_allocator() -> dict[str, bool]:
    """Apply both settings of the module docstring, respecting the user's opt-outs; calling it again is
    harmless. -> {"huge_pages": THP_MEM_ALLOC_ENABLE is 1 for torch to read, "malloc": glibc tuned}."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return {"huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1", "malloc": keep_freed_memory()}
