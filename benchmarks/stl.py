"""STL training-step time: the batched stl model (N networks as one computation per layer, nn/batched.py)
against N x the step time of ONE task's network (an nn.Module mlp(), as the per-task layout had), and against
N such modules in one ModuleDict (the per-task layout itself), all measured in this run.

    .venv/bin/python benchmarks/stl.py [--sizes 12,100,617] [--in-dim 2048] [--batch 128] [--density 0.05]
                                       [--widths 256,128] [--dropout 0.4] [--reps 3] [--threads 1]
                                       [--group-mib 16]
                                       [--contenders dense,stl,unfused,modules] [--phases]
                                       [--densities 0.01,0.05,0.1,0.2,0.4]
                                       [--data toxcast --data-path ../shared/data/toxcast.csv.gz]

A step is what Trainer does per minibatch: forward, the loss over the N binary tasks (labels 0/1, 10% missing),
zero_grad, backward and an Adam step, in training mode with stl's dropout. Widths are stl's at each N: its
widths (the default, or --widths) capped by max_params (32 M parameters in all), so small N keep them and
larger N get narrower networks (617 tasks: width 25 from widths 128 or 512; 25,12 from 256,128). --widths and --dropout
replace stl's defaults for every contender, the one-network reference included (always the network stl
builds for one task at that N). Inputs are 0/1 fingerprint-like rows with --density ones (default 5%; a
minibatch of the `scale` data set's 2048-bit radius-2 Morgan fingerprints has about 1.4%, and at such
densities many weight rows of the first layer get no gradient in a step). The contenders, each with
make_optimizer's Adam (the default TrainConfig) unless said otherwise:

    one       one task's mlp() module, tasks.mean_loss: its step time times N is the reference
    dense     stl's model with every first layer one GEMM (nn.batched.SPARSE_DENSITY = 0: no SparseRows)
              and tasks.mean_loss, one Task.loss per task: the step before SparseRows and the stacked loss
    stl       stl as `manytask train` runs it: the first layer gathered through SparseRows (inputs up to
              SPARSE_DENSITY ones), STLHooks' loss (tasks.stacked_mean_loss), make_optimizer's fused Adam
    unfused   stl with torch.optim.Adam(fused=False), the Adam make_optimizer used before
    modules   N mlp() modules in one ModuleDict (the per-task layout), tasks.mean_loss

--contenders times only those named (one is always timed).

Times are CPU time (time.process_time) of this single-threaded process per step, best of --reps blocks of
consecutive steps (>= 0.3 s each, so one small network runs warm as when trained alone) after a warm-up block,
the contenders taking turns in every repetition. ratio = contender / (N x one); GFLOP/s (of one and of stl)
counts the dense GEMMs of forward and backward (2*B*in*out each for forward and weight gradient, plus the input
gradient of every layer after the first), work that the gathered first layer skips where the input is zero.
--phases splits the steps of dense, stl and unfused into forward, loss, backward and optimizer step;
--data replaces the made-up inputs and labels with one minibatch of a registered molecule data set (its
training split's fingerprints and labels, rows drawn with seed 0; --data-path its data.path): the first N tasks
of its assays, so every --sizes entry must be at most its number of tasks. ToxCast's minibatches of 128 have
about 1.5% ones. --densities times stl's step with the first layer always gathered and always the GEMM, on inputs of other
densities (every N).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from manytask.allocator import tune_allocator  # noqa: E402

ALLOCATOR = tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402
from torch import nn  # noqa: E402

from manytask.methods import stl  # noqa: E402
from manytask.methods.stl import STLConfig, build  # noqa: E402
from manytask.nn import batched as nn_batched  # noqa: E402
from manytask.nn.mlp import mlp  # noqa: E402
from manytask.tasks import Task, mean_loss, module_key, stacked_mean_loss  # noqa: E402
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


def unfused_adam(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """make_optimizer's Adam without fused=True (one kernel per parameter for the whole update)."""
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=False)


@contextmanager
def sparse_density(value: float):
    """nn.batched.SPARSE_DENSITY set to value inside the block."""
    old, nn_batched.SPARSE_DENSITY = nn_batched.SPARSE_DENSITY, value
    try:
        yield
    finally:
        nn_batched.SPARSE_DENSITY = old


