"""Every configuration on the fused op: full and candidate peepholes, packed batches (sorted
and unsorted), both directions, projections; against the float64 numpy reference, the
reference autograd loop, and gradcheck of the op itself."""

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_sequence

import peephole_lstm
from peephole_lstm import PeepholeLSTM
from peephole_lstm.ops import recurrence as _fused

from . import reference as ref
from .helpers import MODES, randomized

LENGTHS = {"sorted": [7, 5, 5, 2], "unsorted": [3, 7, 1, 5]}


def _model(peephole, candidate, bidirectional, proj_size, num_layers=2):
    return randomized(PeepholeLSTM(3, 5, num_layers, bidirectional=bidirectional, proj_size=proj_size,
                                   dtype=torch.float64, peephole=peephole, candidate_peephole=candidate))


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize("order", ["sorted", "unsorted"])
@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 2)])
def test_packed_matches_numpy_reference_per_sequence(backend, peephole, candidate, order, bidirectional, proj_size):
    """A packed batch gives, for each sequence, what that sequence alone gives."""
    m = _model(peephole, candidate, bidirectional, proj_size)
    D = 2 if bidirectional else 1
    lengths = LENGTHS[order]
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in lengths]
    h0 = torch.randn(2 * D, len(seqs), proj_size or 5, dtype=torch.float64)
    c0 = torch.randn(2 * D, len(seqs), 5, dtype=torch.float64)
    packed = pack_sequence(seqs, enforce_sorted=order == "sorted")
    out, (h, c) = m(packed, (h0, c0))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)  # (T, B, D*P) in the original order
    params = ref.numpy_params(m)
    for b, x in enumerate(seqs):
        r_out, r_h, r_c = ref.lstm(x.numpy()[:, None], h0[:, b : b + 1].numpy(), c0[:, b : b + 1].numpy(), params, 2,
                                   bidirectional)
        np.testing.assert_allclose(padded[: len(x), b].detach().numpy(), r_out[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(h[:, b].detach().numpy(), r_h[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(c[:, b].detach().numpy(), r_c[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize("order", ["sorted", "unsorted"])
def test_packed_gradients_match_the_reference_loop(backend, peephole, candidate, order):
    if backend == "reference":
        pytest.skip("compares the fused op with the reference loop")
    m = _model(peephole, candidate, True, 2)
    seqs = [torch.randn(n, 3, dtype=torch.float64, requires_grad=True) for n in LENGTHS[order]]
    h0 = torch.randn(4, 4, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)
    leaves = seqs + [h0, c0] + list(m.parameters())
    results = []
    for b in (backend, "reference"):
        peephole_lstm.set_backend(b)
        out, (h, c) = m(pack_sequence(seqs, enforce_sorted=order == "sorted"), (h0, c0))
        w = [torch.linspace(0.5, 1.5, t.numel(), dtype=t.dtype).view(t.shape) for t in (out.data, h, c)]
        loss = (out.data * w[0]).sum() + (h * w[1]).sum() + (c * w[2]).sum()
        results.append((out.data, h, c, torch.autograd.grad(loss, leaves)))
    peephole_lstm.set_backend(backend)
    (a_out, a_h, a_c, a_g), (b_out, b_h, b_c, b_g) = results
    torch.testing.assert_close(a_out, b_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_h, b_h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a_c, b_c, rtol=1e-10, atol=1e-12)
    for ga, gb in zip(a_g, b_g):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-11)


def _op_args(T, B, H, P, peephole, candidate, packed):
    d = dict(dtype=torch.float64, requires_grad=True)
    shape = (H, H) if peephole == "full" else (H,)
    peep = [torch.randn(*shape, **d) * 0.5 for _ in range(3)] if peephole != "none" else [None] * 3
    batch_sizes = torch.tensor([B, B, B - 1, 1][:T]) if packed else None
    rows = (int(batch_sizes.sum()),) if packed else (T, B)
    return (
        torch.randn(*rows, 4 * H, **d),
        torch.randn(B, P, **d),
        torch.randn(B, H, **d),
        torch.randn(4 * H, P, **d) * 0.5,
        torch.randn(4 * H, **d),
        torch.randn(P, H, **d) if P != H else None,
        *peep,
    ), (torch.randn(*shape, **d) * 0.5 if candidate else None), batch_sizes


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed,proj", [(False, False), (True, False), (True, True)])
def test_gradcheck_fused_op_every_configuration(backend, peephole, candidate, reverse, packed, proj):
    """The op's hand-written backward against finite differences, every input present."""
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    args, w_cc, batch_sizes = _op_args(4, 3, 3, 2 if proj else 3, peephole, candidate, packed)

    def f(*a):
        *a, cc = a
        return _fused.recurrence(*a, reverse, True, cc, batch_sizes)[:3]

    assert gradcheck(f, (*args, w_cc), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("peephole,candidate", [("diagonal", True), ("full", True)])
def test_inference_saves_nothing_every_configuration(backend, peephole, candidate):
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    args, w_cc, batch_sizes = _op_args(4, 3, 3, 3, peephole, candidate, True)
    with torch.no_grad():
        lean = _fused.recurrence(*args, False, False, w_cc, batch_sizes)
        full = _fused.recurrence(*args, False, True, w_cc, batch_sizes)
    assert lean[3].numel() == 0 and lean[4].numel() == 0
    for x, y in zip(lean[:3], full[:3]):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)
