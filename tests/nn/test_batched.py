"""nn/batched.py: n independent networks as one batched computation equal n separate nn.Linear / mlp()
modules (same initial weights from a seed, same outputs), also through SparseRows for a mostly-zero input
(same outputs and gradients as the GEMM), and stay independent (gradients, dropout). Their outputs, unbound
per task, go into tasks.stacked_mean_loss as slices of the stacked output."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from manytask.nn import batched
from manytask.nn.batched import BatchedLinear, BatchedMLP, dropout_multipliers
from manytask.nn.mlp import mlp, mlp_params
from manytask.tasks import Task, mean_loss, stacked_mean_loss

N, D, WIDTHS, OUT, B = 4, 10, (7, 5), 2, 6


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-6):
    """Same shape, elementwise within atol (torch.testing.assert_close's first call imports for seconds)."""
    assert got.shape == want.shape and float((got - want).detach().abs().max()) <= atol, (got, want)


def reference(seed=0, dropout=0.0, act="tanh"):
    torch.manual_seed(seed)
    return [mlp(D, WIDTHS, act, dropout, out_dim=OUT) for _ in range(N)]


def linears(net: nn.Sequential) -> list[nn.Linear]:
    return [m for m in net if isinstance(m, nn.Linear)]


def network_grads(net: BatchedMLP) -> list[torch.Tensor]:
    """Every parameter's gradient with the network axis first: (n, ...)."""
    return [g for layer in net.layers for g in (layer.table.grad.transpose(0, 1), layer.bias.grad)]


def test_init_is_bit_identical_to_separate_modules():
    """From one seed, n mlp() modules built one after the other and BatchedMLP draw the same weights."""
    refs = reference(seed=3)
    torch.manual_seed(3)
    net = BatchedMLP(N, D, WIDTHS, "tanh", out_dim=OUT)
    for i, ref in enumerate(refs):
        for layer, lin in zip(net.layers, linears(ref)):
            assert torch.equal(layer.weight[i], lin.weight.T) and torch.equal(layer.bias[i], lin.bias)
    torch.manual_seed(1)
    lins = [nn.Linear(D, 3) for _ in range(N)]
    torch.manual_seed(1)
    lin = BatchedLinear(N, D, 3)
    assert all(torch.equal(lin.weight[i], lins[i].weight.T) and torch.equal(lin.bias[i], lins[i].bias) for i in range(N))


def test_forward_equals_separate_modules():
    """Shared input (batch, in) and per-network input (n, batch, in); dropout configured but off in eval."""
    refs = reference(dropout=0.3)
    net = BatchedMLP(N, D, WIDTHS, "tanh", dropout=0.3, out_dim=OUT)
    with torch.no_grad():
        for i, ref in enumerate(refs):
            for layer, lin in zip(net.layers, linears(ref)):
                layer.weight[i].copy_(lin.weight.T)
                layer.bias[i].copy_(lin.bias)
    net.eval()
    for r in refs:
        r.eval()
    x, xs = torch.randn(B, D), torch.randn(N, B, D)
    shared, own = net(x), net(xs)
    assert shared.shape == own.shape == (N, B, OUT)
    for i, ref in enumerate(refs):
        assert_close(shared[i], ref(x))
        assert_close(own[i], ref(xs[i]))


def test_masks_replace_dropout_and_match_modules():
    """Masks drawn network by network as the modules' dropout draws them give the modules' training outputs."""
    refs = reference(seed=5, dropout=0.4)
    torch.manual_seed(5)
    net = BatchedMLP(N, D, WIDTHS, "tanh", dropout=0.4, out_dim=OUT)
    x = torch.randn(B, D)
    torch.manual_seed(9)
    expected = [ref(x) for ref in refs]
    torch.manual_seed(9)
    draws = [[torch.empty(B, w).bernoulli_(0.6).div_(0.6) for w in WIDTHS] for _ in range(N)]
    masks = [torch.stack([d[layer] for d in draws]) for layer in range(len(WIDTHS))]
    got = net(x, masks)
    for i in range(N):
        assert_close(got[i], expected[i])


@pytest.mark.parametrize("p", [0.288, 0.5, 0.9])
def test_dropout_multipliers_have_dropouts_distribution(p):
    """0 or 1 / keep with keep = 1 - p rounded to 2**-16; the dropped fraction is p within 5 binomial standard
    deviations, in each of the four 16-bit lanes of a 64-bit draw, and the mean multiplier stays 1; a seed
    repeats the draw."""
    n = 400_000
    torch.manual_seed(3)
    m = dropout_multipliers(n + 3, p)  # a length that is not a multiple of 4
    assert m.shape == (n + 3,) and m.dtype == torch.float32
    keep = round((1 - p) * 2**16) / 2**16
    assert abs(keep - (1 - p)) <= 2**-17
    assert m.unique().tolist() == [0.0, pytest.approx(1 / keep, rel=1e-6)]
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(float((m == 0).float().mean()) - p) < 5 * sd
    assert abs(float(m.double().mean()) - 1) < 5 * sd / keep
    lanes = (m[:n] == 0).float().view(-1, 4).mean(0)
    assert float((lanes - p).abs().max()) < 5 * sd * 2
    torch.manual_seed(3)
    assert torch.equal(dropout_multipliers(n + 3, p), m)
    with pytest.raises(ValueError, match="dropout must be in"):
        dropout_multipliers(10, 1.0)
    assert torch.equal(dropout_multipliers(10, 0.0), torch.ones(10))


def test_gradients_stay_in_their_network():
    """The loss of network i gives every other network's weights an exactly zero gradient, also with dropout."""
    net = BatchedMLP(N, D, WIDTHS, "relu", dropout=0.25, out_dim=OUT)
    for x in (torch.randn(B, D), torch.randn(N, B, D)):
        for i in range(N):
            net.zero_grad()
            net(x)[i].square().sum().backward()
            for g in network_grads(net):
                others = torch.cat([g[:i].flatten(), g[i + 1:].flatten()])
                assert torch.count_nonzero(others) == 0
                assert torch.count_nonzero(g[i]) > 0


def test_dropout_is_independent_per_network():
    """n identical networks on one input: training outputs differ (own masks), evaluation outputs agree."""
    net = BatchedMLP(N, D, (64,), dropout=0.5, out_dim=1)
    with torch.no_grad():
        for layer in net.layers:
            layer.table.copy_(layer.table[:, :1].clone().expand_as(layer.table))
            layer.bias.copy_(layer.bias[:1].expand_as(layer.bias))
    x = torch.randn(B, D)
    out = net(x)
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, N))
    net.eval()
    out = net(x)
    assert all(torch.equal(out[0], out[i]) for i in range(1, N))


