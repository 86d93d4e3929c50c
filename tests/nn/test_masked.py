"""Task-masked layers (manytask/nn/masked.py): parity with a naive per-task reference, gradient
isolation, Algorithm 1's per-layer selection (top fraction, ties, capacity), Eq. 3 checks, packing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from manytask.nn.masked import (MaskedConv2d, MaskedLinear, check_disjoint, ownership_report, pack_owner,
                                unpack_owner)


def random_disjoint(layer, seed=0):
    """Give each task a random disjoint share of the layer (owner drawn per position; some unused)."""
    g = torch.Generator().manual_seed(seed)
    T = layer.n_tasks
    owner = torch.randint(0, T + 1, layer.weight.shape[1:], generator=g)  # T = nobody
    bowner = torch.randint(0, T + 1, layer.bias.shape[1:], generator=g)
    for t in range(T):
        layer.weight_mask[t] = owner == t
        layer.bias_mask[t] = bowner == t
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    return layer


def test_linear_matches_per_task_reference():
    torch.manual_seed(0)
    layer = random_disjoint(MaskedLinear(["a", "b", "c"], 7, 5))
    x = torch.randn(4, 7)
    ref = torch.stack([x @ (layer.weight[t] * layer.weight_mask[t]) + layer.bias[t] * layer.bias_mask[t]
                       for t in range(3)])  # (T, batch, out)
    torch.testing.assert_close(layer(x), ref)  # shared input: one matmul
    xs = torch.randn(2, 4, 7)  # stacked: tasks 2 and 0
    ref2 = torch.stack([xs[j] @ (layer.weight[t] * layer.weight_mask[t]) + layer.bias[t] * layer.bias_mask[t]
                        for j, t in enumerate([2, 0])])
    torch.testing.assert_close(layer(xs, [2, 0]), ref2)
    assert layer(torch.randn(0, 7)).shape == (3, 0, 5)  # 0-row evaluation chunks
    with pytest.raises(ValueError, match="expected"):
        layer(torch.randn(2, 4, 7))  # 2 slices for 3 tasks


def test_conv_matches_per_task_reference():
    torch.manual_seed(0)
    layer = random_disjoint(MaskedConv2d(["a", "b"], 3, 4, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    ref = torch.cat([F.conv2d(x, layer.weight[t] * layer.weight_mask[t], layer.bias[t] * layer.bias_mask[t], padding=1)
                     for t in range(2)], 1)  # (batch, T * out, H, W)
    torch.testing.assert_close(layer(x), ref)
    xs = torch.randn(2, 2 * 3, 6, 6)  # task j's input in channel block j
    ref2 = torch.cat([F.conv2d(xs[:, 3 * j:3 * j + 3], layer.weight[t] * layer.weight_mask[t],
                               layer.bias[t] * layer.bias_mask[t], padding=1) for j, t in enumerate([1, 0])], 1)
    torch.testing.assert_close(layer(xs, [1, 0], stacked=True), ref2)
    assert layer(torch.randn(0, 3, 6, 6)).shape == (0, 8, 6, 6)


def test_masked_positions_get_no_gradient():
    layer = random_disjoint(MaskedLinear(["a", "b"], 6, 4))
    layer(torch.randn(5, 6)).sum().backward()
    assert torch.all(layer.weight.grad[~layer.weight_mask] == 0)
    assert torch.all(layer.bias.grad[~layer.bias_mask] == 0)
    assert torch.any(layer.weight.grad[layer.weight_mask] != 0)


def test_masks_are_buffers_saved_with_the_weights(tmp_path):
    layer = random_disjoint(MaskedLinear(["a", "b"], 6, 4))
    assert {"weight_mask", "bias_mask"} <= set(dict(layer.named_buffers()))
    save_model(layer, str(tmp_path / "m.safetensors"))
    other = MaskedLinear(["a", "b"], 6, 4)
    load_model(other, str(tmp_path / "m.safetensors"))
    assert torch.equal(other.weight_mask, layer.weight_mask)
    x = torch.randn(3, 6)
    assert torch.equal(other(x), layer(x))
    assert layer.to(torch.float64).weight_mask.dtype == torch.bool  # .to() moves masks, keeps them binary


def test_assign_keeps_top_fraction_of_free_positions():
    layer = MaskedLinear(["a", "b"], 10, 10)
    score = torch.arange(100, dtype=torch.float32).reshape(10, 10)  # distinct scores
    layer.assign(0, 0.3, score, torch.arange(10.0), "L")
    assert int(layer.weight_mask[0].sum()) == 30
    assert torch.equal(layer.weight_mask[0].flatten().nonzero().flatten(), torch.arange(70, 100))
    assert torch.equal(layer.bias_mask[0].nonzero().flatten(), torch.arange(7, 10))
    layer.assign(1, 0.5, score, torch.arange(10.0), "L")  # the same scores: must skip task a's positions
    assert torch.equal(layer.weight_mask[1].flatten().nonzero().flatten(), torch.arange(20, 70))
    check_disjoint(layer)


def test_ties_and_zero_scores_are_deterministic_and_disjoint():
    layer = MaskedLinear(["a", "b", "c"], 8, 6)
    zeros_w, zeros_b = torch.zeros(8, 6), torch.zeros(6)  # zero gradients, zero-initialised biases
    for t in range(3):
        layer.assign(t, 1 / 3, zeros_w, zeros_b, "L")
    check_disjoint(layer)
    first = layer.weight_mask.clone()
    for t in range(3):
        layer.assign(t, 1 / 3, zeros_w, zeros_b, "L")
    assert torch.equal(first, layer.weight_mask)
    assert [int(m.sum()) for m in layer.weight_mask] == [16, 16, 16]
    assert int(layer.bias_mask.sum(0).max()) == 1


def test_capacity_violation_names_layer_and_tasks():
    layer = MaskedLinear(["digits", "tox21"], 10, 10)
    layer.assign(0, 0.7, torch.rand(10, 10), torch.rand(10), "fcs.0")
    message = r"layer fcs\.0: task 'tox21' needs 50 weights but only 30 are free.*digits"
    with pytest.raises(ValueError, match=message) as err:
        layer.assign(1, 0.5, torch.rand(10, 10), torch.rand(10), "fcs.0")
    assert type(err.value) is ValueError  # a layer error; the method turns user-caused ones into ConfigError


def test_overlap_is_an_error_naming_layer_and_tasks():
    layer = random_disjoint(MaskedLinear(["a", "b", "c"], 4, 3))
    check_disjoint(layer)
    layer.weight_mask[0, 1, 2] = layer.weight_mask[2, 1, 2] = True
    with pytest.raises(ValueError, match=r"weight at \(1, 2\) is owned by tasks \['a', 'c'\]") as err:
        check_disjoint(layer)
    assert type(err.value) is ValueError


def test_per_output_selection_with_output_limits():
    """Heads: each task keeps `keep` of every allowed output unit's inputs, and its own output bias."""
    head = MaskedLinear(["ten", "one"], 20, 10, out_limit=[10, 1], per_output=True, disjoint_bias=False)
    head.assign(0, 0.5, torch.rand(20, 10), torch.zeros(10), "head")
    head.assign(1, 0.5, torch.rand(20, 10), torch.zeros(10), "head")
    assert head.weight_mask[0].sum(0).tolist() == [10] * 10
    assert head.weight_mask[1].sum(0).tolist() == [10] + [0] * 9  # only its one column
    assert head.bias_mask[1].tolist() == [True] + [False] * 9
    check_disjoint(head)


