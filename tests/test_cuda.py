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


@pytest.mark.parametrize("step", ["fused", "gemm"])
@pytest.mark.parametrize("kw", [dict(), dict(peephole="full", candidate_peephole=True, cell_clip=2.0),
                                dict(bidirectional=True, proj_size=3)])
def test_cuda_auto_runs_the_triton_kernel_and_matches_the_reference(kw, step, knobs):
    """backend "auto" on CUDA tensors: the Triton kernel (kernels/triton.py), float64 exact,
    each step's GEMM in the cell kernel (tl.dot, float64) or through cuBLAS."""
    pytest.importorskip("triton")
    knobs(triton_step=step)
    import peephole_lstm
    from peephole_lstm.ops import backend as _backend

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


@pytest.mark.parametrize("kw", [dict(), dict(peephole="full", candidate_peephole=True, cell_clip=2.0),
                                dict(bidirectional=True, proj_size=3), dict(packed=True)])
def test_cuda_graph_replays_new_inputs_and_updated_weights(kw):
    """The Triton path's CUDA graphs (captured on a shape's second call, then replayed): every
    call, with fresh inputs and after in-place weight updates (an optimizer step), matches the
    float64 reference loop; forward and backward graphs exist after the second call."""
    pytest.importorskip("triton")
    from torch.nn.utils.rnn import pack_sequence

    import peephole_lstm
    from peephole_lstm.ops.kernels import triton as tr

    kw = dict(kw)
    packed = kw.pop("packed", False)
    tr.release_graphs()
    m = PeepholeLSTM(4, 8, 2, device="cuda", dtype=torch.float64, **kw)

    def inputs():
        if packed:
            return [torch.randn(k, 4, device="cuda", dtype=torch.float64, requires_grad=True) for k in (5, 9, 2, 7)]
        return [torch.randn(9, 5, 4, device="cuda", dtype=torch.float64, requires_grad=True)]

    def run(xs):
        x = pack_sequence(xs, enforce_sorted=False) if packed else xs[0]
        out, (h, c) = m(x)
        out = out.data if packed else out
        loss = out.square().sum() + h.sum() + (c * c).sum()
        return [out, h, c, *torch.autograd.grad(loss, [*xs, *m.parameters()])]

    try:
        for k in range(4):
            if k == 3:
                with torch.no_grad():
                    for p in m.parameters():
                        p.add_(0.1 * torch.randn_like(p))
            xs = inputs()
            peephole_lstm.set_backend("auto")
            got = run(xs)
            if k >= 1:
                names = {key[0] for key in tr._GRAPHS}
                assert names == {"_forward_eager", "_backward_eager"}, names
            peephole_lstm.set_backend("reference")
            want = run(xs)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)
    finally:
        peephole_lstm.set_backend("auto")


@pytest.mark.parametrize("kw", [dict(), dict(candidate_peephole=True, cell_clip=1.0, bidirectional=True),
                                dict(peephole="full", candidate_peephole=True)])
def test_cuda_one_launch_kernel_float32_against_float64(kw, knobs, count_launches):
    """H = 50 in float32 (TF32 off) runs the one-launch kernel: outputs within 1e-4 and
    gradients within 1e-3 (relative, in norm) of the float64 reference."""
    pytest.importorskip("triton")
    knobs(cuda_graphs="0")  # count the launches themselves
    import peephole_lstm
    from peephole_lstm.ops.kernels import triton as tr

    launches = count_launches(tr, "_persist_fwd")
    m = PeepholeLSTM(7, 50, 2, device="cuda", **kw)
    m64 = PeepholeLSTM(7, 50, 2, device="cuda", dtype=torch.float64, **kw)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    x = torch.randn(60, 32, 7, device="cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        peephole_lstm.set_backend("auto")
        xg = x.clone().requires_grad_()
        out, (h, c) = m(xg)
        grads = torch.autograd.grad(out.square().sum() + c.sum(), [xg, *m.parameters()])
        peephole_lstm.set_backend("reference")
        x64 = x.double().requires_grad_()
        out_r, (h_r, c_r) = m64(x64)
        want = torch.autograd.grad(out_r.square().sum() + c_r.sum(), [x64, *m64.parameters()])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        peephole_lstm.set_backend("auto")
    assert len(launches) == 2 * (2 if kw.get("bidirectional") else 1)

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(out, out_r) < 1e-4 and rel(c, c_r) < 1e-4
    for g, w in zip(grads, want):
        assert rel(g, w) < 1e-3


def test_cuda_graphs_under_inference_mode_and_no_grad():
    """torch.inference_mode and torch.no_grad (Lightning's validation vs predict) each get their
    own graph (inference-mode buffers can be written only there), both match the reference."""
    pytest.importorskip("triton")
    import peephole_lstm
    from peephole_lstm.ops.kernels import triton as tr

    tr.release_graphs()
    m = PeepholeLSTM(4, 8, device="cuda", dtype=torch.float64)
    got, want = [], []
    try:
        for mode in (torch.inference_mode, torch.no_grad):
            for _ in range(3):
                x = torch.randn(6, 3, 4, device="cuda", dtype=torch.float64)
                with mode():
                    peephole_lstm.set_backend("auto")
                    got.append(m(x)[0])
                    peephole_lstm.set_backend("reference")
                    want.append(m(x)[0])
    finally:
        peephole_lstm.set_backend("auto")
    assert len(tr._GRAPHS) == 2
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
