"""Training on a CUDA device and with bf16 mixed precision. The CUDA tests skip cleanly on a machine without
CUDA; bf16 autocast also runs on the CPU, so its test runs everywhere."""
from __future__ import annotations

import math

import pytest
import torch

from manytask.registry import METHODS, load_all
from manytask.runs import RunSpec, build
from manytask.train import TrainConfig, Trainer, seed_everything

from .conftest import tiny_shared

load_all()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fit(method: str, keys: dict | None = None, **train) -> Trainer:
    seed_everything(0)
    data = tiny_shared(n=96)
    spec = RunSpec("tiny", method, None, METHODS[method].config(**(keys or {})),
                   TrainConfig(epochs=2, batch_size=16, patience=0, progress=False, **train))
    model, hooks = build(spec, data)
    return Trainer(model, data, spec.train, hooks).fit()


def test_bf16_autocast_runs_the_training_forward_in_bf16():
    seen = []
    trainer = fit("hard_sharing", amp="bf16", device="cpu")
    first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.run(trainer.model, trainer.data.train.inputs["x"][:4])
    assert seen == [torch.bfloat16]
    assert all(math.isfinite(r["val_loss"]) for r in trainer.history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "autocast keeps fp32 weights"


@cuda
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_every_method_trains_on_cuda(method, amp):
    trainer = fit(method, device="cuda", amp=amp)
    assert all(p.device.type == "cuda" for p in trainer.model.parameters())
    assert all(math.isfinite(r["val_loss"]) for r in trainer.history)
    table, _ = trainer.evaluate("test")
    assert set(table) == {t.name for t in trainer.data.tasks}


@cuda
def test_cuda_matches_cpu_in_fp32():
    """The same seed on the GPU gives nearly the CPU's validation losses (float32 kernels differ in rounding)."""
    cpu = fit("hard_sharing", {"dropout": 0.0}, device="cpu", amp="off")  # no dropout: CUDA draws other masks
    gpu = fit("hard_sharing", {"dropout": 0.0}, device="cuda", amp="off")
    for a, b in zip(cpu.history, gpu.history):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-3)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_with_bf16_autocast_on_the_cpu(method):
    trainer = fit(method, amp="bf16", device="cpu")
    assert all(math.isfinite(r["val_loss"]) for r in trainer.history)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize("keys", [{"connectors": 1}, {"connectors": 1, "isolate": False}])
def test_icnn_with_sparse_connectors_trains_with_bf16_autocast(keys):
    """The root paths run in bf16 and the gathered connectors in float32; their sum must still train."""
    trainer = fit("icnn", keys, amp="bf16", device="cpu")
    assert all(math.isfinite(r["val_loss"]) for r in trainer.history)
