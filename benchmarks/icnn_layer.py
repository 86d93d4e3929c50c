"""ICNN inter-layer speed: forward + backward of nn/interconnected.InterLayer (batched matmuls over the
destinations and the roots) against the naive per-pair reference (one Parameter per ordered pair, Python loops,
explicit detach), and a plain matmul of the same shape as the ceiling, all measured in this run.

    .venv/bin/python benchmarks/icnn_layer.py [--threads 1] [--reps 3] [--sizes 4x64,12x64,...]

Useful FLOPs of one forward + backward with isolation (the reference does exactly these):
    forward 2*B*N^2*n*m, weight gradient 2*B*N^2*n*m, input gradient through the N roots 2*B*N*n*m.
The ceiling is torch.mm((B, N*n), (N*n, N*m)) forward plus its two backward GEMMs, 6*B*N^2*n*m FLOPs.
The script calls manytask.allocator.tune_allocator() before it imports torch, as the `manytask` command does,
and prints what it applied. Transparent huge pages for PyTorch's large CPU allocations are on; run with
THP_MEM_ALLOC_ENABLE=0 to see the layer without them (its 150 MB+ weight gradient is then page-faulted
in on every step, and the layer falls behind the reference at width 512). glibc keeps freed blocks up to 32 MiB
in the heap; MANYTASK_MALLOC_TUNE=0 shows the layer without that (its 1-16 MB gradients are then page-faulted
in every step while the reference's small blocks are recycled: 0.95-1.02x at N=4).
Sizes whose weights (x5: layer, reference, their gradients, the matmul) do not fit in available memory are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from manytask.allocator import tune_allocator  # noqa: E402

ALLOCATOR = tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402
from torch import nn  # noqa: E402

from manytask.nn.interconnected import InterLayer  # noqa: E402


class NaivePairs(nn.Module):
    """The definition, literally: W(k->i) for every ordered pair, sources k != i detached."""

    def __init__(self, N: int, n: int, m: int):
        super().__init__()
        self.N = N
        self.w = nn.ParameterList(nn.Parameter(torch.randn(n, m) * 0.01) for _ in range(N * N))  # index k*N + i
        self.b = nn.Parameter(torch.zeros(N, m))

    def forward(self, a):  # (batch, N, n) -> (batch, N, m)
        outs = []
        for i in range(self.N):
            z = self.b[i]
            for k in range(self.N):
                src = a[:, k] if k == i else a[:, k].detach()
                z = z + src @ self.w[k * self.N + i]
            outs.append(z)
        return torch.stack(outs, dim=1)


def timeit(fns: list, reps: int) -> list[float]:
    """Best CPU time (time.process_time) of each function. On a shared machine wall time mostly measures
    the scheduler; the CPU time of this single-threaded process does not. The functions take turns in
    every repetition so that cache and memory-bandwidth pressure from other processes falls on all alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for j, fn in enumerate(fns):
            t0 = time.process_time()
            fn()
            best[j] = min(best[j], time.process_time() - t0)
    return best


def fwd_bwd(module: nn.Module, a: torch.Tensor, g: torch.Tensor):
    """One forward and backward with upstream gradient g, dense as in training (`.sum().backward()` would
    hand the layer a stride-0 tensor of ones, which the GEMMs first have to copy)."""
    def run():
        for p in module.parameters():
            p.grad = None
        a.grad = None
        module(a).backward(g)
    return run


def mm_ceiling(B: int, N: int, n: int, m: int):
    x = torch.randn(B, N * n, requires_grad=True)
    w = torch.randn(N * n, N * m, requires_grad=True)
    g = torch.randn(B, N * m)

    def run():
        x.grad = w.grad = None
        (x @ w).backward(g)
    return run


def available_bytes() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", default=",".join(f"{N}x{w}" for N in (4, 12, 32) for w in (64, 256, 512)),
                    help="NxWIDTH list (width = n = m)")
    args = ap.parse_args(argv)
    if args.threads != 1:
        print("note: with several threads process_time adds up all threads' CPU time, not the elapsed time")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B = args.batch
    rows = []
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {B}, CPU time, best of {args.reps} after 1 warm-up, "
          f"allocator tuned: huge pages {ALLOCATOR['huge_pages']} (THP_MEM_ALLOC_ENABLE="
          f"{os.environ['THP_MEM_ALLOC_ENABLE']}), glibc malloc {ALLOCATOR['malloc']}")
    head = f"{'N':>3} {'width':>5} {'params':>12} {'naive ms':>10} {'layer ms':>10} {'speed-up':>9} {'layer GF/s':>11} {'naive GF/s':>11} {'matmul GF/s':>12} {'of ceiling':>10}"
    print(head)
    print("-" * len(head))
    for size in args.sizes.split(","):
        N, w = (int(v) for v in size.lower().split("x"))
        n = m = w
        need = 5 * 4 * N * N * n * m + 64 * 2**20
        if need > 0.6 * available_bytes():
            print(f"{N:>3} {w:>5}  skipped: needs ~{need / 2**30:.1f} GiB, {available_bytes() / 2**30:.1f} GiB available")
            continue
        a = torch.randn(B, N, n, requires_grad=True)
        useful = 4 * B * N * N * n * m + 2 * B * N * n * m
        layer, ref = InterLayer(N, n, m, isolate=True), NaivePairs(N, n, m)
        g = torch.randn(B, N, m)
        t_layer, t_ref, t_mm = timeit([fwd_bwd(layer, a, g), fwd_bwd(ref, a, g), mm_ceiling(B, N, n, m)], args.reps)
        del layer, ref
        gf = lambda flops, t: flops / t / 1e9
        row = (N, w, n * m * N * N, t_ref * 1e3, t_layer * 1e3, t_ref / t_layer, gf(useful, t_layer), gf(useful, t_ref),
               gf(6 * B * N * N * n * m, t_mm))
        rows.append(row)
        print(f"{N:>3} {w:>5} {row[2]:>12,} {row[3]:>10.2f} {row[4]:>10.2f} {row[5]:>8.2f}x {row[6]:>11.1f} {row[7]:>11.1f} "
              f"{row[8]:>12.1f} {row[6] / row[8]:>9.0%}", flush=True)
    return rows


if __name__ == "__main__":
    main()
