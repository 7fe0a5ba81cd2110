"""The Triton kernel (kernels/triton.py) through Triton's interpreter on CPU tensors: every
peephole form, projections, both directions, packed input and the cell clip; outputs, states
and every gradient against the float64 numpy reference and the reference autograd loop.
Without a GPU these run the kernels' own code, element by element (small shapes: the
interpreter is slow); tests/test_cuda.py covers the GPU."""

import os

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

pytest.importorskip("triton")
os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are first imported

import peephole_lstm  # noqa: E402
from peephole_lstm import PeepholeLSTM  # noqa: E402

from . import reference as ref  # noqa: E402
from .helpers import randomized  # noqa: E402

CONFIGS = [
    dict(peephole="diagonal"),
    dict(peephole="none", proj_size=2),
    dict(peephole="diagonal", candidate_peephole=True, proj_size=2, cell_clip=0.5),
    dict(peephole="full", candidate_peephole=True),
    dict(peephole="full", cell_clip=0.5),
]


@pytest.fixture
def triton_backend():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs TRITON_INTERPRET=1 (set before triton was imported) or a GPU")
    old = peephole_lstm.get_backend()
    peephole_lstm.set_backend("triton")
    yield
    peephole_lstm.set_backend(old)


def _model(kw):
    return randomized(PeepholeLSTM(3, 5, 2, bidirectional=True, dtype=torch.float64, **kw), 0.8)


@pytest.fixture(params=["fused", "gemm"])
def step(request, knobs):
    """Each step's GEMM inside the cell kernel (tl.dot) or through torch.addmm."""
    knobs(triton_step=request.param)
    return request.param


