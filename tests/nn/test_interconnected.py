"""The ICNN inter-layer against a naive reference (one weight matrix per ordered pair, Python loops,
explicit detach), gradient isolation, parameter counts, the targets and sparse-connector variants, pruning
and the L1 term."""
from __future__ import annotations

import pytest
import torch

from safetensors.torch import load_model, save_model

from manytask.nn.interconnected import (InterLayer, apply_masks, connector_l1, count_connectors,
                                        prune_connectors, random_sources, top_sources)

N, n, m, B = 4, 5, 3, 7


def blocks_of(layer: InterLayer) -> dict[tuple[int, int], tuple[torch.Tensor, bool]]:
    """{(k, i): (W(k->i) as an (n, m) leaf copy, exists)} read out of the layer's storage."""
    out = {}
    for k in range(layer.n_tasks):
        for i in range(layer.n_tasks):
            if layer.full:
                w = layer.weight.detach()[i, k]  # (N_dst, N_src, n, m)
            elif k == i:
                w = layer.root.detach()[i]
            elif i in layer.targets.tolist() and k in layer.sources[layer.targets.tolist().index(i)].tolist():
                j = layer.targets.tolist().index(i)
                w = layer.connector.detach()[j, layer.sources[j].tolist().index(k)]
            else:
                continue
            out[(k, i)] = w.clone().requires_grad_(True)
    return out


def naive(a: torch.Tensor, W: dict, bias: torch.Tensor, isolate: bool) -> torch.Tensor:
    """The thesis's equation with Python loops: z_i = sum_k W(k->i) a_k + b_i, sources k != i detached."""
    z = []
    for i in range(a.shape[1]):
        acc = bias[i].expand(a.shape[0], -1)
        for k in range(a.shape[1]):
            if (k, i) not in W:
                continue
            src = a[:, k].detach() if (isolate and k != i) else a[:, k]
            acc = acc + src @ W[(k, i)]
        z.append(acc)
    return torch.stack(z, dim=1)  # (batch, N, m)


def sparse_layer(isolate=True, targets=None, k=2, n_in=n, n_out=m, seed=0):
    """An inter-layer with k sources per receiver, set to a random choice (not the initial cyclic one)."""
    torch.manual_seed(seed)
    layer = InterLayer(N, n_in, n_out, isolate=isolate, targets=targets, connectors=k)
    src = random_sources(N, k, torch.Generator().manual_seed(seed + 7))  # (N, k)
    layer.set_sources(src[layer.targets])
    return layer


@pytest.mark.parametrize("isolate", [True, False])
@pytest.mark.parametrize("targets,k", [(None, None), ([2], None), ([0, 3], None), (None, 1), (None, 2),
                                       ([1, 2], 2), (None, 3)])
def test_parity_with_naive_reference(isolate, targets, k):
    torch.manual_seed(0)
    layer = (InterLayer(N, n, m, isolate=isolate, targets=targets) if k is None
             else sparse_layer(isolate, targets, k)).double()
    with torch.no_grad():
        layer.bias.normal_()
    W = blocks_of(layer)
    bias = layer.bias.detach().clone().requires_grad_(True)
    a1 = torch.randn(B, N, n, dtype=torch.float64, requires_grad=True)
    a2 = a1.detach().clone().requires_grad_(True)
    g = torch.randn(B, N, m, dtype=torch.float64)  # a fixed upstream gradient, different per subnetwork
    z1, z2 = layer(a1), naive(a2, W, bias, isolate)
    torch.testing.assert_close(z1, z2, atol=1e-5, rtol=0)
    (z1 * g).sum().backward()
    (z2 * g).sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.bias.grad, bias.grad, atol=1e-5, rtol=0)
    got = blocks_of_grad(layer)
    for key, w in W.items():
        torch.testing.assert_close(got[key], w.grad, atol=1e-5, rtol=0, msg=f"block {key}")


def blocks_of_grad(layer: InterLayer) -> dict[tuple[int, int], torch.Tensor]:
    saved = {}
    for name in ("weight", "root", "connector"):
        if hasattr(layer, name) and isinstance(getattr(layer, name), torch.nn.Parameter):
            p = getattr(layer, name)
            saved[name] = p.data
            p.data = p.grad
    out = {k: w.detach() for k, w in blocks_of(layer).items()}
    for name, data in saved.items():
        getattr(layer, name).data = data
    return out


