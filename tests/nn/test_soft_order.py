"""Layer banks of soft ordering: the stacked, batched operations equal the naive per-task, per-layer loop,
and applying all D layers costs exactly D times the arithmetic of applying one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from manytask.nn.soft_order import ConvBank, DenseBank, TaskLinear


def naive_dense(h, bank, t, j):
    return F.relu(h[t] @ bank.weight[j] + bank.bias[j])  # (n, w)


def naive_conv(h, bank, t, j):
    return F.relu(F.conv2d(h[t], bank.weight[j], bank.bias[j], padding=1))  # (n, C, H, W)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_all_equals_every_layer_on_every_task(kind):
    torch.manual_seed(0)
    bank, naive = (DenseBank(3, 8), naive_dense) if kind == "dense" else (ConvBank(3, 4), naive_conv)
    h = torch.randn(2, 5, 8) if kind == "dense" else torch.randn(2, 5, 4, 6, 6)  # (T, n, *feat)
    out = bank.all(h)  # (T, D, n, *feat)
    assert out.shape == (2, 3, *h.shape[1:])
    for t in range(2):
        for j in range(3):
            torch.testing.assert_close(out[t, j], naive(h, bank, t, j))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_pick_applies_each_tasks_own_layer(kind):
    torch.manual_seed(1)
    bank, naive = (DenseBank(4, 8), naive_dense) if kind == "dense" else (ConvBank(4, 3), naive_conv)
    h = torch.randn(3, 5, 8) if kind == "dense" else torch.randn(3, 5, 3, 5, 5)
    idx = torch.tensor([2, 0, 2])
    out = bank.pick(h, idx)  # (T, n, *feat)
    assert out.shape == h.shape
    for t in range(3):
        torch.testing.assert_close(out[t], naive(h, bank, t, int(idx[t])))


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_zero_rows(kind):
    bank = DenseBank(2, 4) if kind == "dense" else ConvBank(2, 3)
    h = torch.zeros(2, 0, 4) if kind == "dense" else torch.zeros(2, 0, 3, 4, 4)
    assert bank.all(h).shape == (2, 2, *h.shape[1:])
    assert bank.pick(h, torch.tensor([1, 0])).shape == h.shape


def test_dropout_only_in_training():
    torch.manual_seed(0)
    bank = DenseBank(2, 64, dropout=0.5)
    h = torch.rand(1, 16, 64) + 1.0
    bank.eval()
    assert (bank.all(h) == bank.all(h)).all()
    bank.train()
    z = bank.pick(h, torch.tensor([0]))
    bank.eval()
    ref = bank.pick(h, torch.tensor([0]))
    alive = ref > 0  # units that ReLU lets through
    kept = (z != 0) & alive
    assert 0.35 < kept.sum() / alive.sum() < 0.65  # about half of them dropped
    torch.testing.assert_close(z[kept], 2 * ref[kept])  # survivors scaled by 1 / (1 - p)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_all_costs_depth_times_pick(kind):
    D = 4
    bank = DenseBank(D, 32) if kind == "dense" else ConvBank(D, 8)
    h = torch.randn(5, 16, 32) if kind == "dense" else torch.randn(5, 16, 8, 6, 6)
    with FlopCounterMode(display=False) as all_flops:
        bank.all(h)
    with FlopCounterMode(display=False) as pick_flops:
        bank.pick(h, torch.tensor([0, 1, 2, 3, 0]))
    assert all_flops.get_total_flops() == D * pick_flops.get_total_flops() > 0


def test_conv_keeps_image_size_and_rejects_even_kernels():
    assert ConvBank(2, 3).all(torch.randn(1, 2, 3, 7, 5)).shape == (1, 2, 2, 3, 7, 5)
    with pytest.raises(ValueError, match="odd"):
        ConvBank(2, 3, kernel=2)


def test_task_linear_is_g_linear_layers_in_one_product():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(12, 5) for _ in range(3)]
    stacked = TaskLinear.of(layers)
    assert stacked.weight.shape == (12, 3, 5) and stacked.bias.shape == (3, 5)
    x = torch.randn(7, 3, 4)  # (n, *shape), flattened to 12 features
    out = stacked(x)  # (G, n, out)
    assert out.shape == (3, 7, 5)
    for g, m in enumerate(layers):
        torch.testing.assert_close(out[g], m(x.flatten(1)))
        W, b = stacked.task(g)
        torch.testing.assert_close(W, m.weight.T)
        torch.testing.assert_close(b, m.bias)
    out.sum().backward()  # one product backwards too: every task's weights get their own gradient
    for g in range(3):
        torch.testing.assert_close(stacked.weight.grad[:, g], x.flatten(1).sum(0)[:, None].expand(12, 5))
    with pytest.raises(ValueError, match="one shape"):
        TaskLinear.of([torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)])


def test_task_linear_sparse_inputs_give_the_dense_product():
    """Mostly-zero inputs (fingerprints) take the embedding-bag path: same outputs and weight gradients."""
    torch.manual_seed(0)
    layer = TaskLinear.of([torch.nn.Linear(200, 6) for _ in range(4)])
    x = (torch.rand(9, 200) < 0.03).float() * torch.rand(9, 200)  # about 3% non-zero
    x[4] = 0.0  # an all-zero row: only the bias
    assert 0 < (x != 0).float().mean() < TaskLinear.sparse_below
    out = layer(x)
    layer.weight.grad = None
    (out ** 2).sum().backward()
    grad = layer.weight.grad.clone()
    W, b = layer.weight.reshape(200, 24), layer.bias.reshape(24)
    dense = (x @ W + b).reshape(9, 4, 6).transpose(0, 1)
    torch.testing.assert_close(out, dense)
    layer.weight.grad = None
    (dense ** 2).sum().backward()
    torch.testing.assert_close(grad, layer.weight.grad)
