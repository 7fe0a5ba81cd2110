"""float64 gradcheck with non-zero peepholes, every peephole mode, every backend."""

import pytest
import torch
from torch.autograd import gradcheck

from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell
from peephole_lstm.ops import recurrence as _fused

from .helpers import MODES


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 2)])
def test_gradcheck_layer(backend, peephole, candidate, bidirectional, proj_size):
    m = PeepholeLSTM(
        2,
        3,
        2,
        bidirectional=bidirectional,
        proj_size=proj_size,
        dtype=torch.float64,
        peephole=peephole,
        candidate_peephole=candidate,
    )
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.8, 0.8)
    names = [n for n, _ in m.named_parameters()]
    D = 2 if bidirectional else 1
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2 * D, 2, proj_size or 3, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2 * D, 2, 3, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())

    def f(x, h0, c0, *ps):
        out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)), (x, (h0, c0)))
        return out, h, c

    assert gradcheck(f, (x, h0, c0, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [False, True])
def test_gradcheck_fused_op(backend, reverse, proj):
    """The custom op's own backward, every optional input present."""
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    T, B, H, P = 3, 2, 4, (2 if proj else 4)
    d = dict(dtype=torch.float64, requires_grad=True)
    args = (
        torch.randn(T, B, 4 * H, **d),
        torch.randn(B, P, **d),
        torch.randn(B, H, **d),
        torch.randn(4 * H, P, **d),
        torch.randn(4 * H, **d),
        torch.randn(P, H, **d) if proj else None,
        torch.randn(H, **d),
        torch.randn(H, **d),
        torch.randn(H, **d),
    )

    def f(*a):
        return _fused.recurrence(*a, reverse)[:3]

    assert gradcheck(f, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("peephole,candidate", MODES)
def test_gradcheck_cell(peephole, candidate):
    cell = PeepholeLSTMCell(2, 3, dtype=torch.float64, peephole=peephole, candidate_peephole=candidate)
    names = [n for n, _ in cell.named_parameters()]
    params = tuple(p.detach().clone().uniform_(-0.8, 0.8).requires_grad_() for p in cell.parameters())
    x, h, c = (torch.randn(2, n, dtype=torch.float64, requires_grad=True) for n in (2, 3, 3))

    def f(x, h, c, *ps):
        return torch.func.functional_call(cell, dict(zip(names, ps)), (x, (h, c)))

    assert gradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-6)