def two_layer_net(isolate: bool, targets=None, k=None):
    """Input x -> per-subnetwork first layer -> inter-layer -> per-subnetwork scalar output."""
    torch.manual_seed(1)
    first = torch.nn.Linear(6, N * n)
    if k is None:
        layer = InterLayer(N, n, m, isolate=isolate, targets=targets)
        layer2 = InterLayer(N, m, 2, isolate=isolate, targets=targets)
    else:
        layer, layer2 = sparse_layer(isolate, targets, k, n, m, 1), sparse_layer(isolate, targets, k, m, 2, 2)

    def f(x):
        a = torch.relu(first(x)).reshape(x.shape[0], N, n)  # (batch, N, n)
        a = torch.tanh(layer(a))  # (batch, N, m)
        return layer2(a).sum(-1)  # (batch, N)
    return f, first, layer, layer2


@pytest.mark.parametrize("task", range(N))
def test_task_loss_reaches_only_its_subnetwork(task):
    """d loss_i / d (subnetwork k's roots, biases, connectors into k) is exactly 0 for k != i, in every
    layer, and d loss_i / d (its own first-layer weights) is non-zero."""
    f, first, layer, layer2 = two_layer_net(isolate=True)
    x = torch.randn(B, 6)
    f(x)[:, task].pow(2).sum().backward()
    for lay in (layer, layer2):
        gw = lay.weight.grad  # (N_dst, N_src, n, m)
        for k in range(N):
            if k != task:
                assert torch.count_nonzero(gw[k]) == 0, f"blocks into subnetwork {k} got a gradient"
                assert torch.count_nonzero(lay.bias.grad[k]) == 0
        assert torch.count_nonzero(gw[task]) > 0
    gfirst = first.weight.grad.reshape(N, n, 6)  # (N, n, d)
    for k in range(N):
        nz = torch.count_nonzero(gfirst[k])
        assert (nz > 0) if k == task else (nz == 0), f"first layer of subnetwork {k}: {nz} non-zero grads"


@pytest.mark.parametrize("task", range(N))
@pytest.mark.parametrize("k", [1, 2, 3])
def test_task_loss_reaches_only_its_subnetwork_sparse(task, k):
    """The same rule with sparse connectors: task i's loss reaches subnetwork i's roots, biases, connectors
    into i and first layer only, and every connector into i that a source feeds gets a gradient."""
    f, first, layer, layer2 = two_layer_net(isolate=True, k=k)
    f(torch.randn(B, 6))[:, task].pow(2).sum().backward()
    for lay in (layer, layer2):
        for j in range(N):  # targets = all: connector row j feeds subnetwork j
            nz = [int(torch.count_nonzero(g)) for g in (lay.root.grad[j], lay.connector.grad[j], lay.bias.grad[j])]
            assert all(v > 0 for v in nz) if j == task else all(v == 0 for v in nz), (j, nz)
    gfirst = first.weight.grad.reshape(N, n, 6)
    for j in range(N):
        nz = torch.count_nonzero(gfirst[j])
        assert (nz > 0) if j == task else (nz == 0), f"first layer of subnetwork {j}: {nz} non-zero grads"


def test_sparse_without_isolation_reaches_the_sources():
    f, first, layer, layer2 = two_layer_net(isolate=False, k=1)
    f(torch.randn(B, 6))[:, 0].pow(2).sum().backward()
    gfirst = first.weight.grad.reshape(N, n, 6)
    src = int(layer2.sources[0, 0])  # layer 2 of subnetwork 0 reads subnetwork src
    assert torch.count_nonzero(gfirst[src]) > 0 and torch.count_nonzero(layer.root.grad[src]) > 0


def test_without_isolation_the_loss_reaches_other_subnetworks():
    f, first, layer, layer2 = two_layer_net(isolate=False)
    f(torch.randn(B, 6))[:, 0].pow(2).sum().backward()
    gfirst = first.weight.grad.reshape(N, n, 6)
    for k in range(1, N):
        assert torch.count_nonzero(gfirst[k]) > 0
        assert torch.count_nonzero(layer.weight.grad[k]) > 0  # layer 1 feeds task 0 through layer 2


def test_isolation_with_targets():
    f, first, layer, layer2 = two_layer_net(isolate=True, targets=[1])
    f(torch.randn(B, 6))[:, 1].pow(2).sum().backward()
    gfirst = first.weight.grad.reshape(N, n, 6)
    assert all(torch.count_nonzero(gfirst[k]) == 0 for k in (0, 2, 3))
    assert torch.count_nonzero(gfirst[1]) > 0
    for lay in (layer, layer2):
        assert torch.count_nonzero(lay.connector.grad) > 0
        assert all(torch.count_nonzero(lay.root.grad[k]) == 0 for k in (0, 2, 3))


