"""cell_clip (TensorFlow's LSTMCell(cell_clip=...)): c_t clipped to [-clip, clip] before the output
gate and h_t see it. Every backend against the float64 numpy reference, gradients against the
reference autograd loop and gradcheck of the op, packed input, the cell, TorchScript, the TF
import, and ONNX export."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_sequence

import peephole_lstm
from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell
from peephole_lstm.ops import recurrence as _fused

from . import reference as ref
from .helpers import MODES, randomized

MODES = [(p, c) for p, c in MODES if c == (p == "full")]  # one per peephole kind
CLIP = 0.4  # small: with the inputs below most cells hit it, some do not


def _model(peephole, candidate, bidirectional=True, proj_size=0, clip=CLIP):
    return randomized(PeepholeLSTM(3, 5, 2, bidirectional=bidirectional, proj_size=proj_size, dtype=torch.float64,
                                   peephole=peephole, candidate_peephole=candidate, cell_clip=clip), 0.8)


@pytest.mark.parametrize("peephole,candidate", MODES)
@pytest.mark.parametrize("proj_size", [0, 2])
def test_matches_numpy_reference(backend, peephole, candidate, proj_size):
    m = _model(peephole, candidate, proj_size=proj_size)
    x = 2 * torch.randn(9, 3, 3, dtype=torch.float64)
    h0 = torch.randn(4, 3, proj_size or 5, dtype=torch.float64)
    c0 = torch.randn(4, 3, 5, dtype=torch.float64)
    out, (h, c) = m(x, (h0, c0))
    r_out, r_h, r_c = ref.lstm(x.numpy(), h0.numpy(), c0.numpy(), ref.numpy_params(m), 2, True, clip=CLIP)
    for got, want in ((out, r_out), (h, r_h), (c, r_c)):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10, atol=1e-12)
    assert np.abs(r_c).max() == pytest.approx(CLIP)  # the clip was active
    # without the clip, the same weights give something else
    unclipped = ref.lstm(x.numpy(), h0.numpy(), c0.numpy(), ref.numpy_params(m), 2, True)[0]
    assert np.abs(unclipped - r_out).max() > 1e-3


@pytest.mark.parametrize("peephole,candidate", MODES)
def test_gradients_match_the_reference_loop(backend, peephole, candidate):
    if backend == "reference":
        pytest.skip("compares the fused op with the reference loop")
    m = _model(peephole, candidate, proj_size=2)
    x = (2 * torch.randn(8, 3, 3, dtype=torch.float64)).requires_grad_()
    out, (h, c) = m(x)
    loss = out.square().sum() + h.sum() + (c * torch.linspace(-1, 1, 5, dtype=torch.float64)).sum()
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    peephole_lstm.set_backend("reference")
    out, (h, c) = m(x)
    loss = out.square().sum() + h.sum() + (c * torch.linspace(-1, 1, 5, dtype=torch.float64)).sum()
    want = torch.autograd.grad(loss, [x, *m.parameters()])
    for (name, _), g, w in zip([("x", None), *m.named_parameters()], grads, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("peephole,candidate", MODES)
def test_packed_matches_numpy_reference_per_sequence(backend, peephole, candidate):
    m = _model(peephole, candidate)
    seqs = [2 * torch.randn(n, 3, dtype=torch.float64) for n in (3, 7, 1, 5)]
    out, (h, c) = m(pack_sequence(seqs, enforce_sorted=False))
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
    params = ref.numpy_params(m)
    for b, x in enumerate(seqs):
        z = np.zeros((4, 1, 5))
        r_out, r_h, r_c = ref.lstm(x.numpy()[:, None], z, z, params, 2, True, clip=CLIP)
        np.testing.assert_allclose(padded[: len(x), b].detach().numpy(), r_out[:, 0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(c[:, b].detach().numpy(), r_c[:, 0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("full", [False, True])
def test_op_gradcheck(backend, full):
    """float64 gradcheck of the op's hand-written backward with the clip active on some cells."""
    if backend == "reference":
        pytest.skip("the op itself")
    torch.manual_seed(1)
    T, B, H = 4, 2, 3
    xw = (1.5 * torch.randn(T, B, 4 * H, dtype=torch.float64)).requires_grad_()
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    c0 = (0.1 * torch.randn(B, H, dtype=torch.float64)).requires_grad_()
    w_hh = torch.randn(4 * H, H, dtype=torch.float64, requires_grad=True)
    shape = (H, H) if full else (H,)
    peeps = [(0.5 * torch.randn(*shape, dtype=torch.float64)).requires_grad_() for _ in range(3)]

    def f(xw, h0, c0, w_hh, w_ci, w_cf, w_co):
        out, h, c, _, _ = _fused.recurrence(xw, h0, c0, w_hh, None, None, w_ci, w_cf, w_co, False, True, None, None,
                                            0.5)
        return out, h, c

    c_all = _fused.recurrence(xw, h0, c0, w_hh, None, None, *peeps, False, True, None, None, 0.5)[4]
    at_bound = (c_all.abs() == 0.5).float().mean().item()
    assert 0.1 < at_bound < 0.9, at_bound  # some cells clipped, some not
    assert gradcheck(f, (xw, h0, c0, w_hh, *peeps), eps=1e-6, atol=1e-7)


