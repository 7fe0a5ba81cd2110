"""On a GPU (skipped without one): parity with nn.LSTM (cuDNN) and gradcheck, every backend
that runs there (the C++ kernel is CPU-only; "cpp" falls back to the PyTorch kernel on CUDA)."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from peephole_lstm import PeepholeLSTM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("bidirectional,proj_size", [(False, 0), (True, 0), (True, 3)])
def test_cuda_matches_nn_lstm(backend, bidirectional, proj_size):
    lstm = nn.LSTM(4, 8, 2, bidirectional=bidirectional, proj_size=proj_size, device="cuda", dtype=torch.float64)
    ours = PeepholeLSTM.from_lstm(lstm)
    x = torch.randn(9, 5, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    a, (ha, ca) = lstm(x)
    b, (hb, cb) = ours(x)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(cb, ca)
    ga = torch.autograd.grad(a.square().sum(), [x, *lstm.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, *[getattr(ours, n) for n, _ in lstm.named_parameters()]])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u)


def test_cuda_gradcheck_with_peepholes(backend):
    m = PeepholeLSTM(2, 3, 2, bidirectional=True, device="cuda", dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().uniform_(-0.8, 0.8).requires_grad_() for p in m.parameters())
    x = torch.randn(4, 2, 2, device="cuda", dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))[0]

    assert gradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(), dict(peephole="full", candidate_peephole=True, cell_clip=2.0),
                                dict(bidirectional=True, proj_size=3)])
def test_cuda_auto_runs_the_triton_kernel_and_matches_the_reference(kw):
    """backend "auto" on CUDA tensors: the Triton kernel (kernels/triton.py), float64 exact."""
    pytest.importorskip("triton")
    import peephole_lstm
    from peephole_lstm import _backend

    m = PeepholeLSTM(4, 8, 2, device="cuda", dtype=torch.float64, **kw)
    x = torch.randn(9, 5, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    peephole_lstm.set_backend("auto")
    try:
        assert _backend.use_triton(x)
        out, (h, c) = m(x)
        grads = torch.autograd.grad(out.square().sum() + c.sum(), [x, *m.parameters()])
        peephole_lstm.set_backend("reference")
        out_r, (h_r, c_r) = m(x)
        want = torch.autograd.grad(out_r.square().sum() + c_r.sum(), [x, *m.parameters()])
    finally:
        peephole_lstm.set_backend("auto")
    torch.testing.assert_close(out, out_r)
    torch.testing.assert_close(c, c_r)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w)
