"""Training-step time of soft ordering against parallel ordering (the reference, measured in the same run).

Soft ordering applies all D shared layers at every depth for every task: D times the layer arithmetic of
parallel ordering. Target: a training step (forward, backward, Adam step) costs no more than D times a
parallel-ordering step. Also timed: soft ordering written as the naive Python loop over tasks and layers,
to show what the stacked, batched bank saves.

    .venv/bin/python benchmarks/soft_order.py [--width 256 --depth 4 --tasks 10 --batch 128 --steps 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

from manytask.allocator import tune_allocator  # noqa: E402

tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from manytask.methods.soft_order import SoftOrderConfig, build  # noqa: E402
from manytask.tasks import Task, module_key  # noqa: E402
from steps import step_fn  # noqa: E402  (benchmarks/steps.py)


class NaiveSoft(torch.nn.Module):
    """Soft ordering as a loop over tasks, depths and layers, on the same parameters as `model`."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        m, out = self.m, {}
        mix = m.mixing()  # (T, D, D)
        for i, t in enumerate(m.tasks):
            y = F.dropout(m.encoders[module_key(t.input)](x)[m.slot[i]], m.bank.dropout, self.training)  # (n, w)
            for k in range(m.depth):
                y = sum(mix[i, k, j] * F.dropout(F.relu(y @ m.bank.weight[j] + m.bank.bias[j]), m.bank.dropout, self.training)
                        for j in range(m.depth))
            out[t.name] = m.decoders[t.name](y)
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps per contender per round")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    tasks = [Task(f"t{i}", "binary") for i in range(a.tasks)]
    x = torch.randn(a.batch, a.width)
    y = {t.name: (torch.rand(a.batch) > 0.5).float() for t in tasks}
    models = {o: build(tasks, {"x": (a.width,)}, SoftOrderConfig(width=a.width, depth=a.depth, ordering=o))
              for o in ("parallel", "soft")}
    models["soft (naive loop)"] = NaiveSoft(models["soft"])
    steps = {name: step_fn(m, tasks, x, y) for name, m in models.items()}
    flops = {}
    for name, m in models.items():
        with FlopCounterMode(display=False) as fc:
            steps[name]()
        flops[name] = fc.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(a.rounds):  # interleaved rounds, so that load from other processes hits every contender
        for name, step in steps.items():
            step()  # warm-up
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step()
            times[name].append((time.perf_counter() - t0) / a.steps)
    ref = statistics.median(times["parallel"])
    print(f"soft_order training step, w={a.width} D={a.depth} T={a.tasks} batch={a.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); median of {a.rounds} rounds x {a.steps} steps")
    print(f"{'ordering':<20}{'time / parallel':>16}{'FLOPs / parallel':>18}")
    for name in models:
        print(f"{name:<20}{statistics.median(times[name]) / ref:>16.2f}{flops[name] / flops['parallel']:>18.2f}")
    ratio = statistics.median(times["soft"]) / ref
    print(f"target: soft <= D = {a.depth} times parallel: {'met' if ratio <= a.depth else 'NOT met'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