def test_cell_matches_reference_and_layer():
    cell = PeepholeLSTMCell(3, 5, dtype=torch.float64, cell_clip=CLIP)
    x = 2 * torch.randn(4, 3, dtype=torch.float64)
    h, c = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    h1, c1 = cell(x, (h, c))
    p = ref.numpy_params(cell)
    r_h, r_c = ref.cell_step(x.numpy(), h.numpy(), c.numpy(), p, clip=CLIP)
    np.testing.assert_allclose(h1.detach().numpy(), r_h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c1.detach().numpy(), r_c, rtol=1e-12, atol=1e-12)
    assert "cell_clip=0.4" in repr(cell)


@pytest.mark.torchscript
def test_torchscript_keeps_the_clip():
    m = _model("diagonal", False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = torch.jit.script(m)
    x = 2 * torch.randn(6, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(s(x)[0], m(x)[0], rtol=1e-10, atol=1e-12)
    assert s(x)[1][1].abs().max().item() <= CLIP


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1.0, ValueError), (float("inf"), ValueError),
                                     (float("nan"), ValueError), ("3", TypeError), (True, TypeError)])
def test_bad_cell_clip_is_refused(bad, exc):
    with pytest.raises(exc, match="cell_clip"):
        PeepholeLSTM(3, 5, cell_clip=bad)
    with pytest.raises(exc, match="cell_clip"):
        PeepholeLSTMCell(3, 5, cell_clip=bad)


def test_old_pickles_without_cell_clip_still_load():
    m = PeepholeLSTM(3, 5)
    state = m.__getstate__() if hasattr(m, "__getstate__") else m.__dict__
    state = dict(state)
    del state["cell_clip"]
    m2 = PeepholeLSTM.__new__(PeepholeLSTM)
    m2.__setstate__(state)
    assert m2.cell_clip is None
    x = torch.randn(4, 2, 3)
    torch.testing.assert_close(m2(x)[0], m(x)[0])


def test_export_onnx_refuses_and_whole_model_export_loops():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from peephole_lstm import export_onnx

    m = PeepholeLSTM(3, 5, cell_clip=CLIP).eval()
    with pytest.raises(ValueError, match="cell_clip"):
        export_onnx(m, io.BytesIO())
    f = io.BytesIO()
    x = 3 * torch.randn(6, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "T", 1: "B"}})
    import onnx

    ops = [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node]
    assert "Loop" in ops and "LSTM" not in ops
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    for T in (6, 11):
        x = 3 * torch.randn(T, 2, 3)
        got = sess.run(None, {"x": x.numpy()})
        with torch.no_grad():
            want = m(x)
        for g, w in zip(got, [want[0], *want[1]]):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


def _runaway(clip=None):
    """One unit whose gates a growing cell holds open: i, f -> 1 and g = 1, so c grows by ~1 per step."""
    m = PeepholeLSTM(1, 1, cell_clip=clip)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.bias_ih_l0.copy_(torch.tensor([3.0, 6.0, 3.0, 0.0]))  # i, f, g, o
        m.weight_ci_l0.fill_(0.5)
        m.weight_cf_l0.fill_(0.5)
    return m


def test_a_runaway_cell_state_warns_once_and_the_clip_bounds_it():
    m = _runaway()
    x = torch.zeros(600, 1, 1)
    state = None
    with pytest.warns(RuntimeWarning, match="cell_clip=10"):
        for _ in range(3):  # state carried across batches, as in a stateful LM
            _, state = m(x, state)
    assert state[1].abs().item() > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x, state)  # once only
        clipped = _runaway(10.0)
        state = None
        for _ in range(3):
            _, state = clipped(x, state)
        assert state[1].abs().item() == pytest.approx(10.0)
        PeepholeLSTM(1, 1, peephole="none")(x)  # no peepholes: never