@pytest.mark.parametrize("N_,n_,m_", [(12, 8, 5), (3, 4, 4), (1, 6, 2)])
def test_parameter_count_is_n_m_N_squared(N_, n_, m_):
    layer = InterLayer(N_, n_, m_)
    assert layer.weight.numel() == n_ * m_ * N_ ** 2
    assert sum(p.numel() for p in layer.parameters()) == n_ * m_ * N_ ** 2 + N_ * m_  # + biases


@pytest.mark.parametrize("targets", [[0], [3], [1, 5, 7]])
def test_parameter_count_with_targets(targets):
    """Section 6.1: N roots plus N-1 connectors per target: n*m*(N + T(N-1)), n*m*(2N-1) for one target."""
    N_, n_, m_ = 12, 8, 5
    layer = InterLayer(N_, n_, m_, targets=targets)
    T = len(targets)
    weights = sum(p.numel() for name, p in layer.named_parameters() if name != "bias")
    assert weights == n_ * m_ * (N_ + T * (N_ - 1))
    if T == 1:
        assert weights == n_ * m_ * (2 * N_ - 1) < n_ * m_ * N_ ** 2
    mat = layer.blocks_abs_sum()  # (N, N)
    assert int((mat > 0).sum()) == N_ + T * (N_ - 1)
    others = [i for i in range(N_) if i not in targets]
    assert torch.all(mat.clone().fill_diagonal_(0)[:, others] == 0)  # no connector into a non-target


@pytest.mark.parametrize("N_,k", [(12, 1), (12, 4), (617, 16)])
def test_sparse_parameter_count_is_n_m_N_k_plus_1(N_, k):
    """Sparse connectors: N roots and N*k connectors, n*m*N*(k+1) weights: O(N*k), not O(N^2)."""
    n_, m_ = 8, 5
    layer = InterLayer(N_, n_, m_, connectors=k)
    assert layer.connector.shape == (N_, k, n_, m_) and layer.sources.shape == (N_, k)
    assert sum(p.numel() for p in layer.parameters()) == n_ * m_ * N_ * (k + 1) + N_ * m_
    mat = layer.blocks_abs_sum()  # (N_src, N_dst)
    assert int((mat > 0).sum()) == N_ * (k + 1)
    assert torch.equal((mat > 0).sum(dim=0), torch.full((N_,), k + 1))  # every destination: root + k sources
    _, total = count_connectors(layer)
    assert total == n_ * m_ * N_ * k


def test_sources_are_saved_loaded_and_checked(tmp_path):
    """The sources buffer is in state_dict: a fresh layer (other initial sources) gets them back, also through a
    safetensors file; set_sources refuses bad choices with a ValueError."""
    a = sparse_layer(k=2, seed=3)
    b = InterLayer(N, n, m, connectors=2)
    assert "sources" in a.state_dict() and not torch.equal(a.sources, b.sources)
    save_model(a, str(tmp_path / "w.safetensors"))
    missing, unexpected = load_model(b, str(tmp_path / "w.safetensors"))
    assert not missing and not unexpected and torch.equal(a.sources, b.sources)
    x = torch.randn(B, N, n)
    torch.testing.assert_close(a(x), b(x))
    assert "sources" not in InterLayer(N, n, m, targets=[1]).state_dict()  # fixed by construction: not saved
    nxt = [(i + 1) % N for i in range(N)]
    for bad, why in (([[j, j] for j in nxt], "distinct"), ([[0, 1]] * N, "own source"), ([[j, N] for j in nxt], "indices"),
                     ([[j] for j in nxt], "shape")):
        with pytest.raises(ValueError, match=why):
            b.set_sources(torch.tensor(bad))
    with pytest.raises(ValueError, match="connectors=k"):
        InterLayer(N, n, m).set_sources(torch.zeros(N, 1, dtype=torch.long))
    for k in (0, N):
        with pytest.raises(ValueError, match="connectors"):
            InterLayer(N, n, m, connectors=k)