def test_dropout_without_masks_keeps_1_minus_p_scaled():
    """Without masks, training multiplies every hidden unit by 0 or 1/keep, kept with probability keep = 1-p
    (rounded to 2**-16, dropout_multipliers): with zero weights and bias 1 the hidden output is the multiplier."""
    net = BatchedMLP(N, D, (64,), "relu", dropout=0.4)
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.fill_(1.0)
    mult = net(torch.randn(500, D))  # (N, 500, 64)
    kept = mult != 0
    assert torch.equal(mult[kept], torch.full_like(mult[kept], 2**16 / round(0.6 * 2**16)))
    assert abs(float(kept.float().mean()) - 0.6) < 0.01  # 128,000 draws: 7 standard deviations


def graph_nodes(t: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind t."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(f for f, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def test_stacked_loss_reads_unbound_outputs_as_slices():
    """Per-task outputs that are a batched output's rows (unbind, in task order) go into stacked_mean_loss
    as slices of it: no per-row stack or unbind in the graph; the value and the gradients are mean_loss's.
    Rows out of order, rows of another tensor and a copy are stacked as before, with the same result."""
    tasks = [Task(f"t{i}", "binary") for i in range(N)] + [Task("r", "regression", shift=1.0, scale=2.0)]
    net = BatchedMLP(N + 1, D, WIDTHS, "relu", out_dim=1)
    x = torch.randn(B, D)
    y = {t.name: torch.randint(0, 2, (B,)).float().masked_fill(torch.rand(B) < 0.3, float("nan")) for t in tasks}
    y["r"] = torch.randn(B)
    weights = {"t1": 2.0, "r": 0.5}
    orders = {"in order": list(range(N + 1)), "mixed": [1, 0, 2, 3, 4]}
    for name, order in orders.items():
        results = []
        for fn in (mean_loss, stacked_mean_loss):
            net.zero_grad()
            rows = net(x).unbind(0)  # (B, 1) each
            out = {t.name: rows[j] for t, j in zip(tasks, order)}
            if name == "mixed":
                out["t2"], out["t3"] = net(x).unbind(0)[2], out["t3"].clone()  # another forward's row, a copy
            loss = fn(tasks, out, y, weights)
            loss.backward()
            results.append((loss, [p.grad.clone() for p in net.parameters()]))
        (want, want_grads), (got, got_grads) = results
        assert abs(float(got.detach()) - float(want.detach())) <= 1e-6 * abs(float(want.detach()))
        for g, w in zip(got_grads, want_grads, strict=True):
            assert_close(g, w, atol=1e-7)
        nodes = graph_nodes(got)
        if name == "in order":
            assert not nodes & {"StackBackward0", "UnbindBackward0", "CatBackward0"}, nodes
        else:
            assert "StackBackward0" in nodes or "CatBackward0" in nodes


def test_parameter_count_is_n_networks():
    net = BatchedMLP(N, D, WIDTHS, out_dim=OUT)
    assert sum(p.numel() for p in net.parameters()) == N * mlp_params(D, WIDTHS, OUT) == N * net.params_per_network()
    assert net.layers[0].weight.shape == (N, D, WIDTHS[0]) and net.layers[-1].bias.shape == (N, OUT)


def test_weights_saved_as_n_in_out_load_into_the_table():
    """A state dict of the earlier layout (`weight` (n, in, out) per layer) loads into the table (in, n, out):
    the same networks, the same outputs."""
    net = BatchedMLP(N, D, WIDTHS, "tanh", out_dim=OUT)
    old = {k.replace(".table", ".weight"): v.transpose(0, 1).contiguous() if k.endswith(".table") else v
           for k, v in net.state_dict().items()}
    assert old["layers.0.weight"].shape == (N, D, WIDTHS[0])
    again = BatchedMLP(N, D, WIDTHS, "tanh", out_dim=OUT)
    again.load_state_dict(old)
    x = torch.randn(B, D)
    assert torch.equal(again(x), net(x)) and all(p.is_contiguous() for p in again.parameters())


def test_bad_inputs_are_value_errors():
    lin = BatchedLinear(N, D, 3)
    for bad in (torch.randn(B, D + 1), torch.randn(N + 1, B, D), torch.randn(B)):
        with pytest.raises(ValueError, match="BatchedLinear"):
            lin(bad)
    with pytest.raises(ValueError, match="n, in_features, out_features >= 1"):
        BatchedLinear(0, D, 3)
    with pytest.raises(ValueError, match="dropout"):
        BatchedMLP(N, D, WIDTHS, dropout=1.0)
    with pytest.raises(ValueError, match="one dropout mask per hidden layer"):
        BatchedMLP(N, D, WIDTHS)(torch.randn(B, D), [torch.ones(N, B, WIDTHS[0])])


def sparse_input(density=0.05, values=False, seed=0):
    """(B, D) with about `density` nonzeros (0/1, or random values), one row all zero."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, D, generator=g) < density).float()
    x[1] = 0
    return x * torch.randn(B, D, generator=g) if values else x


@pytest.mark.parametrize("values", [False, True])
def test_sparse_input_gives_the_dense_outputs_and_gradients(monkeypatch, values):
    """A mostly-zero shared input goes through SparseRows (gathered table rows); outputs and every gradient
    match the dense GEMM's and the separate modules', and every gradient has its parameter's (contiguous)
    layout, so that AccumulateGrad keeps it and fused Adam reads it without a copy."""
    monkeypatch.setattr(batched, "SPARSE_DENSITY", 0.5)
    x = sparse_input(0.3, values)
    rows = batched.shared_input(x)
    assert isinstance(rows, batched.SparseRows) and rows.nnz >= D
    refs = reference(seed=2)
    torch.manual_seed(2)
    net = BatchedMLP(N, D, WIDTHS, "tanh", out_dim=OUT)
    results = []
    for density in (0.5, 0.0):  # SparseRows, then the GEMM
        monkeypatch.setattr(batched, "SPARSE_DENSITY", density)
        net.zero_grad()
        out = net(x)
        out.square().sum().backward()
        assert all(p.grad.is_contiguous() for p in net.parameters())
        results.append((out, [p.grad.clone() for p in net.parameters()]))
    (sparse, grads), (dense, dense_grads) = results
    for i, ref in enumerate(refs):
        assert_close(sparse[i], ref(x))
    assert_close(sparse, dense)
    for g, d in zip(grads, dense_grads, strict=True):
        assert_close(g, d, atol=1e-5)


def test_sparse_layer_with_a_frozen_weight():
    """A gathered first layer whose weight takes no gradient still gives its bias the GEMM's gradient."""
    x = sparse_input(0.1)
    lin = BatchedLinear(N, D, 3)
    lin.table.requires_grad_(False)
    grads = []
    for rows in (batched.SparseRows(x), x.expand(N, -1, -1)):
        lin.bias.grad = None
        lin(rows).square().sum().backward()
        grads.append(lin.bias.grad)
    assert lin.table.grad is None
    assert_close(grads[0], grads[1], atol=1e-5)


def test_sparse_rows_serve_layers_of_any_width():
    """One SparseRows serves layers over 3, 7 and 2 networks."""
    x = sparse_input()
    rows = batched.shared_input(x)
    assert isinstance(rows, batched.SparseRows)
    for n in (3, 7, 2):
        lin = BatchedLinear(n, D, 4)
        assert_close(lin(rows), torch.baddbmm(lin.bias.unsqueeze(1), x.expand(n, -1, -1), lin.weight))


def test_shared_input_is_sparse_only_when_it_pays():
    """SparseRows for a mostly-zero floating-point CPU input without gradient; the tensor itself for a dense
    one, one that needs a gradient (the gather gives x none) or an integer one."""
    x = sparse_input(0.05)
    assert isinstance(batched.shared_input(x), batched.SparseRows)
    for other in (torch.randn(B, D), x.clone().requires_grad_(), x.long()):
        assert batched.shared_input(other) is other


def test_gradients_stay_in_their_network_with_a_sparse_input():
    net = BatchedMLP(N, D, WIDTHS, "relu", out_dim=OUT)
    x = sparse_input(0.3)
    rows = batched.SparseRows(x)
    for i in range(N):
        net.zero_grad()
        net(rows)[i].square().sum().backward()
        for g in network_grads(net):
            assert torch.count_nonzero(torch.cat([g[:i].flatten(), g[i + 1:].flatten()])) == 0
            assert torch.count_nonzero(g[i]) > 0


def test_one_output_per_network_equals_separate_linears():
    """out_features=1 on per-network inputs (a multiply and a sum instead of bmm): the outputs and gradients
    of n separate nn.Linear(in, 1)."""
    torch.manual_seed(6)
    lins = [nn.Linear(D, 1) for _ in range(N)]
    torch.manual_seed(6)
    lin = BatchedLinear(N, D, 1)
    xs = torch.randn(N, B, D, requires_grad=True)
    out = lin(xs)
    out.square().sum().backward()
    for i, ref in enumerate(lins):
        x = xs[i].detach().requires_grad_()
        want = ref(x)
        want.square().sum().backward()
        assert_close(out[i], want)
        assert_close(lin.table.grad[:, i], ref.weight.grad.T, atol=1e-5)
        assert_close(lin.bias.grad[i], ref.bias.grad, atol=1e-5)
        assert_close(xs.grad[i], x.grad, atol=1e-5)


def test_a_sparse_input_of_no_rows_runs_forward_and_backward():
    """A (0, in) shared input (an empty minibatch) gives (n, 0, out) and zero gradients."""
    lin = BatchedLinear(N, D, 3)
    out = lin(batched.SparseRows(torch.zeros(0, D)))
    assert out.shape == (N, 0, 3)
    out.sum().backward()
    assert not lin.table.grad.any() and not lin.bias.grad.any()