@pytest.mark.parametrize("kw", CONFIGS, ids=[str(k) for k in CONFIGS])
def test_forward_and_gradients_match_the_references(triton_backend, step, kw):
    m = _model(kw)
    x = (1.5 * torch.randn(6, 3, 3, dtype=torch.float64)).requires_grad_()
    H_out = kw.get("proj_size") or 5
    h0 = torch.randn(4, 3, H_out, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    out, (h, c) = m(x, (h0, c0))
    r_out, r_h, r_c = ref.lstm(x.detach().numpy(), h0.detach().numpy(), c0.detach().numpy(), ref.numpy_params(m),
                               2, True, clip=kw.get("cell_clip"))
    for got, want in ((out, r_out), (h, r_h), (c, r_c)):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    loss = out.square().sum() + h.sum() + (c * torch.linspace(-1, 1, 5, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, [x, h0, c0, *m.parameters()])
    peephole_lstm.set_backend("reference")
    out, (h, c) = m(x, (h0, c0))
    loss = out.square().sum() + h.sum() + (c * torch.linspace(-1, 1, 5, dtype=torch.float64)).sum()
    want = torch.autograd.grad(loss, [x, h0, c0, *m.parameters()])
    names = ["x", "h0", "c0", *(n for n, _ in m.named_parameters())]
    for name, g, w in zip(names, grads, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("kw", CONFIGS, ids=[str(k) for k in CONFIGS])
def test_packed_input(triton_backend, step, kw):
    """Unsorted lengths: step t runs on its first n_t rows; the initial states get their
    gradients where each sequence starts (in the reverse direction at different steps)."""
    m = _model(kw)
    seqs = [torch.randn(k, 3, dtype=torch.float64, requires_grad=True) for k in (3, 5, 1, 4)]
    h0 = torch.randn(4, 4, kw.get("proj_size") or 5, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 4, 5, dtype=torch.float64, requires_grad=True)
    out, (h, c) = m(pack_sequence(seqs, enforce_sorted=False), (h0, c0))
    loss = out.data.square().sum() + h.sum() + c.sum()
    grads = torch.autograd.grad(loss, [*seqs, h0, c0, *m.parameters()])
    peephole_lstm.set_backend("reference")
    out_r, (h_r, c_r) = m(pack_sequence(seqs, enforce_sorted=False), (h0, c0))
    torch.testing.assert_close(out.data, out_r.data, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c, c_r, rtol=1e-10, atol=1e-12)
    want = torch.autograd.grad(out_r.data.square().sum() + h_r.sum() + c_r.sum(), [*seqs, h0, c0, *m.parameters()])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_float32_inference_and_bfloat16_storage(triton_backend):
    """float32 within float32 rounding; bfloat16 tensors computed in float32 inside the kernel."""
    m = PeepholeLSTM(3, 5)
    x = torch.randn(7, 2, 3)
    with torch.no_grad():
        got = m(x)[0]
        peephole_lstm.set_backend("reference")
        want = m(x)[0]
        peephole_lstm.set_backend("triton")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        mb = m.to(torch.bfloat16)
        got_b = mb(x.to(torch.bfloat16))[0]
    torch.testing.assert_close(got_b.float(), want, rtol=0.05, atol=0.05)


def test_forcing_triton_on_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    old = peephole_lstm.get_backend()
    peephole_lstm.set_backend("triton")
    try:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            PeepholeLSTM(3, 5)(torch.randn(4, 2, 3))
    finally:
        peephole_lstm.set_backend(old)


PERSISTENT = [
    dict(peephole="diagonal"),
    dict(peephole="none"),
    dict(peephole="diagonal", candidate_peephole=True, cell_clip=0.5, bidirectional=True),
    dict(peephole="full", candidate_peephole=True),  # the article's cell
    dict(peephole="full", cell_clip=0.5, bidirectional=True),
]


@pytest.mark.parametrize("kw", PERSISTENT, ids=[str(k) for k in PERSISTENT])
def test_one_launch_kernel_float32_against_float64(triton_backend, kw, count_launches):
    """Small H in float32 runs the whole time loop in one launch (_persist_fwd): outputs,
    states and every gradient (its saved gates feed the per-step backward) against the
    float64 reference loop; counted, so a silent fallback to the per-step kernel fails."""
    from peephole_lstm.ops.kernels import triton as tr

    launches = count_launches(tr, "_persist_fwd")
    m = PeepholeLSTM(3, 20, 2, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
    m64 = PeepholeLSTM(3, 20, 2, dtype=torch.float64, **kw)
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    D = 2 if kw.get("bidirectional") else 1
    x = 1.5 * torch.randn(9, 17, 3)  # 17 rows: two programs, the second one mostly padding
    h0, c0 = torch.randn(2 * D, 17, 20), torch.randn(2 * D, 17, 20)
    inputs = [t.clone().requires_grad_() for t in (x, h0, c0)]
    out, (h, c) = m(inputs[0], (inputs[1], inputs[2]))
    assert len(launches) == 2 * D
    loss = out.square().sum() + h.sum() + (c * torch.linspace(-1, 1, 20)).sum()
    grads = torch.autograd.grad(loss, [*inputs, *m.parameters()])
    peephole_lstm.set_backend("reference")
    inputs64 = [t.double().requires_grad_() for t in (x, h0, c0)]
    out_r, (h_r, c_r) = m64(inputs64[0], (inputs64[1], inputs64[2]))
    for got, want in ((out, out_r), (h, h_r), (c, c_r)):
        torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=2e-6)
    loss = out_r.square().sum() + h_r.sum() + (c_r * torch.linspace(-1, 1, 20, dtype=torch.float64)).sum()
    want = torch.autograd.grad(loss, [*inputs64, *m64.parameters()])
    names = ["x", "h0", "c0", *(n for n, _ in m.named_parameters())]
    for name, g, w in zip(names, grads, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4, msg=name)


def test_one_launch_kernel_can_be_turned_off(triton_backend, monkeypatch, knobs):
    from peephole_lstm.ops.kernels import triton as tr

    knobs(triton_persistent="0")
    monkeypatch.setattr(tr, "_persist_fwd", None)  # would raise if launched
    m = PeepholeLSTM(3, 5)
    x = torch.randn(4, 2, 3)
    with torch.no_grad():
        got = m(x)[0]
        peephole_lstm.set_backend("reference")
        torch.testing.assert_close(got, m(x)[0], rtol=1e-5, atol=1e-6)


def test_release_buffers_drops_the_cuda_graphs():
    from peephole_lstm.ops.kernels import triton as tr

    tr._GRAPHS["key"] = ("graph", (), ())
    tr._SEEN["key"] = 1
    peephole_lstm.release_buffers()
    assert not tr._GRAPHS and not tr._SEEN


@pytest.mark.parametrize("kw", [dict(), dict(peephole="full", candidate_peephole=True, proj_size=2, packed=True)])
def test_graph_cache_logic_with_a_recomputing_stand_in_for_cuda_graphs(triton_backend, monkeypatch, kw):
    """The CUDA-graph glue (kernels/triton.py ``_graphed``) on CPU: capture stands in as a
    closure that re-runs the loop on the graph's input buffers into its output buffers, as a
    replay does. Fresh inputs every call and in-place weight updates (an optimizer step) must
    reach the replay (a cache keyed on the weights' addresses, or inputs not copied, fails),
    and outputs must not alias the graph's buffers (a later call would overwrite them)."""
    from torch.nn.utils.rnn import pack_sequence

    from peephole_lstm.ops.kernels import triton as tr

    def capture(fn, static_args, args, device):
        outs = fn(*static_args, *args)

        def replay():
            for o, v in zip(outs, fn(*static_args, *args)):
                o.copy_(v)

        return replay, outs

    monkeypatch.setattr(tr, "_use_graphs", lambda x: True)
    monkeypatch.setattr(tr, "_capture", capture)
    tr._GRAPHS.clear()
    tr._SEEN.clear()
    kw = dict(kw)
    packed = kw.pop("packed", False)
    m = _model(kw)

    def run(xs):
        x = pack_sequence(xs, enforce_sorted=False) if packed else xs[0]
        out, (h, c) = m(x)
        out = out.data if packed else out
        return [out, h, c, *torch.autograd.grad(out.square().sum() + h.sum() + c.sum(), [*xs, *m.parameters()])]

    kept = []
    for k in range(4):
        if k == 3:
            with torch.no_grad():
                for p in m.parameters():
                    p.add_(0.1 * torch.randn_like(p))
        lengths = (3, 5, 1, 4) if packed else (6,)
        xs = [torch.randn(n, *(() if packed else (3,)), 3, dtype=torch.float64).requires_grad_() for n in lengths]
        peephole_lstm.set_backend("triton")
        got = run(xs)
        if k >= 1:
            assert {key[0] for key in tr._GRAPHS} == {"_forward_eager", "_backward_eager"}
        peephole_lstm.set_backend("reference")
        want = run(xs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
        kept.append((got[0], want[0]))
    for g, w in kept:  # earlier results were not overwritten by later replays
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    tr._GRAPHS.clear()
    tr._SEEN.clear()


def test_one_launch_kernel_on_equal_length_packed_input(triton_backend, count_launches):
    """Packed sequences of one length are equal-length steps: the one-launch kernel runs them
    (flat (N, H) rows), outputs and states as the reference's."""
    from peephole_lstm.ops.kernels import triton as tr

    launches = count_launches(tr, "_persist_fwd")
    m = PeepholeLSTM(3, 6, 2, bidirectional=True)
    seqs = [torch.randn(5, 3) for _ in range(4)]
    with torch.no_grad():
        out, (h, c) = m(pack_sequence(seqs))
        peephole_lstm.set_backend("reference")
        out_r, (h_r, c_r) = m(pack_sequence(seqs))
    assert len(launches) == 4
    for got, want in ((out.data, out_r.data), (h, h_r), (c, c_r)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
