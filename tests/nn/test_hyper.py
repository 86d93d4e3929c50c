"""manytask/nn/hyper.py: block decomposition round trips, generated weights run exactly like the
originals (LSTM included), Eq. 4's soft merge, proportional sampling and selection."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from manytask.nn.hyper import MuirModels, from_blocks, reparameterisable, to_blocks


def layers():
    torch.manual_seed(0)
    return {"linear": nn.Linear(12, 8), "conv1d": nn.Conv1d(4, 8, 3), "conv2d": nn.Conv2d(4, 6, (3, 2)),
            "lstm": nn.LSTM(4, 6, num_layers=2, bidirectional=True)}


@pytest.mark.parametrize("kind", ["linear", "conv1d", "conv2d", "lstm"])
def test_blocks_round_trip_exactly(kind):
    layer = layers()[kind]
    m, n = 2, 4 if kind != "conv2d" else 2
    specs = reparameterisable(layer, m, n)
    assert specs, f"{kind}: nothing to reparameterise"
    for name, shape, _ in specs:
        w = layer.get_parameter(name).detach()
        b = to_blocks(w, m, n)  # (nb, m, n)
        assert b.shape == (w[0, 0].numel() * (shape[0] // m) * (shape[1] // n), m, n)
        assert torch.equal(from_blocks(b, shape), w)
        # block 0 is the top-left m x n corner at the first kernel position, block 1 the next one right
        # (or below when there is one block column), the last the bottom-right one at the last position
        wk = w.reshape(*shape[:2], -1)  # (O, I, k)
        nxt = wk[:m, n:2 * n, 0] if shape[1] // n > 1 else wk[m:2 * m, :n, 0]
        assert torch.equal(b[0], wk[:m, :n, 0]) and torch.equal(b[1], nxt)
        assert torch.equal(b[-1], wk[-m:, -n:, -1])
        # a leading batch dim (stacked identical models) round-trips too
        assert torch.equal(from_blocks(torch.stack([b, 2 * b]), shape), torch.stack([w, 2 * w]))


def test_what_does_not_divide_stays_plain():
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    names = [n for n, _, _ in reparameterisable(net, 4, 4)]
    assert names == ["2.weight"]  # 8x10 and 3x8 do not divide, biases never
    muir = MuirModels([net], block=(4, 4), context=2)
    plain = {n for n, _ in muir.named_parameters()}
    assert "solo.0.2.weight" not in plain and "solo.0.0.weight" in plain and "solo.0.2.bias" in plain
    assert muir.n_locations == 4 and muir.hyper.shape == (4, 16, 2) and muir.context.shape == (4, 2)
    # the layer raises ValueError (the muir method turns those caused by settings into ConfigError)
    with pytest.raises(ValueError, match="divides"):
        MuirModels([nn.Linear(5, 3)], block=(4, 4))
    with pytest.raises(ValueError, match="alignment needs 4"):
        MuirModels([nn.Linear(8, 8)], block=(4, 4), alignment=[0, 1])
    with pytest.raises(ValueError, match="positive"):
        MuirModels([nn.Linear(8, 8)], block=(4, 4), context=0)


def load_originals(muir: MuirModels, originals: list[nn.Module]) -> None:
    """Set the bank so that it generates exactly the originals' tensors: c = 1, z_l = 1, H_l = B_l."""
    with torch.no_grad():
        blocks = torch.zeros(muir.n_locations, muir.m * muir.n)
        for g in muir.groups:
            for s in g.specs:
                for j, i in enumerate(g.members):
                    b = to_blocks(originals[i].get_parameter(s.name).detach(), muir.m, muir.n)
                    blocks[s.start + j * s.nb:s.start + (j + 1) * s.nb] = b.reshape(s.nb, -1)
        muir.hyper.copy_(blocks[:, :, None])
        muir.context.fill_(1.0)


