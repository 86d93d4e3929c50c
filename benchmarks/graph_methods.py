"""Training-step CPU time of each method on Tox21 molecule graphs (data.encoder=dmpnn), against hard sharing's
(the reference: one shared D-MPNN), measured in the same run on the same minibatches.

Every method with its own defaults and the encoder's (hidden 300, depth 3); hard sharing as chemprop's
default model (widths=300, dropout=0). A step is the method's own Trainer step (hooks.training_step: its
forward, its loss, zero_grad, backward, its before_optimizer_step, the optimizer step) after the hooks'
before_training (rsn2 chooses its masks there). Median CPU time of --steps steps after 2 untimed ones, each
on the next --batch molecules of the training split. ratio = method / hard_sharing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/graph_methods.py [--methods rsn2,icnn,stl] [--batch 50 --steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

from manytask.allocator import tune_allocator

tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402

from manytask.runs import create_model, load_dataset  # noqa: E402
from manytask.train import TrainConfig, Trainer  # noqa: E402


def step_ms(method: str, keys: dict, data, batch: int, steps: int) -> tuple[int, float]:
    """(parameters, median CPU ms of one training step) of `method` on consecutive training minibatches."""
    torch.manual_seed(0)
    model, hooks = create_model(method, data.tasks, data.input_shapes, **keys)
    trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=batch, progress=False, device="cpu"), hooks)
    hooks.before_training(trainer)
    model.train()
    x, labels = data.train.inputs["x"], data.train.labels
    times = []
    for i in range(steps + 2):
        rows = torch.arange(i * batch, (i + 1) * batch)
        xb, yb = x[rows], {k: v[rows] for k, v in labels.items()}
        start = time.process_time()
        hooks.training_step(trainer, xb, yb)
        times.append(time.process_time() - start)
    return sum(p.numel() for p in model.parameters()), 1e3 * statistics.median(times[2:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="rsn2", help="methods to time against hard_sharing, comma-separated")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    data = load_dataset("tox21", encoder="dmpnn")
    ref_params, ref = step_ms("hard_sharing", {"widths": (300,), "dropout": 0.0}, data, args.batch, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), Tox21 graphs, batch {args.batch}, "
          f"median CPU time of {args.steps} steps")
    print(f"{'method':>12} {'params':>10} {'ms/step':>8} {'ratio':>6}")
    print(f"{'hard_sharing':>12} {ref_params:>10,} {ref:8.1f} {1:6.2f}")
    for method in [m for m in args.methods.split(",") if m]:
        params, ms = step_ms(method, {}, data, args.batch, args.steps)
        print(f"{method:>12} {params:>10,} {ms:8.1f} {ms / ref:6.2f}", flush=True)


if __name__ == "__main__":
    main()
