"""RSN2 layer speed, as ratios against references measured in the same run (interleaved repetitions,
median CPU time of this process, so that other jobs on a shared machine do not skew the ratios).

1. Masked Linear forward+backward over T tasks vs T plain nn.Linear of the same shape (target <= 1.3x):
   shared input (batch, in) -> (T, batch, out) in one matmul, and stacked inputs (T, batch, in) in one bmm.
2. Masked Conv2d forward+backward (T tasks, shared input) vs T plain nn.Conv2d.
3. Inference of the model reloaded from the packed export vs the masked model it came from, and the
   one-time cost of unpacking relative to one inference pass.

    OMP_NUM_THREADS=1 python benchmarks/rsn2_layer.py [--reps 15]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from manytask.allocator import tune_allocator  # noqa: E402

tune_allocator()  # before torch's first CPU allocation, as the `manytask` command does
import torch  # noqa: E402
from torch import nn  # noqa: E402

from manytask.methods.rsn2 import RSN2Config, build, export, load_packed, select_masks  # noqa: E402
from manytask.nn.masked import MaskedConv2d, MaskedLinear  # noqa: E402
from manytask.tasks import Task  # noqa: E402


def fill_disjoint(layer):
    """Random disjoint masks, every position owned (the worst case for work: nothing skipped)."""
    owner = torch.randint(0, layer.n_tasks, layer.weight.shape[1:])
    for t in range(layer.n_tasks):
        layer.weight_mask[t] = owner == t
        layer.bias_mask[t] = True if t == 0 else False
    return layer


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(fn):
    def run():
        out = fn()
        (sum(o.sum() for o in out) if isinstance(out, list) else out.sum()).backward()
    return run


def linear_rows(reps: int, batch=256, d=512):
    rows = []
    for T in (2, 5, 10):
        masked = fill_disjoint(MaskedLinear([str(t) for t in range(T)], d, d))
        plain = nn.ModuleList(nn.Linear(d, d) for _ in range(T))
        x, xs = torch.randn(batch, d), torch.randn(T, batch, d)
        r = interleaved({"masked shared": fwd_bwd(lambda: masked(x)),
                         "plain shared": fwd_bwd(lambda: [lin(x) for lin in plain]),
                         "masked stacked": fwd_bwd(lambda: masked(xs)),
                         "plain stacked": fwd_bwd(lambda: [lin(xs[t]) for t, lin in enumerate(plain)])}, reps)
        rows.append((f"Linear {d}x{d}, batch {batch}", T, r["masked shared"] / r["plain shared"],
                     r["masked stacked"] / r["plain stacked"]))
    return rows


def conv_rows(reps: int, batch=128, c=32, hw=8):
    rows = []
    for T in (2, 5, 10):
        masked = fill_disjoint(MaskedConv2d([str(t) for t in range(T)], c, c, 3, padding=1))
        plain = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for _ in range(T))
        x = torch.randn(batch, c, hw, hw)
        xs = torch.randn(batch, T * c, hw, hw)
        r = interleaved({"masked shared": fwd_bwd(lambda: masked(x)),
                         "plain shared": fwd_bwd(lambda: [conv(x) for conv in plain]),
                         "masked stacked": fwd_bwd(lambda: masked(xs, stacked=True)),
                         "plain stacked": fwd_bwd(lambda: [conv(xs[:, t * c:(t + 1) * c]) for t, conv in enumerate(plain)])},
                        reps)
        rows.append((f"Conv2d {c}->{c} 3x3 on {hw}x{hw}, batch {batch}", T, r["masked shared"] / r["plain shared"],
                     r["masked stacked"] / r["plain stacked"]))
    return rows


def packed_rows(reps: int):
    torch.manual_seed(0)
    tasks = [Task(f"t{i}", "multiclass", 10) for i in range(3)]
    model, _ = build(tasks, {"x": (64,)}, RSN2Config(widths=(512, 512), keep=1 / 3, criterion="magnitude"))
    select_masks(model, None, 1 / 3, criterion="magnitude")
    x = torch.randn(2048, 64)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "packed.safetensors"
        export(model, path)
        t0 = time.process_time()
        packed = load_packed(path)
        unpack = time.process_time() - t0
    model.eval(), packed.eval()
    with torch.no_grad():
        r = interleaved({"masked": lambda: model(x), "packed": lambda: packed(x)}, reps)
    return r["packed"] / r["masked"], unpack / r["masked"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    reps = ap.parse_args().reps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ratios = masked time / reference time")
    print(f"{'layer':38s} {'T':>3s} {'shared input':>13s} {'stacked inputs':>15s}   (target <= 1.3)")
    for name, T, a, b in linear_rows(reps) + conv_rows(reps):
        print(f"{name:38s} {T:3d} {a:13.2f} {b:15.2f}")
    inf, unpack = packed_rows(reps)
    print(f"packed-model inference / masked-model inference (3 tasks, widths 512,512, batch 2048): {inf:.2f}")
    print(f"one-time unpack (load_packed) / one masked inference pass: {unpack:.2f}")


if __name__ == "__main__":
    main()