def at_density(fn, value: float):
    """fn run with nn.batched.SPARSE_DENSITY = value (0: every first layer the GEMM, 1: always gathered)."""
    def run():
        with sparse_density(value):
            fn()
    return run


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


def phases(model: nn.Module, tasks: list[Task], x: torch.Tensor, y: dict[str, torch.Tensor], reps: int,
           loss_fn=mean_loss, optimizer=make_optimizer) -> list[float]:
    """Best CPU time of forward, loss, backward (with zero_grad) and optimizer step, one step at a time."""
    opt = optimizer(model.parameters(), TrainConfig())
    model.train()
    best = [float("inf")] * 4
    for rep in range(reps + 1):  # the first is a warm-up
        ts = [time.process_time()]
        out = model(x)
        ts.append(time.process_time())
        loss = loss_fn(tasks, out, y)
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


def problem(N: int, B: int, D: int, density: float = 0.05):
    """N binary tasks, a 0/1 input (B, D) with `density` ones, labels with 10% missing."""
    tasks = [Task(f"t{i}", "binary") for i in range(N)]
    x = (torch.rand(B, D) < density).float()
    y = {t.name: torch.randint(0, 2, (B,)).float().masked_fill(torch.rand(B) < 0.1, float("nan")) for t in tasks}
    return tasks, x, y


