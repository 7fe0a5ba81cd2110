"""With peepholes on, PeepholeLSTM and PeepholeLSTMCell equal an independent float64
numpy implementation of the equations (tests/reference.py), for every peephole mode."""

import math

import numpy as np
import pytest
import torch

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell

from . import reference as ref
from .helpers import MODES, randomized


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize(
    "bidirectional,proj_size,num_layers", [(False, 0, 1), (True, 0, 2), (False, 3, 2), (True, 2, 1)]
)
def test_layer_matches_numpy_reference(backend, peephole, candidate, bidirectional, proj_size, num_layers):
    m = PeepholeLSTM(
        3,
        5,
        num_layers,
        bidirectional=bidirectional,
        proj_size=proj_size,
        dtype=torch.float64,
        peephole=peephole,
        candidate_peephole=candidate,
    )
    randomized(m)
    D = 2 if bidirectional else 1
    x = torch.randn(7, 4, 3, dtype=torch.float64) * 2
    h0 = torch.randn(num_layers * D, 4, proj_size or 5, dtype=torch.float64)
    c0 = torch.randn(num_layers * D, 4, 5, dtype=torch.float64)
    out, (h, c) = m(x, (h0, c0))
    r_out, r_h, r_c = ref.lstm(x.numpy(), h0.numpy(), c0.numpy(), ref.numpy_params(m), num_layers, bidirectional)
    np.testing.assert_allclose(out.detach().numpy(), r_out, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h.detach().numpy(), r_h, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c.detach().numpy(), r_c, rtol=1e-10, atol=1e-12)


def test_peepholes_change_the_output(backend):
    m = PeepholeLSTM(3, 5, dtype=torch.float64)
    randomized(m)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with_p = m(x)[0]
    with torch.no_grad():
        for g in "ifo":
            getattr(m, f"weight_c{g}_l0").zero_()
    assert (with_p - m(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("peephole,candidate", MODES)
def test_cell_matches_numpy_reference(peephole, candidate):
    cell = PeepholeLSTMCell(3, 5, dtype=torch.float64, peephole=peephole, candidate_peephole=candidate)
    randomized(cell)
    x, h, c = (torch.randn(4, n, dtype=torch.float64) for n in (3, 5, 5))
    h1, c1 = cell(x, (h, c))
    p = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    r_h, r_c = ref.cell_step(x.numpy(), h.numpy(), c.numpy(), p)
    np.testing.assert_allclose(h1.detach().numpy(), r_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c1.detach().numpy(), r_c, rtol=1e-12, atol=1e-14)


def test_hand_checked_single_step():
    """One unit, one step, every number worked out by hand.

    x=1, h=0, c_prev=0.5, W_ih=[0.1,0.2,0.3,0.4], W_hh=anything (h=0), no bias,
    w_ci=1, w_cf=-1, w_co=2:
        i = σ(0.1 + 0.5) = σ(0.6);  f = σ(0.2 - 0.5) = σ(-0.3);  g = tanh(0.3)
        c = σ(-0.3)·0.5 + σ(0.6)·tanh(0.3)
        o = σ(0.4 + 2c);  h = o·tanh(c)
    """
    cell = PeepholeLSTMCell(1, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.tensor([[0.1], [0.2], [0.3], [0.4]], dtype=torch.float64))
        cell.weight_hh.fill_(7.0)
        cell.weight_ci.fill_(1.0)
        cell.weight_cf.fill_(-1.0)
        cell.weight_co.fill_(2.0)
    s = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    c = s(-0.3) * 0.5 + s(0.6) * math.tanh(0.3)
    h = s(0.4 + 2 * c) * math.tanh(c)
    # worked out by hand: c = 0.425557*0.5 + 0.645656*0.291313 = 0.400867,
    # o = σ(0.4 + 0.801733) = 0.768833, h = 0.768833 * tanh(0.400867) = 0.768833 * 0.380690
    assert abs(c - 0.400867) < 1e-6 and abs(h - 0.292687) < 1e-6
    h1, c1 = cell(
        torch.ones(1, 1, dtype=torch.float64),
        (torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), 0.5, dtype=torch.float64)),
    )
    assert c1.item() == pytest.approx(c, abs=1e-15)
    assert h1.item() == pytest.approx(h, abs=1e-15)


@pytest.mark.parametrize("peephole,candidate", MODES)
def test_cell_looped_over_time_equals_layer(backend, peephole, candidate):
    layer = PeepholeLSTM(3, 5, dtype=torch.float64, peephole=peephole, candidate_peephole=candidate)
    randomized(layer)
    cell = PeepholeLSTMCell(3, 5, dtype=torch.float64, peephole=peephole, candidate_peephole=candidate)
    with torch.no_grad():
        for name, p in cell.named_parameters():
            p.copy_(getattr(layer, f"{name}_l0"))
    x = torch.randn(8, 2, 3, dtype=torch.float64)
    out, (h_n, c_n) = layer(x)
    h = c = torch.zeros(2, 5, dtype=torch.float64)
    steps = []
    for x_t in x:
        h, c = cell(x_t, (h, c))
        steps.append(h)
    torch.testing.assert_close(out, torch.stack(steps), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c_n[0], c, rtol=1e-12, atol=1e-14)


def test_cell_unbatched_and_default_state():
    cell = PeepholeLSTMCell(3, 4)
    x = torch.randn(3)
    h, c = cell(x)
    assert h.shape == (4,) and c.shape == (4,)
    hb, cb = cell(x.unsqueeze(0), (torch.zeros(1, 4), torch.zeros(1, 4)))
    torch.testing.assert_close(hb[0], h)
    h2, _ = cell(x, (h, c))
    assert h2.shape == (4,)