def test_top_and_random_sources():
    scores = torch.tensor([[9.0, 1.0, 5.0, 5.0],  # (N_src, N_dst): row = source
                           [2.0, 9.0, 0.0, 5.0],
                           [3.0, 7.0, 9.0, 1.0],
                           [3.0, 7.0, 1.0, 9.0]])
    top = top_sources(scores, 2)  # per destination the 2 best other sources; diagonal never; tie -> lower index
    assert top.tolist() == [[2, 3], [2, 3], [0, 3], [0, 1]]
    assert top_sources(scores, 3)[0].tolist() == [2, 3, 1]
    nan = torch.full((4, 4), float("nan"))  # no evidence at all: still k others, never the destination
    assert top_sources(nan, 3).tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    r = random_sources(30, 5, torch.Generator().manual_seed(0))
    assert r.shape == (30, 5)
    assert all(len(set(row)) == 5 and i not in row for i, row in enumerate(r.tolist()))
    assert torch.equal(r, random_sources(30, 5, torch.Generator().manual_seed(0)))
    assert not torch.equal(r, random_sources(30, 5, torch.Generator().manual_seed(1)))
    assert set(random_sources(30, 29, torch.Generator().manual_seed(0))[4].tolist()) == set(range(30)) - {4}
    with pytest.raises(ValueError, match="top_sources"):
        top_sources(scores, 4)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("targets,k", [(None, None), ([2], None), (None, 2)])
def test_pruning_leaves_the_requested_fraction(fraction, targets, k):
    torch.manual_seed(0)
    model = torch.nn.Sequential(InterLayer(N, 16, 8, targets=targets, connectors=k),
                                InterLayer(N, 8, 4, targets=targets, connectors=k))
    roots = [lay.root_weights().detach().clone() for lay in model]
    nz0, total = count_connectors(model)
    receivers = N if targets is None else len(targets)
    assert nz0 == total == (16 * 8 + 8 * 4) * (N - 1 if k is None else k) * receivers
    kept = prune_connectors(model, fraction)
    nz, _ = count_connectors(model)
    assert nz == total - sum(round(fraction * c) for c in per_layer_connectors(model))
    for lay, r in zip(model, roots):  # roots untouched
        torch.testing.assert_close(lay.root_weights().detach(), r)
    # the survivors are the largest: every pruned |w| <= every kept |w| within a layer
    for lay in model:
        p, mask = lay.connector_params()[0]
        vals, zero = p.detach().abs()[mask], (p.detach() == 0)[mask]
        if zero.any() and (~zero).any():
            assert vals[~zero].min() > 0
    with torch.no_grad():  # fine-tuning: a step moves the pruned weights, apply_masks puts them back
        for p in model.parameters():
            p.add_(1.0)
    apply_masks(kept)
    assert count_connectors(model)[0] == nz


def per_layer_connectors(model):
    return [int(mask.sum()) for lay in model for _, mask in lay.connector_params()]


def test_pruning_keeps_the_largest_magnitudes():
    torch.manual_seed(0)
    lay = InterLayer(3, 4, 4)
    before = lay.weight.detach().clone()
    prune_connectors(lay, 0.75)
    _, mask = lay.connector_params()[0]
    kept = (lay.weight.detach() != 0) & mask
    assert before.abs()[kept].min() >= before.abs()[mask & ~kept].max()


def test_connector_l1_counts_connectors_only():
    lay = InterLayer(3, 2, 2)
    with torch.no_grad():
        lay.weight.fill_(1.0)
        lay.bias.fill_(5.0)
    assert float(connector_l1(lay).detach()) == 2 * 2 * (9 - 3)
    connector_l1(lay).backward()
    g = lay.weight.grad
    assert all(torch.count_nonzero(g[i, i]) == 0 for i in range(3))  # roots get no L1 gradient
    assert torch.count_nonzero(g) == 2 * 2 * 6


def test_zero_rows_and_bad_input():
    lay = InterLayer(N, n, m)
    assert lay(torch.zeros(0, N, n)).shape == (0, N, m)
    lay_t = InterLayer(N, n, m, targets=[1])
    assert lay_t(torch.zeros(0, N, n)).shape == (0, N, m)
    with pytest.raises(ValueError, match="expects"):
        lay(torch.zeros(2, N + 1, n))
    # layers raise plain ValueErrors (a method turns those caused by a user setting into ConfigErrors)
    with pytest.raises(ValueError, match="targets") as bad_targets:
        InterLayer(N, n, m, targets=[N])
    with pytest.raises(ValueError, match="prune") as bad_fraction:
        prune_connectors(lay, 1.0)
    with pytest.raises(ValueError, match="no InterLayer") as no_layer:
        connector_l1(torch.nn.Linear(2, 2))
    assert bad_targets.type is bad_fraction.type is no_layer.type is ValueError
