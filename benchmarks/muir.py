"""Training-step time of MUiR-wrapped models vs the same models with plain parameters (target: <= 2x).

    .venv/bin/python benchmarks/muir.py [--steps 30] [--threads 1]

Two model sets, each timed both ways in this run (median of 5 repeats of `steps` Adam steps):
  crossmodal  the muir-crossmodal models: conv net on (1, 8, 8) digits, embedding + LSTM(16 -> 32) on 80
              SMILES tokens, MLP 1024 -> 64 -> 64 on fingerprints; batch 128 each; 16x16 blocks, c = 4,
              measured while half of the locations mix lambda = 1 challengers (Eq. 4), the costlier phase
  synthetic   30 linear tasks 20 -> 1 (one 1x20 block each, c = 1, lambda = 4), 10 points per task
Prints one row per set: plain ms/step, MUiR ms/step, ratio.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from manytask.methods.muir import MuirConfig, MuirHooks, MuirNet, TokenLSTM, conv_net
from manytask.nn.mlp import mlp
from manytask.report import text_table
from manytask.tasks import Task, mean_loss


def crossmodal():
    g = torch.Generator().manual_seed(0)
    cfg = MuirConfig()
    tasks = [Task("digits", "multiclass", 10, input="digits"), Task("smiles", "binary", input="smiles"),
             Task("fp", "binary", input="fp")]
    models = lambda: [conv_net((1, 8, 8), cfg.channels, 64, 10, "relu", True), TokenLSTM(64, 16, 32, 1),  # noqa: E731
                      mlp(1024, (64, 64), "relu", 0.0, out_dim=1)]
    x = {"digits": torch.rand(128, 1, 8, 8, generator=g), "smiles": torch.randint(0, 64, (128, 80), generator=g).float(),
         "fp": (torch.rand(128, 1024, generator=g) < 0.05).float()}
    y = {"digits": torch.randint(0, 10, (128,), generator=g).float(), "smiles": torch.randint(0, 2, (128,), generator=g).float(),
         "fp": torch.randint(0, 2, (128,), generator=g).float()}
    return tasks, models, x, y, dict(block=(16, 16), context=4, challengers=1)


def synthetic():
    g = torch.Generator().manual_seed(0)
    tasks = [Task(f"t{i:02d}", "regression", input=f"t{i:02d}") for i in range(30)]
    models = lambda: [mlp(20, (), out_dim=1) for _ in tasks]  # noqa: E731
    x = {t.name: torch.rand(10, 20, generator=g) * 2 - 1 for t in tasks}
    y = {t.name: torch.randn(10, generator=g) for t in tasks}
    return tasks, models, x, y, dict(block=(1, 20), context=1, challengers=4)


class Plain(torch.nn.Module):
    def __init__(self, tasks, models):
        super().__init__()
        self.tasks, self.nets = tasks, torch.nn.ModuleList(models)

    def forward(self, x):
        return {t.name: m(x[t.input]) for t, m in zip(self.tasks, self.nets)}


def time_steps(model, params, tasks, x, y, steps: int) -> float:
    opt = torch.optim.Adam(params, lr=1e-3)

    def run(n):
        for _ in range(n):
            loss = mean_loss(tasks, model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run(3)  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        run(steps)
        times.append((time.perf_counter() - t0) / steps * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, make in (("crossmodal", crossmodal), ("synthetic", synthetic)):
        tasks, models, x, y, muir_kw = make()
        torch.manual_seed(0)
        plain = Plain(tasks, models())
        t_plain = time_steps(plain, list(plain.parameters()), tasks, x, y, args.steps)
        torch.manual_seed(0)
        net = MuirNet(tasks, models(), **muir_kw)
        net.muir.propose(0.5, 0.5, torch.Generator().manual_seed(0))  # mixing phase (Eq. 4): the costlier one
        hooks = MuirHooks()
        t_muir = time_steps(net, hooks.parameters(net), tasks, x, y, args.steps)
        rows.append((name, f"{sum(p.numel() for p in plain.parameters()):,}", f"{sum(p.numel() for p in net.parameters()):,}",
                     net.muir.n_locations, t_plain, t_muir, t_muir / t_plain))
    print(text_table(("models", "plain params", "muir params", "locations", "plain ms/step", "muir ms/step",
                      "ratio muir/plain"), rows, digits=2))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} steps x 5 repeats, median")


if __name__ == "__main__":
    main()