def test_ownership_report_verifies_eq3():
    layer = MaskedLinear(["a", "b"], 10, 10)
    layer.assign(0, 0.2, torch.rand(10, 10), torch.rand(10), "L")
    layer.assign(1, 0.3, torch.rand(10, 10), torch.rand(10), "L")
    rows, ok = ownership_report(torch.nn.ModuleDict({"L": layer}))
    assert ok and rows[0]["a"] == pytest.approx(0.2) and rows[0]["b"] == pytest.approx(0.3)
    assert rows[0]["unused"] == pytest.approx(0.5)
    layer.weight_mask[1] |= layer.weight_mask[0]  # overlap with nonzero weights breaks Eq. 3
    assert ownership_report(torch.nn.ModuleDict({"L": layer}))[1] is False


@pytest.mark.parametrize("T", [2, 3, 4, 5, 7, 17, 256, 617])
def test_owner_index_roundtrip(T):
    owner = torch.randint(0, T, (13, 11), generator=torch.Generator().manual_seed(T))
    owner[0, 0] = T - 1  # the largest owner must survive the packing
    packed = pack_owner(owner, T)
    assert packed.dtype == (torch.uint8 if T <= 256 else torch.int32)
    assert torch.equal(unpack_owner(packed, T, owner.shape), owner)


@pytest.mark.parametrize("cls,args", [(MaskedLinear, (9, 6)), (MaskedConv2d, (3, 4, 3))])
def test_pack_is_one_single_task_tensor_and_exact(cls, args):
    torch.manual_seed(1)
    layer = random_disjoint(cls(["a", "b", "c"], *args))
    packed = layer.pack()
    assert packed["weight"].shape == layer.weight.shape[1:]
    other = cls(["a", "b", "c"], *args)
    other.unpack(packed)
    x = torch.randn(2, 9) if cls is MaskedLinear else torch.randn(2, 3, 5, 5)
    assert torch.equal(other(x), layer(x))
    check_disjoint(other)
