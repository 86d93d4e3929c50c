"""STL training-step time: the batched stl model (N networks as one grouped GEMM per layer, nn/batched.py)
against N x the step time of ONE task's network (an nn.Module mlp(), as the per-task layout had), and against
N such modules in one ModuleDict (the per-task layout itself), all measured in this run.

    .venv/bin/python benchmarks/stl.py [--sizes 12,100,617] [--in-dim 2048] [--batch 128] [--reps 3] [--threads 1]
                                       [--group-mib 16] [--phases]

A step is what Trainer does per minibatch: forward, mean_loss over the N binary tasks (labels 0/1, 10% missing),
zero_grad, backward and an Adam step (make_optimizer with the default TrainConfig), in training mode with the
default dropout. Widths are stl's defaults at each N: widths=512 capped by max_params (32 M parameters in all),
so N=12 keeps 512 and larger N get narrower networks. Inputs are 0/1 fingerprint-like rows (5% ones).
Times are CPU time (time.process_time) of this single-threaded process per step, best of --reps blocks of
consecutive steps (>= 0.3 s each, so one small network runs warm as when trained alone) after a warm-up block,
the contenders taking turns in every repetition. ratio = batched / (N x one task); GFLOP/s counts the GEMMs
of forward and backward (2*B*in*out each for forward and weight gradient, plus the input gradient of every
layer after the first).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from manytask.allocator import tune_allocator  # noqa: E402

ALLOCATOR = tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402
from torch import nn  # noqa: E402

from manytask.methods import stl  # noqa: E402
from manytask.methods.stl import STLConfig, build  # noqa: E402
from manytask.nn.mlp import mlp  # noqa: E402
from manytask.tasks import Task, mean_loss, module_key  # noqa: E402
from steps import step_fn  # noqa: E402  (benchmarks/steps.py)
from manytask.train import TrainConfig, make_optimizer  # noqa: E402


class PerTaskModules(nn.Module):
    """The per-task layout: {task: mlp()} run one after the other."""

    def __init__(self, tasks: list[Task], in_dim: int, widths: tuple[int, ...], cfg: STLConfig):
        super().__init__()
        self.tasks = tasks
        self.nets = nn.ModuleDict({module_key(t.name): mlp(in_dim, widths, cfg.activation, cfg.dropout, out_dim=1)
                                   for t in tasks})

    def forward(self, x):
        return {t.name: self.nets[module_key(t.name)](x) for t in self.tasks}


def timeit(fns: list, reps: int, block_s: float = 0.3) -> list[float]:
    """Best CPU time per step of each function, timed over blocks of consecutive steps (at least block_s,
    so that a small network runs warm, as it does when trained alone); the functions take turns every
    repetition so that pressure from other processes falls on all alike. One warm-up block each."""
    steps = []
    for fn in fns:
        t0 = time.process_time()
        fn()
        steps.append(max(1, min(200, math.ceil(block_s / max(time.process_time() - t0, 1e-6)))))
        for _ in range(steps[-1]):
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for j, fn in enumerate(fns):
            t0 = time.process_time()
            for _ in range(steps[j]):
                fn()
            best[j] = min(best[j], (time.process_time() - t0) / steps[j])
    return best


def phases(model: nn.Module, tasks: list[Task], x: torch.Tensor, y: dict[str, torch.Tensor], reps: int) -> list[float]:
    """Best CPU time of forward, loss, backward (with zero_grad) and optimizer step, one step at a time."""
    opt = make_optimizer(model.parameters(), TrainConfig())
    model.train()
    best = [float("inf")] * 4
    for rep in range(reps + 1):  # the first is a warm-up
        ts = [time.process_time()]
        out = model(x)
        ts.append(time.process_time())
        loss = mean_loss(tasks, out, y)
        ts.append(time.process_time())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ts.append(time.process_time())
        opt.step()
        ts.append(time.process_time())
        if rep:
            best = [min(b, t1 - t0) for b, t0, t1 in zip(best, ts, ts[1:])]
    return best


def gemm_flops(batch: int, dims: tuple[int, ...]) -> int:
    """FLOPs of one network's forward + backward GEMMs; the input itself needs no gradient."""
    pairs = list(zip(dims[:-1], dims[1:]))
    return sum(2 * batch * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(pairs))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="12,100,617", help="numbers of tasks N")
    ap.add_argument("--in-dim", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group-mib", type=float, default=stl.GROUP_BYTES / 2**20,
                    help="stl's GROUP_BYTES in MiB: largest stacked weight of one batched group")
    ap.add_argument("--phases", action="store_true", help="also print forward/loss/backward/optimizer times")
    args = ap.parse_args(argv)
    stl.GROUP_BYTES = int(args.group_mib * 2**20)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, D, cfg = args.batch, args.in_dim, STLConfig()
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {B}, {D} inputs, stl defaults "
          f"(widths={','.join(map(str, cfg.widths))}, max_params={cfg.max_params}, dropout={cfg.dropout}, "
          f"GROUP_BYTES={stl.GROUP_BYTES / 2**20:g} MiB), "
          f"CPU time per step, best of {args.reps} blocks after a warm-up block, allocator tuned: {ALLOCATOR}")
    head = (f"{'N':>4} {'width':>6} {'params':>11} {'one ms':>8} {'N x one ms':>11} {'batched ms':>11} {'ratio':>6} "
            f"{'modules ms':>11} {'speed-up':>9} {'one GF/s':>9} {'batched GF/s':>13}")
    print(head)
    print("-" * len(head))
    rows = []
    for N in map(int, args.sizes.split(",")):
        tasks = [Task(f"t{i}", "binary") for i in range(N)]
        x = (torch.rand(B, D) < 0.05).float()
        y = {t.name: torch.randint(0, 2, (B,)).float().masked_fill(torch.rand(B) < 0.1, float("nan")) for t in tasks}
        batched = build(tasks, {"x": (D,)}, cfg)
        widths = batched.widths[tasks[0].name]
        one = PerTaskModules(tasks[:1], D, widths, cfg)
        modules = PerTaskModules(tasks, D, widths, cfg)
        t_one, t_batched, t_modules = timeit([step_fn(one, tasks[:1], x, y), step_fn(batched, tasks, x, y),
                                              step_fn(modules, tasks, x, y)], args.reps)
        flops = gemm_flops(B, (D, *widths, 1))
        row = {"N": N, "width": widths, "params": sum(p.numel() for p in batched.parameters()), "one_s": t_one,
               "batched_s": t_batched, "modules_s": t_modules, "ratio": t_batched / (N * t_one)}
        rows.append(row)
        print(f"{N:>4} {','.join(map(str, widths)):>6} {row['params']:>11,} {1e3 * t_one:>8.2f} {1e3 * N * t_one:>11.1f} "
              f"{1e3 * t_batched:>11.1f} {row['ratio']:>6.3f} {1e3 * t_modules:>11.1f} {t_modules / t_batched:>8.2f}x "
              f"{flops / t_one / 1e9:>9.1f} {N * flops / t_batched / 1e9:>13.1f}")
        if args.phases:
            for name, model in (("batched", batched), ("modules", modules)):
                fwd, loss, bwd, opt = (1e3 * t for t in phases(model, tasks, x, y, args.reps))
                print(f"     {name:<8} forward {fwd:.1f} ms, loss {loss:.1f} ms, backward {bwd:.1f} ms, "
                      f"optimizer step {opt:.1f} ms")
        del batched, one, modules
    return rows


if __name__ == "__main__":
    main()
