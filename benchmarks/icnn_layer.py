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

Many tasks (`--many`): the whole icnn model with sparse connectors against hard_sharing at the same widths, one
training step (forward, mean task loss, backward, Adam step) on a (batch, 2048) fingerprint-sized input:

    .venv/bin/python benchmarks/icnn_layer.py --many 617 --widths 32,16 --connectors 16[,616] [--reps 3]

(--connectors lists the icnn variants: k sources per subnetwork; N-1 is the dense layer.)

Each model runs in a fresh child process of this run, so that its peak resident memory (ru_maxrss, minus the
child's resident memory before the model was built) is its own; the table prints both and the ratios
icnn / hard_sharing of peak memory and of step time (CPU time, best of --reps after a warm-up step).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def model_step(method: str, n_tasks: int, widths: str, connectors: str, batch: int, reps: int, d: int = 2048) -> dict:
    """In this (child) process: build `method` for n_tasks binary tasks on a d-dimensional input, then time
    training steps. -> {params, baseline and peak RSS in bytes, best step CPU seconds}."""
    from manytask.runs import create_model
    from manytask.tasks import Task, mean_loss
    torch.manual_seed(0)
    tasks = [Task(f"t{i}", "binary") for i in range(n_tasks)]
    x = (torch.rand(batch, d) < 0.05).float()  # sparse 0/1 like Morgan bits
    y = {t.name: (torch.rand(batch) < 0.2).float() for t in tasks}
    warm, _ = create_model(method, tasks[:2], {"x": (4,)}, widths="2,2")  # load the method's code and kernels
    mean_loss(tasks[:2], warm(x[:, :4]), y).backward()
    del warm
    base = rss_bytes()
    cfg = {"widths": widths} | ({"connectors": int(connectors)} if method == "icnn" else {})
    model, _ = create_model(method, tasks, {"x": (d,)}, **cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        mean_loss(tasks, model(x), y).backward()
        opt.step()
    (best,) = timeit([step], reps)
    extra = {}
    if method == "icnn":
        extra["connectors"] = int(model.inter[0].sources.shape[1]) if not model.inter[0].full else n_tasks - 1
    return {"method": method, "params": sum(p.numel() for p in model.parameters()), "base": base,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "step": best, **extra}


def many_tasks(args) -> dict:
    """icnn (sparse connectors) and hard_sharing at the same widths, each in a child process of this run."""
    out = {}
    for method, k in [("hard_sharing", "0")] + [("icnn", k) for k in args.connectors.split(",")]:
        cmd = [sys.executable, __file__, "--child", method, "--many", str(args.many), "--widths", args.widths,
               "--connectors", k, "--batch", str(args.batch), "--reps", str(args.reps), "--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"{method} child failed:\n{res.stderr[-2000:]}")
        out[method if method == "hard_sharing" else f"icnn k={k}"] = json.loads(res.stdout.strip().splitlines()[-1])
    hs = out["hard_sharing"]
    print(f"N={args.many} tasks, widths {args.widths}, input 2048, batch {args.batch}, {args.threads} thread(s); "
          f"one training step = forward, mean loss, backward, Adam step; CPU time best of {args.reps} after a warm-up")
    head = f"{'method':<13} {'connectors':>10} {'params':>12} {'peak RSS MB':>12} {'over base MB':>13} {'step ms':>10}"
    print(head)
    print("-" * len(head))
    for r in out.values():
        print(f"{r['method']:<13} {r.get('connectors', '-'):>10} {r['params']:>12,} {r['peak'] / 2**20:>12.0f} "
              f"{(r['peak'] - r['base']) / 2**20:>13.0f} {r['step'] * 1e3:>10.1f}")
    ratios = {}
    for name, ic in out.items():
        if name == "hard_sharing":
            continue
        ratios[name] = {"peak": ic["peak"] / hs["peak"], "over_base": (ic["peak"] - ic["base"]) / (hs["peak"] - hs["base"]),
                        "step": ic["step"] / hs["step"], "params": ic["params"] / hs["params"]}
        r = ratios[name]
        print(f"{name} / hard_sharing: peak RSS {r['peak']:.2f}x, peak over base {r['over_base']:.2f}x, "
              f"step time {r['step']:.2f}x, parameters {r['params']:.2f}x")
    return {"rows": out, "ratios": ratios}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sizes", default=",".join(f"{N}x{w}" for N in (4, 12, 32) for w in (64, 256, 512)),
                    help="NxWIDTH list (width = n = m)")
    ap.add_argument("--many", type=int, default=0, help="N tasks: whole icnn (sparse) vs hard_sharing instead")
    ap.add_argument("--widths", default="32,16", help="--many: widths of both models")
    ap.add_argument("--connectors", default="16", help="--many: icnn sources per subnetwork, a list (N-1: dense)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(model_step(args.child, args.many, args.widths, args.connectors, args.batch, args.reps)))
        return None
    if args.many:
        torch.set_num_threads(args.threads)
        return many_tasks(args)
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