def data_problem(data, N: int, B: int):
    """The first N tasks of a loaded data set and one minibatch (B rows of its training split, seed 0)."""
    if N > len(data.tasks):
        sys.exit(f"--sizes {N}: {data.name} has {len(data.tasks)} tasks; give --sizes of at most that")
    split, tasks = data.split("train"), data.tasks[:N]
    if len(split.inputs) != 1:
        sys.exit(f"--data {data.name}: its tasks read several inputs; stl's benchmark takes one shared input")
    (inputs,) = split.inputs.values()
    rows = torch.randperm(split.size(tasks[0].input), generator=torch.Generator().manual_seed(0))[:B]
    x = inputs[rows].float()  # (B, bits); packed fingerprints come out as float32 rows
    return tasks, x, {t.name: split.labels[t.name][rows] for t in tasks}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="12,100,617", help="numbers of tasks N")
    ap.add_argument("--in-dim", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--density", type=float, default=0.05, help="fraction of ones in the inputs")
    ap.add_argument("--widths", default="", help="stl's hidden widths, e.g. 256,128 (default: stl's default)")
    ap.add_argument("--dropout", type=float, default=None, help="stl's dropout (default: stl's default)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group-mib", type=float, default=stl.GROUP_BYTES / 2**20,
                    help="stl's GROUP_BYTES in MiB: largest stacked weight of one batched group")
    ap.add_argument("--contenders", default="dense,stl,unfused,modules",
                    help="which of dense, stl, unfused, modules to time against N x one")
    ap.add_argument("--phases", action="store_true", help="also print forward/loss/backward/optimizer times")
    ap.add_argument("--densities", default="", help="input densities at which to time the first layer gathered "
                                                     "against the GEMM (every N), e.g. 0.01,0.05,0.1,0.2,0.4")
    ap.add_argument("--data", default="", help="a registered molecule data set whose minibatch replaces the made-up one")
    ap.add_argument("--data-path", default="", help="its data.path (a local CSV)")
    args = ap.parse_args(argv)
    stl.GROUP_BYTES = int(args.group_mib * 2**20)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, D, cfg = args.batch, args.in_dim, STLConfig()
    if args.widths:
        cfg.widths = tuple(int(w) for w in args.widths.split(","))
    if args.dropout is not None:
        cfg.dropout = args.dropout
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {B}, "
          f"{f'a {args.data} minibatch' if args.data else f'{D} inputs ({args.density:g} ones)'}, "
          f"stl (widths={','.join(map(str, cfg.widths))}, max_params={cfg.max_params}, dropout={cfg.dropout}, "
          f"GROUP_BYTES={stl.GROUP_BYTES / 2**20:g} MiB, SPARSE_DENSITY={nn_batched.SPARSE_DENSITY}), "
          f"CPU time per step, best of {args.reps} blocks after a warm-up block, allocator tuned: {ALLOCATOR}")
    names = [n for n in args.contenders.split(",") if n]
    if not names or set(names) - {"dense", "stl", "unfused", "modules"}:
        ap.error(f"--contenders: a comma-separated subset of dense,stl,unfused,modules, got {args.contenders!r}")
    head = (f"{'N':>4} {'width':>6} {'params':>11} {'one ms':>7} {'N x one':>8} "
            + " ".join(f"{n + ' ms':>10} {'ratio':>6}" for n in names) + f" {'one GF/s':>9}"
            + (f" {'stl GF/s':>9}" if "stl" in names else ""))
    print(head)
    print("-" * len(head))
    rows = []
    if args.data:  # loaded once for every N
        from manytask.runs import load_dataset
        data = load_dataset(args.data, **({"path": args.data_path} if args.data_path else {}))
    for N in map(int, args.sizes.split(",")):
        tasks, x, y = data_problem(data, N, B) if args.data else problem(N, B, D, args.density)
        D = x.shape[1]
        model = build(tasks, {"x": (D,)}, cfg)
        widths = model.widths[tasks[0].name]
        one = PerTaskModules(tasks[:1], D, widths, cfg)
        steps = {"dense": lambda: at_density(step_fn(model, tasks, x, y), 0.0),
                 "stl": lambda: step_fn(model, tasks, x, y, stacked_mean_loss),
                 "unfused": lambda: step_fn(model, tasks, x, y, stacked_mean_loss, unfused_adam),
                 "modules": lambda: step_fn(PerTaskModules(tasks, D, widths, cfg), tasks, x, y)}
        t_one, *ts = timeit([step_fn(one, tasks[:1], x, y)] + [steps[n]() for n in names], args.reps)
        flops = gemm_flops(B, (D, *widths, 1))
        row = {"N": N, "width": widths, "params": sum(p.numel() for p in model.parameters()), "one_s": t_one,
               **{f"{n}_s": t for n, t in zip(names, ts)}, **{f"{n}_ratio": t / (N * t_one) for n, t in zip(names, ts)}}
        rows.append(row)
        print(f"{N:>4} {','.join(map(str, widths)):>6} {row['params']:>11,} {1e3 * t_one:>7.2f} "
              f"{1e3 * N * t_one:>8.1f} "
              + " ".join(f"{1e3 * t:>10.1f} {t / (N * t_one):>6.3f}" for t in ts)
              + f" {flops / t_one / 1e9:>9.1f}"
              + (f" {N * flops / ts[names.index('stl')] / 1e9:>9.1f}" if "stl" in names else ""))
        if args.phases:
            for name, density, loss_fn, opt in (("dense", 0.0, mean_loss, make_optimizer),
                                                ("stl", nn_batched.SPARSE_DENSITY, stacked_mean_loss, make_optimizer),
                                                ("unfused", nn_batched.SPARSE_DENSITY, stacked_mean_loss, unfused_adam)):
                with sparse_density(density):
                    fwd, loss, bwd, step = (1e3 * t for t in phases(model, tasks, x, y, args.reps, loss_fn, opt))
                print(f"     {name:<6} forward {fwd:.1f} ms, loss {loss:.1f} ms, backward {bwd:.1f} ms, "
                      f"optimizer step {step:.1f} ms")
        del model, one, steps
    for N in map(int, args.sizes.split(",")) if args.densities else ():
        print(f"\nstl's step (N={N}) with the first layer gathered (SPARSE_DENSITY=1) or the GEMM (0), "
              "by input density")
        for density in map(float, args.densities.split(",")):
            tasks, x, y = problem(N, B, D, density)
            model = build(tasks, {"x": (D,)}, cfg)
            step = step_fn(model, tasks, x, y, stacked_mean_loss)
            gathered, gemm = timeit([at_density(step, 1.0), at_density(step, 0.0)], args.reps)
            print(f"  density {density:<5g} gathered {1e3 * gathered:7.1f} ms, GEMM {1e3 * gemm:7.1f} ms, "
                  f"gathered / GEMM {gathered / gemm:.2f}")
            del model
    return rows


if __name__ == "__main__":
    main()
