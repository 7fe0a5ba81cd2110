"""PeepholeLSTM with its peepholes zeroed is torch.nn.LSTM: outputs, states and gradients
of every parameter and input, over every configuration and input form, on every backend."""

import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from peephole_lstm import PeepholeLSTM

CONFIGS = list(
    itertools.product(
        [1, 2],  # num_layers
        [True, False],  # bias
        [False, True],  # batch_first
        [False, True],  # bidirectional
        [0, 3],  # proj_size
    )
)
FORMS = ["batched", "batched_state", "unbatched", "unbatched_state", "packed_sorted", "packed_unsorted"]
I, H, T, B = 4, 5, 6, 3


def _inputs(form, batch_first, num_states, h_size):
    torch.manual_seed(1)
    if form.startswith("packed"):
        lengths = [6, 4, 2] if form == "packed_sorted" else [3, 6, 1]
        seqs = [torch.randn(n, I, dtype=torch.float64, requires_grad=True) for n in lengths]
        x = pack_sequence(seqs, enforce_sorted=form == "packed_sorted")
        leaves = seqs
        hx = (
            torch.randn(num_states, B, h_size, dtype=torch.float64, requires_grad=True),
            torch.randn(num_states, B, H, dtype=torch.float64, requires_grad=True),
        )
        return x, hx, leaves + list(hx)
    batched = form.startswith("batched")
    shape = ((B, T, I) if batch_first else (T, B, I)) if batched else (T, I)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    leaves = [x]
    hx = None
    if form.endswith("state"):
        batch = (B,) if batched else ()
        hx = (
            torch.randn(num_states, *batch, h_size, dtype=torch.float64, requires_grad=True),
            torch.randn(num_states, *batch, H, dtype=torch.float64, requires_grad=True),
        )
        leaves += list(hx)
    return x, hx, leaves


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("num_layers,bias,batch_first,bidirectional,proj_size", CONFIGS)
def test_matches_nn_lstm(backend, form, num_layers, bias, batch_first, bidirectional, proj_size):
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H, num_layers, bias, batch_first, 0.0, bidirectional, proj_size, dtype=torch.float64)
    ours = PeepholeLSTM.from_lstm(lstm)
    assert ours.weight_ci_l0.abs().sum() == 0
    num_states = num_layers * (2 if bidirectional else 1)
    h_size = proj_size or H
    outs, grads = [], []
    for model in (lstm, ours):
        x, hx, leaves = _inputs(form, batch_first, num_states, h_size)
        out, (h_n, c_n) = model(x, hx)
        outs.append((out, h_n, c_n))
        data = out.data if isinstance(out, PackedSequence) else out
        # A loss that weights every element differently, so that a permutation shows.
        loss = sum(
            (t * torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).view(t.shape)).sum() for t in (data, h_n, c_n)
        )
        params = [p for _, p in sorted(model.named_parameters()) if not _.startswith("weight_c")]
        grads.append(torch.autograd.grad(loss, leaves + params))
    (a, ha, ca), (b, hb, cb) = outs
    assert type(a) is type(b)
    if isinstance(a, PackedSequence):
        assert torch.equal(a.batch_sizes, b.batch_sizes)
        assert (
            torch.equal(a.sorted_indices, b.sorted_indices)
            if a.sorted_indices is not None
            else b.sorted_indices is None
        )
        a, b = a.data, b.data
    assert a.shape == b.shape and ha.shape == hb.shape and ca.shape == cb.shape
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hb, ha, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cb, ca, rtol=1e-10, atol=1e-12)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_matches_nn_lstm(backend, bidirectional):
    lstm = nn.LSTM(7, 16, 2, bidirectional=bidirectional)
    ours = PeepholeLSTM.from_lstm(lstm)
    x = torch.randn(20, 8, 7)
    out_a, (h_a, c_a) = lstm(x)
    out_b, (h_b, c_b) = ours(x)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_b, c_a, rtol=1e-5, atol=1e-6)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    for name, p in lstm.named_parameters():
        torch.testing.assert_close(getattr(ours, name).grad, p.grad, rtol=1e-4, atol=1e-5)


def test_peephole_none_has_no_peephole_parameters_and_equals_lstm(backend):
    lstm = nn.LSTM(3, 4, 2, dtype=torch.float64)
    ours = PeepholeLSTM(3, 4, 2, dtype=torch.float64, peephole="none")
    assert sorted(n for n, _ in ours.named_parameters()) == sorted(n for n, _ in lstm.named_parameters())
    ours.load_state_dict(lstm.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], lstm(x)[0], rtol=1e-12, atol=1e-12)


def test_state_dict_from_lstm_misses_only_peepholes():
    lstm = nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2)
    ours = PeepholeLSTM(3, 4, 2, bidirectional=True, proj_size=2)
    missing, unexpected = ours.load_state_dict(lstm.state_dict(), strict=False)
    assert unexpected == []
    assert sorted(missing) == sorted(f"weight_c{g}_l{k}{s}" for g in "ifo" for k in (0, 1) for s in ("", "_reverse"))


