"""Cost of Algorithm 1 (a reconstruction step + a supervised step per minibatch) against the supervised
baseline step (lambda_r = 0: the reconstruction step is skipped) on the same network and minibatches.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evolving.py [steps] [batch]

Prints the time ratio evolving / baseline per training step for NN1 and NN3 on 8x8 digits; both are
measured in this run, on the same machine, interleaved (best of 5 repeats), so the ratio does not
depend on how fast or busy the machine is.
"""
from __future__ import annotations

import sys
import time

from manytask.allocator import tune_allocator

tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402

from manytask.data.base import MultiTaskData, Split  # noqa: E402
from manytask.methods.evolving import EvolvingConfig, build  # noqa: E402
from manytask.report import text_table  # noqa: E402
from manytask.tasks import Task  # noqa: E402
from manytask.train import TrainConfig, Trainer  # noqa: E402


def timed_steps(widths, schedule, value, x, y, steps) -> float:
    data = MultiTaskData("bench", [Task("digits", "multiclass", 10)], Split({"x": x}, {"digits": y}),
                         Split({"x": x[:2]}, {"digits": y[:2]}), Split({"x": x[:2]}, {"digits": y[:2]}))
    torch.manual_seed(0)
    model, hooks = build(data.tasks, data.input_shapes, EvolvingConfig(widths=widths, schedule=schedule, value=value))
    trainer = Trainer(model, data, TrainConfig(epochs=10, optimizer="sgd", momentum=0.0, lr=0.1, progress=False), hooks)
    hooks.before_training(trainer)
    trainer.epoch = 3
    t0 = time.perf_counter()
    for _ in range(steps):
        hooks.training_step(trainer, x, {"digits": y})
    return (time.perf_counter() - t0) / steps


def main(steps: int = 200, batch: int = 64) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 8, 8, generator=g)  # (batch, 1, 8, 8) digit-sized images
    y = torch.randint(0, 10, (batch,), generator=g).float()
    y[batch // 10:] = float("nan")  # 10% labelled, as with l = 100 of 1,078
    rows = []
    for name, widths in (("nn1", (50,)), ("nn3", (70, 60, 50))):
        base, evo = [], []
        for _ in range(5):
            base.append(timed_steps(widths, "constant", 1.0, x, y, steps))
            evo.append(timed_steps(widths, "exp", 1.0, x, y, steps))
        rows.append((name, f"{min(base) * 1e3:.3f}", f"{min(evo) * 1e3:.3f}", f"{min(evo) / min(base):.2f}"))
    print(f"{steps} steps, batch {batch} (10% labelled), one thread, best of 5")
    print(text_table(("net", "baseline ms/step", "evolving ms/step", "ratio evolving/baseline"), rows))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