class Seq(nn.Module):
    """A user model with an LSTM inside: (batch, time, 4) -> (batch, 2)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def models():
    torch.manual_seed(1)
    return [nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4)),
            nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2)),
            Seq(), nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)),
            nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))]


def inputs(batch=5):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(batch, 2, 6, 6, generator=g), torch.randn(batch, 2, 6, generator=g),
            torch.randn(batch, 7, 4, generator=g), torch.randn(batch, 6, generator=g), torch.randn(batch, 6, generator=g)]


@pytest.mark.parametrize("vectorise", [True, False])
def test_generated_models_match_the_originals(vectorise):
    import copy
    originals = models()
    muir = MuirModels(copy.deepcopy(originals), block=(2, 2), context=1, vectorise=vectorise)
    assert [len(g.members) for g in muir.groups] == ([1, 1, 1, 2] if vectorise else [1] * 5)
    load_originals(muir, originals)
    gen = muir.generated()
    for i, orig in enumerate(originals):
        for name, w in gen[i].items():
            assert torch.equal(w, orig.get_parameter(name).detach()), (i, name)
    xs = inputs()
    for got, want in zip(muir(xs), [m(x) for m, x in zip(originals, xs)]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # 0-row inputs and different batch sizes within a vectorised group
    xs0 = [x[:0] for x in xs[:4]] + [xs[4][:3]]
    for got, m, x in zip(muir(xs0), originals, xs0):
        assert got.shape == m(x).shape


def naive_lstm(x, w_ih, w_hh, b_ih, b_hh):
    """x (batch, time, in) -> outputs (batch, time, h), written from the LSTM equations (gates i, f, g, o)."""
    hdim = w_hh.shape[1]
    h = c = torch.zeros(x.shape[0], hdim)
    outs = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh  # (batch, 4h)
        i, f, g, o = gates.split(hdim, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs, 1)


def test_generated_lstm_matches_nn_lstm():
    torch.manual_seed(3)
    lstm = nn.LSTM(4, 8, batch_first=True)
    muir = MuirModels([Seq()], block=(4, 4), context=3)
    gen = muir.generated()[0]
    assert set(gen) == {"lstm.weight_ih_l0", "lstm.weight_hh_l0"}
    with torch.no_grad():  # the same weights in a plain nn.LSTM
        lstm.weight_ih_l0.copy_(gen["lstm.weight_ih_l0"])
        lstm.weight_hh_l0.copy_(gen["lstm.weight_hh_l0"])
        lstm.bias_ih_l0.copy_(muir.solo["0"].lstm.bias_ih_l0)
        lstm.bias_hh_l0.copy_(muir.solo["0"].lstm.bias_hh_l0)
    x = torch.randn(3, 6, 4)
    inner = muir.solo["0"].lstm
    from torch.func import functional_call
    got = functional_call(inner, {k.split(".")[1]: v for k, v in gen.items()}, (x,))[0]
    torch.testing.assert_close(got, lstm(x)[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got, naive_lstm(x, gen["lstm.weight_ih_l0"], gen["lstm.weight_hh_l0"],
                                               inner.bias_ih_l0, inner.bias_hh_l0), rtol=1e-4, atol=1e-5)
    # and the whole wrapped model gives the gradient to the bank, not to a stale copy
    muir([x])[0].sum().backward()
    assert muir.hyper.grad.abs().sum() > 0 and muir.context.grad.abs().sum() > 0


def test_init_is_he_style_and_pessimistic():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 16))
    muir = MuirModels([net], block=(16, 16), context=4)
    assert torch.equal(muir.psi, torch.arange(muir.n_locations))  # one hypermodule per location
    w = muir.generated()[0]["0.weight"].detach()  # (64, 256), entries ~ N(0, 2/256)
    assert abs(float(w.var()) - 2 / 256) < 0.2 * 2 / 256
    assert torch.all(muir.context[:64] == muir.context[0, 0])  # constant contexts


def test_soft_merge_is_eq4():
    torch.manual_seed(4)
    muir = MuirModels([nn.Linear(8, 8), nn.Linear(8, 8)], block=(4, 4), context=2, challengers=2, vectorise=False)
    g = torch.Generator().manual_seed(0)
    locs = muir.propose(0.5, 0.6, g)
    assert len(locs) == 4 and int(muir.active.sum()) == 4
    p = torch.softmax(muir.soft[locs[0]], 0)
    torch.testing.assert_close(p, torch.tensor([0.4, 0.3, 0.3]))
    with torch.no_grad():
        muir.soft[locs] = torch.randn(4, 3)
    blocks = muir.blocks()
    for l in range(muir.n_locations):
        if muir.active[l]:
            w = torch.softmax(muir.soft[l], 0)
            want = sum(w[i] * muir.hyper[muir.cand[l, i]] @ muir.context[l] for i in range(3))
        else:
            want = muir.hyper[muir.psi[l]] @ muir.context[l]
        torch.testing.assert_close(blocks[l].reshape(-1), want)


def test_proportional_sampling_and_selection():
    muir = MuirModels([nn.Linear(40, 40)], block=(4, 4), context=1, challengers=3)  # 100 locations
    with torch.no_grad():
        muir.psi.copy_(torch.where(torch.arange(100) < 90, 7, torch.arange(100)))  # module 7 used by 90%
    g = torch.Generator().manual_seed(0)
    locs = muir.propose(0.5, 0.5, g)
    challengers = muir.cand[locs, 1:]  # (P, lambda)
    assert 0.8 < float((challengers == 7).float().mean()) < 0.97  # challengers drawn in proportion to use
    assert torch.equal(muir.cand[locs, 0], muir.psi[locs])
    with torch.no_grad():  # make challenger 2 win at every mixing location
        muir.soft[locs, 2] = 5.0
    before = muir.psi.clone()
    changed = muir.select()
    assert torch.equal(muir.psi[locs], challengers[:, 1])
    assert changed == int((challengers[:, 1] != before[locs]).sum())
    keep = ~torch.isin(torch.arange(100), locs)
    assert torch.equal(muir.psi[keep], before[keep]) and not muir.active.any()
    assert muir.sharing()[7] == [0]


@pytest.mark.parametrize("chunk", [3, 8192])
def test_chunked_generation_matches_the_gathered_product_and_its_gradients(chunk, monkeypatch):
    """_Generate (Eqs. 3 and 4 without gathering the bank) equals sum_i w_i H[index_i] z, with the exact
    gradients (gradcheck in float64), whether the rows fit one chunk or span several."""
    from manytask.nn import hyper
    monkeypatch.setattr(hyper, "CHUNK", chunk)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 6, 3, dtype=torch.double, generator=g, requires_grad=True)  # (K, m*n, c)
    z = torch.randn(10, 3, dtype=torch.double, generator=g, requires_grad=True)  # (R, c)
    idx = torch.randint(7, (10, 3), generator=g)  # (R, I)
    w = torch.rand(10, 3, dtype=torch.double, generator=g, requires_grad=True)  # (R, I)
    torch.testing.assert_close(hyper._Generate.apply(h, z, idx, w), torch.einsum("ripc,rc,ri->rp", h[idx], z, w))
    torch.testing.assert_close(hyper._Generate.apply(h, z, idx[:, :1], None), torch.einsum("rpc,rc->rp", h[idx[:, 0]], z))
    assert torch.autograd.gradcheck(lambda h, z, w: hyper._Generate.apply(h, z, idx, w), (h, z, w))
    assert torch.autograd.gradcheck(lambda h, z: hyper._Generate.apply(h, z, idx[:, :1], None), (h, z))


def test_models_reading_one_input_share_it():
    """Identical models given the same tensor run on it once (no stacked copies) with the same outputs as
    when each gets its own copy."""
    torch.manual_seed(0)
    muir = MuirModels([nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 4)) for _ in range(3)], block=(4, 4))
    x = torch.randn(5, 8)
    shared, copies = muir([x, x, x]), muir([x.clone(), x.clone(), x.clone()])
    for a, b in zip(shared, copies):
        torch.testing.assert_close(a, b)