def test_parameter_names_and_shapes_match_lstm():
    lstm = nn.LSTM(3, 6, 2, bidirectional=True, proj_size=2, bias=False)
    ours = PeepholeLSTM(3, 6, 2, bidirectional=True, proj_size=2, bias=False)
    lstm_shapes = {n: p.shape for n, p in lstm.named_parameters()}
    ours_shapes = {n: p.shape for n, p in ours.named_parameters()}
    for name, shape in lstm_shapes.items():
        assert ours_shapes[name] == shape
    assert ours_shapes["weight_ci_l1_reverse"] == (6,)
    full = PeepholeLSTM(3, 6, peephole="full", candidate_peephole=True)
    assert full.weight_co_l0.shape == (6, 6) and full.weight_cc_l0.shape == (6, 6)
    assert [len(w) for w in ours.all_weights] == [len(w) + 3 for w in lstm.all_weights]


def test_dropout_only_between_layers_in_training(backend):
    lstm = nn.LSTM(3, 8, 3, dropout=0.5)
    ours = PeepholeLSTM.from_lstm(lstm)
    x = torch.randn(6, 4, 3)
    ours.eval()
    lstm.eval()
    torch.testing.assert_close(ours(x)[0], lstm(x)[0], rtol=1e-5, atol=1e-6)
    ours.train()
    torch.manual_seed(1)
    a = ours(x)[0]
    torch.manual_seed(2)
    b = ours(x)[0]
    assert not torch.allclose(a, b), "dropout must be active in training mode"
    one = PeepholeLSTM(3, 8, 1)  # dropout 0: training is deterministic
    torch.testing.assert_close(one(x)[0], one(x)[0])


def test_dropout_warning_matches_lstm():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as ours:
        PeepholeLSTM(3, 4, 1, dropout=0.2)
    with pytest.warns(UserWarning) as theirs:
        nn.LSTM(3, 4, 1, dropout=0.2)
    assert str(ours[0].message) == str(theirs[0].message)


def test_from_lstm_keeps_device_dtype_and_config():
    lstm = nn.LSTM(3, 4, 2, batch_first=True, bidirectional=True, proj_size=2, dtype=torch.float64).eval()
    ours = PeepholeLSTM.from_lstm(lstm)
    assert ours.weight_ih_l0.dtype == torch.float64 and not ours.training
    for attr in (
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
    ):
        assert getattr(ours, attr) == getattr(lstm, attr)
    with pytest.raises(TypeError, match="torch.nn.LSTM"):
        PeepholeLSTM.from_lstm(nn.GRU(3, 4))


def test_extra_repr():
    lstm = nn.LSTM(4, 5, 2, batch_first=True, dropout=0.1, bidirectional=True, proj_size=3)
    ours = PeepholeLSTM(4, 5, 2, batch_first=True, dropout=0.1, bidirectional=True, proj_size=3)
    assert repr(ours) == repr(lstm).replace("LSTM", "PeepholeLSTM", 1)
    assert repr(PeepholeLSTM(2, 3, peephole="full", candidate_peephole=True)) == (
        "PeepholeLSTM(2, 3, peephole='full', candidate_peephole=True)"
    )


def test_meta_device_double_pickle_and_non_contiguous(backend):
    import pickle

    meta = PeepholeLSTM(3, 4, 2, device="meta")
    assert meta.weight_ci_l1.is_meta
    m = PeepholeLSTM(3, 4, 2, bidirectional=True).double()
    assert m.weight_ci_l0.dtype == torch.float64
    x = torch.randn(4, 6, 3, dtype=torch.float64)[:, ::2]  # non-contiguous (T, B, I)
    assert not x.is_contiguous()
    out = m(x)[0]
    # Different memory layouts may take different BLAS paths (seen on AMD: 5.6e-17 apart in
    # float64), so equal within float64 rounding, never bit for bit.
    torch.testing.assert_close(out, m(x.contiguous())[0], rtol=1e-12, atol=1e-14)
    clone = pickle.loads(pickle.dumps(m))
    for (name, p), q in zip(m.named_parameters(), clone.parameters()):
        assert torch.equal(p, q), name  # pickling copies the weights exactly
    torch.testing.assert_close(clone(x)[0], out, rtol=1e-12, atol=1e-14)


def test_functional_call_uses_the_given_weights(backend):
    m = PeepholeLSTM(3, 4)
    x = torch.randn(5, 2, 3)
    params = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    out = torch.func.functional_call(m, params, (x,))[0]
    assert out.abs().max() == 0  # all-zero weights: h = σ(0) tanh(0) = 0
    assert m(x)[0].abs().max() > 0


def test_zero_batch(backend):
    out, (h, c) = PeepholeLSTM(3, 4)(torch.randn(5, 0, 3))
    assert out.shape == (5, 0, 4) and h.shape == (1, 0, 4)
