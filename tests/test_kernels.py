"""The fused op's kernels directly: float32 accuracy over the whole activation range, the
inference (save=False) path, input checks of the public C++ op, the env variable."""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import peephole_lstm
from peephole_lstm import tuning
from peephole_lstm.ops import backend as _backend
from peephole_lstm.ops import build as _build
from peephole_lstm.ops import projection as _projection
from peephole_lstm.ops import recurrence as _fused


def _args(T, B, H, dtype, scale):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(T, B, 4 * H, generator=g, dtype=dtype) * scale,  # pre-activations up to ~±5·scale
        torch.randn(B, H, generator=g, dtype=dtype),
        torch.randn(B, H, generator=g, dtype=dtype),
        torch.randn(4 * H, H, generator=g, dtype=dtype) * 0.3,
        torch.randn(4 * H, generator=g, dtype=dtype),
        None,
        torch.randn(H, generator=g, dtype=dtype),
        torch.randn(H, generator=g, dtype=dtype),
        torch.randn(H, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("scale", [1e-3, 0.3, 3.0, 30.0])
@pytest.mark.parametrize("H", [5, 16, 37])  # vector tails and full vectors
def test_float32_kernel_is_accurate_everywhere(backend, scale, H):
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    a32 = _args(9, 3, H, torch.float32, scale)
    a64 = tuple(None if a is None else a.double() for a in a32)
    with torch.no_grad():
        o32 = _fused.recurrence(*a32, False)
        o64 = _fused.recurrence(*a64, False)
    for got, want in zip(o32[:3], o64[:3]):
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("H", [5, 16])
def test_float32_kernel_propagates_nan_and_saturates_at_inf(backend, H):
    """Gate pre-activations of ±inf saturate (σ → 0 or 1, tanh → ±1) and a NaN stays in its
    batch row, as in float64 (the float32 kernel has its own exp)."""
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    a32 = list(_args(4, 3, H, torch.float32, 1.0))
    a32[0][1, 0, :] = torch.tensor([float("inf"), -float("inf")]).repeat(2 * H)  # row 0: ±inf
    a32[0][2, 1, 3] = float("nan")  # row 1 from step 2 on
    a64 = tuple(None if a is None else a.double() for a in a32)
    with torch.no_grad():
        o32 = _fused.recurrence(*a32, False)
        o64 = _fused.recurrence(*a64, False)
    assert o32[0][:2, 1].isfinite().all() and o32[0][2:, 1].isnan().any() and o32[0][:, [0, 2]].isfinite().all()
    for got, want in zip(o32[:3], o64[:3]):
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6, equal_nan=True)


def test_inference_path_equals_training_path(backend):
    if backend == "reference":
        pytest.skip("the reference backend does not use the fused op")
    a = _args(7, 4, 6, torch.float32, 1.0)
    for reverse in (False, True):
        full = _fused.recurrence(*a, reverse, True)
        lean = _fused.recurrence(*a, reverse, False)
        assert lean[3].numel() == 0 and lean[4].numel() == 0
        for x, y in zip(full[:3], lean[:3]):
            # the same arithmetic into other buffers: equal up to BLAS blocking differences
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_module_saves_activations_only_when_a_backward_can_follow(backend):
    m = peephole_lstm.PeepholeLSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with torch.inference_mode():
        a = m(x)[0]
    b = m(x)[0]
    torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    b.sum().backward()
    assert m.weight_co_l0.grad is not None


def test_cpp_op_checks_shapes():
    peephole_lstm.set_backend("cpp")
    try:
        peephole_lstm.build_extension()
        with pytest.raises(RuntimeError, match=r"h0 must be \(2, 2\)"):
            torch.ops.peephole_lstm_cpp.forward(torch.zeros(3, 2, 8), torch.zeros(2, 1), torch.zeros(2, 2),
                                                torch.zeros(8, 1), None, None, None, None, None, None, None,
                                                False, True)
        z = (torch.zeros(3, 2, 8), torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(8, 2), None, None)
        with pytest.raises(RuntimeError, match=r"peepholes must be \(2,\) or \(2, 2\)"):
            torch.ops.peephole_lstm_cpp.forward(*z, torch.zeros(3), None, None, None, None, False, True)
        with pytest.raises(RuntimeError, match="must all be vectors"):
            torch.ops.peephole_lstm_cpp.forward(*z, torch.zeros(2), torch.zeros(2, 2), None, None, None, False, True)
        packed = (torch.zeros(5, 8), *z[1:])
        with pytest.raises(RuntimeError, match="batch_sizes sum to 4"):
            torch.ops.peephole_lstm_cpp.forward(*packed, None, None, None, None, torch.tensor([2, 2]), False, True)
        with pytest.raises(RuntimeError, match="non-increasing"):
            torch.ops.peephole_lstm_cpp.forward(*packed, None, None, None, None, torch.tensor([2, 1, 2]), False, True)
    finally:
        peephole_lstm.set_backend("auto")


def test_cpp_kernel_reports_its_measured_gemm_choices():
    peephole_lstm.set_backend("cpp")
    try:
        peephole_lstm.build_extension()
        peephole_lstm.PeepholeLSTM(3, 6)(torch.randn(4, 5, 3))  # one layer call: 5x6x24 (h W_hh^T)
        info = torch.ops.peephole_lstm_cpp.blas_info()
    finally:
        peephole_lstm.set_backend("auto")
    assert info.startswith("candidates: blas")
    if torch.backends.mkl.is_available():
        assert "mkl-packed" in info
    if torch.backends.mkldnn.is_available():
        assert "onednn" in info
    # the forward's recurrent GEMM, with the path measured for it (for one thread if the call
    # fell in a one-thread window, after two stalled calls of earlier tests)
    assert re.search(r" 5x6x24(\(1 thread\))?=", info), info


_REGION_CHOICE_CHECK = """
import re, torch, peephole_lstm
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
m = peephole_lstm.PeepholeLSTM(3, 16, peephole="full", candidate_peephole=True)
m64 = peephole_lstm.PeepholeLSTM(3, 16, peephole="full", candidate_peephole=True).double()
m64.load_state_dict(m.state_dict())
x = torch.randn(6, 12, 3)
out, _ = m(x)
out.square().sum().backward()
info = torch.ops.peephole_lstm_cpp.blas_info()
peephole_lstm.set_backend("reference")  # float64, equation by equation
out64, _ = m64(x.double())
out64.square().sum().backward()
torch.testing.assert_close(out.double(), out64, rtol=1e-5, atol=1e-6)
for p, q in zip(m.parameters(), m64.parameters()):
    torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-5)
fwd = re.search(r" 12x64x16/rows=(region|loop);", info).group(1)  # h W_hh^T (B x 4H x H)
bwd = re.search(r" 12x16x64/rows=(region|loop);", info).group(1)  # dG W_hh (B x H x 4H)
calls = re.search(r"one parallel region on vec \\(forward, backward\\): (\\d+), (\\d+);", info).groups()
print(fwd, bwd, *calls)
"""


def test_small_steps_measure_one_region_against_the_per_step_loop():
    """Small steps may run the whole loop in one parallel region on the own GEMM; whether that
    beats the per-step loop on the GEMM path measured per call is itself measured, per shape,
    forward and backward. The decision is reported, the layer calls follow it, and either way
    the article cell's outputs and gradients match the float64 reference loop."""
    fwd, bwd, n_fwd, n_bwd = _in_process(_REGION_CHOICE_CHECK, omp_threads=2, threads="parallel").split()
    assert n_fwd == ("1" if fwd == "region" else "0")
    assert n_bwd == ("1" if bwd == "region" else "0")


_FIRST_CALLS = """
import re, torch, peephole_lstm
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
m = peephole_lstm.PeepholeLSTM(3, 16)
x = torch.randn(4, 12, 3)
for _ in range(2):  # the first call of the shape measures its paths (milliseconds), the second does not
    out, _ = m(x)
    out.square().sum().backward()
info = torch.ops.peephole_lstm_cpp.blas_info()
"""


def _cpp_ops():
    if not peephole_lstm.build_extension():
        pytest.skip("no C++ kernel here")
    return torch.ops.peephole_lstm_cpp


def _in_process(code: str, omp_threads: int | None = None, **knob_values) -> str:
    """Run a check script in this process with tuning knobs set and every per-shape
    measurement of the C++ kernel forgotten first (as in a new process), ``omp_threads``
    OpenMP threads if given; returns what it printed. The backend, the thread count, the knobs and
    the projection rule are restored after."""
    ops = _cpp_ops()
    old_backend, old_threads, old_rule = peephole_lstm.get_backend(), torch.get_num_threads(), _projection.projects_in_kernel
    out = io.StringIO()
    try:
        with tuning.override(**knob_values), contextlib.redirect_stdout(out):
            ops.reset_measurements()
            ops.reset_stall_policy()
            if omp_threads is not None:
                torch.set_num_threads(omp_threads)
            exec(compile(code, "<check>", "exec"), {})
    finally:
        torch.set_num_threads(old_threads)
        peephole_lstm.set_backend(old_backend)
        _projection.projects_in_kernel = old_rule
        ops.reset_measurements()
        ops.reset_stall_policy()
    return out.getvalue()


def test_measuring_a_new_shape_is_left_out_of_the_loop_time():
    """The first call of a shape also measures its GEMM paths and loop structure (milliseconds
    for 4 steps here, the loop's own under 0.1 ms): that time is recorded apart and left out of
    the time the stall policy judges; the second call of the shape measures nothing. Checked on
    what the kernel recorded, not on whether a real clock saw a stall (machine load)."""
    ops = _cpp_ops()
    if torch.get_num_threads() < 2:
        pytest.skip("the stall policy watches parallel calls only")
    torch.manual_seed(0)
    m = peephole_lstm.PeepholeLSTM(3, 13)  # a hidden size no other test uses: a new shape
    x = torch.randn(4, 11, 3)
    with tuning.override(backend="cpp", threads="auto"):
        ops.reset_stall_policy()
        m(x)
        elapsed, measuring, steps = ops.last_loop_timing()
        assert steps == 4 and measuring > 0 and elapsed >= measuring
        m(x)
        elapsed, measuring, steps = ops.last_loop_timing()
        assert steps == 4 and measuring == 0 and elapsed > 0
    ops.reset_stall_policy()


def test_stall_policy_opens_a_one_thread_window_after_two_stalled_calls():
    """The policy on loop times fed to it (seconds, steps): over 0.2 ms a step is a stall; one
    stall alone is a hiccup; two in a row open a 256-call one-thread window, which doubles while
    stalls persist (at most 16384); a call that is not stalled ends the streak."""
    ops = _cpp_ops()
    ops.reset_stall_policy()
    try:
        assert ops.record_loop(4 * 1e-3, 4)  # 1 ms a step: stalled
        assert ops.stall_state() == [1, 1, 0, 0]  # stalls, in a row, window, calls left
        assert not ops.record_loop(4 * 1e-5, 4)  # 10 us a step: not stalled, the streak ends
        assert ops.stall_state() == [1, 0, 0, 0]
        assert ops.record_loop(0.01, 4) and ops.record_loop(0.01, 4)
        assert ops.stall_state() == [3, 2, 256, 256]
        assert ops.record_loop(0.01, 4)
        assert ops.stall_state()[2:] == [512, 512]
        for _ in range(10):
            ops.record_loop(0.01, 4)
        assert ops.stall_state()[2] == 16384
        assert not ops.record_loop(4 * 2e-4 * 0.99, 4)  # just under the bound
        assert ops.stall_state()[1:3] == [0, 0]
    finally:
        ops.reset_stall_policy()


def test_a_one_thread_window_measures_its_gemm_paths_apart():
    """Calls in a one-thread window (here forced) measure their GEMM paths for one thread and
    keep that choice apart from the parallel calls': a choice measured on one thread must not
    stand for the parallel calls of the same shape after the window, nor the reverse."""
    code = _FIRST_CALLS + "print(info)"
    serial = _in_process(code, omp_threads=2, threads="serial")
    parallel = _in_process(code, omp_threads=2, threads="parallel")
    assert " 12x64x16(1 thread)=" in serial, serial  # h W_hh^T, B x 4H x H
    assert "(1 thread)" not in parallel and " 12x64x16=" in parallel, parallel


_GEMM_CHECK = """
import torch, peephole_lstm
from torch.nn.utils.rnn import pack_sequence
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
out = {}
for mode, cand in (("diagonal", False), ("full", True)):
    m = peephole_lstm.PeepholeLSTM(3, 6, 2, bidirectional=True, proj_size=4, peephole=mode, candidate_peephole=cand)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    m64 = peephole_lstm.PeepholeLSTM(3, 6, 2, bidirectional=True, proj_size=4, peephole=mode,
                                     candidate_peephole=cand).double()
    m64.load_state_dict(m.state_dict())
    seqs = [torch.randn(n, 3) for n in (5, 7, 2)]
    for model, xs, backend in ((m, seqs, "cpp"), (m64, [s.double() for s in seqs], "reference")):
        peephole_lstm.set_backend(backend)  # float64 through the reference loop: an independent check
        o = model(pack_sequence(xs, enforce_sorted=False))[0].data
        o.square().sum().backward()
    peephole_lstm.set_backend("cpp")
    torch.testing.assert_close(o.float(), m(pack_sequence(seqs, enforce_sorted=False))[0].data, rtol=1e-5, atol=1e-6)
    for (n, p), q in zip(m.named_parameters(), m64.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-5, msg=n)
print(torch.ops.peephole_lstm_cpp.blas_info())
"""


@pytest.mark.parametrize("path", ["blas", "packed", "onednn", "vec"])
def test_every_gemm_path_is_exact(path):
    """PEEPHOLE_LSTM_GEMM forces one GEMM path; each gives float32 results within rounding of
    the float64 reference loop (outputs and every gradient), packed, bidirectional, projected,
    diagonal and full peepholes (on the own GEMM, in one pass with h W_hh^T)."""
    if path == "packed" and not torch.backends.mkl.is_available():
        pytest.skip("no MKL in this torch")
    if path == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch")
    out = _in_process(_GEMM_CHECK, gemm=path)
    name = {"packed": "mkl-packed"}.get(path, path)
    assert f"forced: {name}" in out
    # our own GEMM runs h W_hh^T and the full peepholes on c_{t-1} as one pass; the others two
    merged = int(out.split("in one GEMM: ")[1].split(";")[0])
    assert (merged > 0) == (path == "vec"), out


_WEIGHT_GRAD_CHECK = """
import torch, peephole_lstm
from torch.nn.utils.rnn import pack_sequence
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
# sizes where the weight gradients A^T B over all steps leave ATen's mm (m n k >= 2^18): 13 and
# 24 columns (one whole 16-wide piece and a tail), 13 rows (row blocks of 6, 6, 1); tails of at
# most 4 columns go by vectors along the rows: W_hh's 2 (H = 50: S1's layer), 1 (H = 33) and 4
# (projected to 20), the full peepholes' and W_hr's 3 (H = 35)
for I, H, T, mode, cand, proj in ((5, 24, 30, "diagonal", False, 13), (5, 24, 30, "full", True, 13),
                                  (5, 24, 30, "full", True, 0), (1, 50, 60, "diagonal", False, 0),
                                  (2, 33, 30, "none", False, 0), (3, 35, 40, "full", True, 20)):
    kw = dict(proj_size=proj, peephole=mode, candidate_peephole=cand)
    m = peephole_lstm.PeepholeLSTM(I, H, **kw)
    m64 = peephole_lstm.PeepholeLSTM(I, H, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.3, 0.3)
    m64.load_state_dict(m.state_dict())
    for packed in (False, True):
        for call in range(3):  # auto: the first call per shape runs ATen's mm, the second our own
            x = torch.randn(T, 32, I)
            lengths = torch.randint(10, T + 1, (32,)).tolist()
            grads = []
            for model, xx, backend in ((m, x, "cpp"), (m64, x.double(), "reference")):
                peephole_lstm.set_backend(backend)  # float64 through the reference loop
                model.zero_grad()
                inp = pack_sequence([xx[:n, b] for b, n in enumerate(lengths)], enforce_sorted=False) if packed else xx
                o = model(inp)[0]
                o = o.data if packed else o
                (o * torch.linspace(-1, 1, o.size(-1), dtype=o.dtype)).sum().backward()
                grads.append({n: p.grad for n, p in model.named_parameters()})
            for n, g in grads[0].items():
                ref = grads[1][n]
                torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item(), msg=n)
# float64 through the C++ kernel (its own A^T B in double) against the reference loop
x = torch.randn(40, 32, 3, dtype=torch.float64)
res = {}
for backend in ("cpp", "cpp", "cpp", "reference"):  # the third C++ call: as measured per shape
    peephole_lstm.set_backend(backend)
    m64.zero_grad()
    (m64(x)[0] * torch.linspace(-1, 1, m64.proj_size or m64.hidden_size, dtype=torch.float64)).sum().backward()
    res[backend] = {n: p.grad.clone() for n, p in m64.named_parameters()}
for n, g in res["cpp"].items():
    torch.testing.assert_close(g, res["reference"][n], rtol=1e-10, atol=1e-12, msg=n)
print(torch.ops.peephole_lstm_cpp.blas_info())
"""


@pytest.mark.parametrize("path", ["auto", "vec"])
def test_weight_gradient_gemm_is_exact(path):
    """The weight gradients over all steps (dW_hh, dW_hr, full peepholes) at sizes that take
    the kernel's own A^T B GEMM (forced, and as measured per shape): float32 within rounding of
    float64, unpacked and packed, with column and row tails."""
    out = _in_process(_WEIGHT_GRAD_CHECK, gemm=path)
    assert "weight grads A^T B" in out
    line = out.split("weight grads A^T B")[1]
    assert "96x13x2^" in line and "24x24x2^" in line  # dW_hh (4H x P), a full peephole (H x H)
    if path == "auto":
        assert "measuring" not in line  # both candidates timed after three calls


_ONE_REGION_CHECK = """
import torch, peephole_lstm
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
# small steps, the own GEMM (forced): by rows H = 32 and 50 take the one-region loop; by
# columns H = 32 (whole vector-width blocks), H = 50 the ordinary loop
CONFIGS = (dict(), dict(bidirectional=True, cell_clip=0.5), dict(peephole="none"), dict(num_layers=2, bias=False),
           dict(peephole="full", candidate_peephole=True), dict(peephole="full", bidirectional=True),
           dict(candidate_peephole=True, cell_clip=0.5))
for H, kw in [(H, kw) for H in (32, 50) for kw in CONFIGS]:
    m = peephole_lstm.PeepholeLSTM(5, H, **kw)
    m64 = peephole_lstm.PeepholeLSTM(5, H, **kw).double()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.4, 0.4)
    m64.load_state_dict(m.state_dict())
    x = torch.randn(30, 12, 5)
    h0 = torch.randn(m.num_layers * (2 if m.bidirectional else 1), 12, H)
    outs = []
    for model, xx, hh, backend in ((m, x, h0, "cpp"), (m64, x.double(), h0.double(), "reference")):
        peephole_lstm.set_backend(backend)  # float64 through the reference loop: an independent check
        o, (h, c) = model(xx, (hh, hh.neg()))
        (o.square().sum() + h.sum() + c.square().sum()).backward()
        outs.append((o, h, c, [p.grad for p in model.parameters()]))
    for a, b in zip(outs[0][:3], outs[1][:3]):  # full 32x32 peephole matrices: cells up to ~10
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    for a, b in zip(outs[0][3], outs[1][3]):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    peephole_lstm.set_backend("cpp")
    with torch.inference_mode():
        torch.testing.assert_close(m(x, (h0, h0.neg()))[0].double(), outs[1][0], rtol=1e-4, atol=1e-5)
    # a packed batch of the same 12 sequences, lengths 1..30 unsorted: step t has batch_sizes[t] rows
    from torch.nn.utils.rnn import pack_padded_sequence
    lengths = torch.randperm(30)[:12] + 1
    outs = []
    for model, xx, hh, backend in ((m, x, h0, "cpp"), (m64, x.double(), h0.double(), "reference")):
        peephole_lstm.set_backend(backend)
        model.zero_grad()
        o, (h, c) = model(pack_padded_sequence(xx, lengths, enforce_sorted=False), (hh, hh.neg()))
        (o.data.square().sum() + h.sum() + c.square().sum()).backward()
        outs.append((o.data, h, c, [p.grad for p in model.parameters()]))
    for a, b in zip(outs[0][:3] + tuple(outs[0][3]), outs[1][:3] + tuple(outs[1][3])):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
print("ok")
"""


_FORWARD_X_CHECK = """
import torch, peephole_lstm
import peephole_lstm.ops.backend as B
import peephole_lstm.ops.projection as P
from torch.nn.utils.rnn import pack_sequence
peephole_lstm.set_backend("cpp")
torch.manual_seed(0)
calls = []
P.projects_in_kernel = lambda x, w, h0: calls.append(x.dtype) or B.use_cpp(x)  # every inference call, any size
CONFIGS = (dict(), dict(peephole="full", candidate_peephole=True), dict(peephole="full", bidirectional=True),
           dict(proj_size=5, num_layers=2), dict(peephole="none", bias=False, cell_clip=0.3),
           dict(candidate_peephole=True, bidirectional=True, num_layers=2))
for kw in CONFIGS:
    m = peephole_lstm.PeepholeLSTM(7, 24, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    m64 = peephole_lstm.PeepholeLSTM(7, 24, **kw).double()
    m64.load_state_dict(m.state_dict())
    x = torch.randn(9, 6, 7)
    seqs = [torch.randn(n, 7) for n in (9, 4, 7, 1, 9, 2)]
    for inp, inp64 in ((x, x.double()), (pack_sequence(seqs, enforce_sorted=False),
                                         pack_sequence([s.double() for s in seqs], enforce_sorted=False))):
        peephole_lstm.set_backend("reference")  # the float64 equation-by-equation loop
        with torch.inference_mode():
            o_ref, (h_ref, c_ref) = m64(inp64)
        peephole_lstm.set_backend("cpp")
        for model, x_in, tol in ((m, inp, 1e-5), (m64, inp64, 1e-12)):
            n = len(calls)
            with torch.inference_mode():
                o, (h, c) = model(x_in)
            assert len(calls) > n, "forward_x was not taken"
            o, o_r = (o, o_ref) if torch.is_tensor(o) else (o.data, o_ref.data)  # PackedSequence: its rows
            for a, b in ((o, o_r), (h, h_ref), (c, c_ref)):
                torch.testing.assert_close(a.double(), b, rtol=tol * 10, atol=tol * max(1.0, b.abs().max().item()))
print("ok", len(calls))
"""


@pytest.mark.parametrize("serial_flops", ["0", ""])
def test_kernel_input_projection_is_exact(serial_flops):
    """Large inference steps hand the C++ kernel x and W_ih (``forward_x``): it writes each
    step's x_t W_ih^T into the step's gate rows, then the step's GEMM adds h_{t-1} W_hh^T.
    Forced on for every inference call (PEEPHOLE_LSTM_SERIAL_FLOPS=0: every step counts as
    large, so the per-step projection runs; unset: these small steps project all rows first):
    outputs and final states, float32 and float64, against the float64 reference loop,
    padded and packed, both directions, two layers, a projection, full peepholes, a clip."""
    out = _in_process(_FORWARD_X_CHECK, threads="parallel", **({"serial_flops": serial_flops} if serial_flops else {}))
    assert out.startswith("ok")


def test_kernel_input_projection_is_chosen_for_large_inference_only():
    peephole_lstm.set_backend("cpp")
    try:
        if not (peephole_lstm.build_extension() and torch.backends.mkldnn.is_available()):
            pytest.skip("no C++ kernel or no oneDNN")
        w_ih, h0 = torch.randn(2048, 64), torch.zeros(256, 512)
        assert _projection.projects_in_kernel(torch.randn(50, 256, 64), w_ih, h0)  # S4: 105 MB of xw, 1 GFLOP steps
        assert not _projection.projects_in_kernel(torch.randn(5, 256, 64), w_ih, h0)  # 10 MB of xw
        assert not _projection.projects_in_kernel(torch.randn(4000, 2, 64), w_ih, h0[:2])  # 65 MB, small steps
        assert not _projection.projects_in_kernel(torch.randn(50, 256, 64).double(), w_ih.double(), h0.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _projection.projects_in_kernel(torch.randn(50, 256, 64), w_ih, h0)
    finally:
        peephole_lstm.set_backend("auto")


@pytest.mark.parametrize("fused_loop,split,kc", [("1", "rows", ""), ("1", "cols", ""), ("0", "rows", ""),
                                                 ("1", "cols", "16"), ("0", "rows", "16")])
def test_one_region_step_loop_is_exact(fused_loop, split, kc):
    """Small steps run the whole forward loop in one parallel region: split by rows (each
    thread its own 6 of the 12 rows, any H; a packed batch too, each thread the rows a step
    still has) or by columns (threads own hidden units; H = 50 and packed batches then stay on
    the ordinary loop); region on and off, float32 within rounding of the float64 reference
    loop: outputs, final states and gradients, both directions, a cell clip, no peepholes, no
    bias, full peephole matrices with and without the candidate peephole. ``kc``: the own
    GEMM's k block forced to 16 rows (its default holds k up to ~1024 in one block), so the
    partial sums carried through C between blocks, h's rows and c's, are checked too."""
    # THREADS=parallel: a loaded test machine must not switch the kernel to one thread (which
    # takes the ordinary loop); OMP_NUM_THREADS=2: two row blocks on any machine
    out = _in_process(_ONE_REGION_CHECK, omp_threads=2, gemm="vec", fused_loop=fused_loop, threads="parallel",
                      split=split, **({"vec_kc": kc} if kc else {}))
    assert out.strip() == "ok"


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "PEEPHOLE_LSTM_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env)


def test_env_variable_forces_a_backend():
    res = _run("import peephole_lstm; print(peephole_lstm.get_backend())", PEEPHOLE_LSTM_BACKEND="python")
    assert res.stdout.strip() == "python"
    res = _run("import peephole_lstm", PEEPHOLE_LSTM_BACKEND="fastest")
    assert res.returncode != 0 and "PEEPHOLE_LSTM_BACKEND='fastest' is not one of" in res.stderr


def test_no_compiler_warns_once_and_falls_back_to_python():
    code = (
        "import warnings, torch, peephole_lstm\n"
        "m = peephole_lstm.PeepholeLSTM(3, 4)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    m(torch.randn(5, 2, 3)); m(torch.randn(5, 2, 3))\n"
        "msgs = [str(x.message) for x in w if 'C++ kernel unavailable' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert len(msgs[0].splitlines()) == 1\n"
        "print(msgs[0])\n"
    )
    res = _run(code, CXX="/nonexistent/c++", TORCH_EXTENSIONS_DIR="/tmp/peephole-lstm-no-compiler")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no C++ compiler" in res.stdout
    forced = _run(code, CXX="/nonexistent/c++", PEEPHOLE_LSTM_BACKEND="cpp")
    assert forced.returncode != 0 and "PEEPHOLE_LSTM_BACKEND=cpp but the C++ kernel could not be built" in forced.stderr


@pytest.mark.parametrize("onednn", [False, True])
def test_inference_input_projection_either_path_equals_linear(onednn):
    """In CPU float32 inference x W_ih^T may run on oneDNN (where it measures faster): both
    paths give F.linear's result within float32 rounding; with autograd it is F.linear."""
    if onednn and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch")
    x = torch.randn(70, 33, 40)[:, ::2]  # non-contiguous, 70*17*40 elements
    w = torch.randn(64, 40)
    key = _projection._proj_key(70 * 17, 40, 64)
    old = _projection._PROJ_CHOICE.get(key)
    _projection._PROJ_CHOICE[key] = onednn
    try:
        with torch.no_grad():
            got = _projection.input_projection(x, w)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, w), rtol=1e-5, atol=1e-5)
        assert got.shape == (70, 17, 64)
        w.requires_grad_()
        assert _projection.input_projection(x, w).grad_fn is not None
    finally:
        _projection._PROJ_CHOICE.pop(key)
        if old is not None:
            _projection._PROJ_CHOICE[key] = old


_START = """
import sys, time
import torch
import peephole_lstm
t0 = time.perf_counter()
assert peephole_lstm.build_extension()
dt = time.perf_counter() - t0
print("cpp_extension" if "torch.utils.cpp_extension" in sys.modules else "direct", f"{dt:.3f}")
"""


def _start(env=None):
    res = subprocess.run([sys.executable, "-c", _START], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.split()


def test_a_built_kernel_loads_directly_in_a_new_process(tmp_path):
    """Start-up: a library built from the same source, flags and torch is loaded
    with torch.ops.load_library, without importing cpp_extension (~0.25 s) or running its build
    check; a stale stamp (another source) sends it back through the build."""
    import shutil

    if not peephole_lstm.build_extension():
        pytest.skip("no C++ kernel here")
    name = _build._ext_name()
    shutil.copytree(_build._build_dir(name), tmp_path / name)  # built objects: ninja has nothing to do
    stamp = tmp_path / name / _build._STAMP
    stamp.unlink()  # as before this change: no stamp
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    assert _start(env)[0] == "cpp_extension"
    assert _start(env)[0] == "direct"
    stamp.write_text("another source")
    assert _start(env)[0] == "cpp_extension"
    assert _start(env)[0] == "direct"


def test_autocast_bfloat16_runs_and_stays_close_to_float32(backend):
    """Under torch.autocast the input projection is bfloat16; the recurrence's op runs in float32
    (registered autocast behaviour), so nothing fails on mixed dtypes and the cell stays float32."""
    m = peephole_lstm.PeepholeLSTM(3, 5, 2, bidirectional=True)
    x = torch.randn(7, 2, 3, requires_grad=True)
    want = m(x)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h, c) = m(x)
    if backend != "reference":
        assert out.dtype == c.dtype == torch.float32
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.02)  # bfloat16 input projection
    out.float().square().sum().backward()
    assert x.grad is not None and torch.isfinite(m.weight_co_l0_reverse.grad).all()


def test_inference_scratch_buffer_is_reused_and_never_leaks(monkeypatch):
    """Large inference input projections go into one reused per-thread buffer: the outputs
    match the same model with autograd on (which never uses it), survive later calls of other
    shapes, and work in and out of inference mode."""
    if not (torch.backends.mkldnn.is_available() and _backend.use_cpp(torch.zeros(1))):
        pytest.skip("the scratch path needs the C++ kernel and oneDNN")
    monkeypatch.setattr(_projection, "_SCRATCH_MIN_BYTES", 0)
    monkeypatch.setattr(_projection, "_BLOCK_BYTES", 4096)  # many oneDNN row blocks
    torch.manual_seed(0)
    m = peephole_lstm.PeepholeLSTM(70, 64, num_layers=2, bidirectional=True)
    xs = [torch.randn(40, 32, 70), torch.randn(25, 64, 70), torch.randn(40, 32, 70)]
    refs = [m(x)[0].detach() for x in xs]  # autograd on: F.linear, no scratch
    _projection.release_scratch()
    outs = []
    for k, x in enumerate(xs):
        ctx = torch.inference_mode() if k % 2 == 0 else torch.no_grad()
        with ctx:
            outs.append(m(x)[0])
    assert _projection._scratch.buf is not None  # the buffer was used
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    _projection.release_scratch()
    assert _projection._scratch.buf is None


@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize("scratch", [False, True])
def test_training_input_projection_through_onednn_is_exact(monkeypatch, x_grad, scratch):
    """Training takes oneDNN for the input projection (forced here) with its own backward:
    the input and every weight gradient within float32 rounding of the float64 model."""
    if not (torch.backends.mkldnn.is_available() and _backend.use_cpp(torch.zeros(1))):
        pytest.skip("needs the C++ kernel and oneDNN")
    calls = []
    monkeypatch.setattr(_projection, "_onednn_wins", lambda x2, w: calls.append(x2.shape) or True)
    _projection.release_scratch()
    if scratch:  # every projection into the one per-thread buffer, layer after layer, both directions,
        monkeypatch.setattr(_projection, "_SCRATCH_MIN_BYTES", 0)
        monkeypatch.setattr(_projection, "_BLOCK_BYTES", 4096)  # in many row blocks
    torch.manual_seed(0)
    m = peephole_lstm.PeepholeLSTM(70, 24, num_layers=2, bidirectional=True, proj_size=13)
    m64 = peephole_lstm.PeepholeLSTM(70, 24, num_layers=2, bidirectional=True, proj_size=13).double()
    m64.load_state_dict(m.state_dict())
    x = torch.randn(40, 64, 70)
    grads = []
    for model, xx in ((m, x.clone()), (m64, x.double())):
        xx.requires_grad_(x_grad)
        out, (h, c) = model(xx)
        (out.square().sum() + h.sum() + c.sum()).backward()
        grads.append([xx.grad] + [p.grad for p in model.parameters()])
    assert len(calls) == 4  # every layer and direction (layer 2: 40*64*26 values)
    assert (getattr(_projection._scratch, "buf", None) is not None) == scratch
    _projection.release_scratch()
    for g, ref in zip(*grads):
        if ref is None:
            assert g is None
            continue
        torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("packed", [False, True])
def test_pooled_training_buffers_are_reused_and_exact(packed):
    """Training buffers of 4 MiB and more (saved gates, gate gradients) come from the C++
    kernel's pool and go back to it: repeated steps, with blocks recycled from another shape
    in between (stale contents), match the float64 reference loop; release_buffers frees the
    pool."""
    if not _backend.use_cpp(torch.zeros(1)):
        pytest.skip("needs the C++ kernel")
    torch.manual_seed(0)
    m = peephole_lstm.PeepholeLSTM(8, 128, peephole="full", candidate_peephole=True, proj_size=0)
    ref = peephole_lstm.PeepholeLSTM(8, 128, peephole="full", candidate_peephole=True).double()
    ref.load_state_dict(m.state_dict())
    lengths = torch.randint(34, 41, (64,)) if packed else None  # packed gates: >= 34*64*512*4 bytes
    peephole_lstm.release_buffers()
    for x in (torch.randn(40, 64, 8), torch.randn(37, 70, 8), torch.randn(40, 64, 8)):
        results = []
        for model, xx, backend in ((m, x.clone(), "cpp"), (ref, x.double(), "reference")):
            peephole_lstm.set_backend(backend)
            try:
                xx.requires_grad_(True)
                inp = xx
                if packed and x.size(1) == 64:
                    inp = torch.nn.utils.rnn.pack_padded_sequence(xx, lengths, enforce_sorted=False)
                out, (h, c) = model(inp)
                out = out.data if packed and x.size(1) == 64 else out
                (out.square().sum() + h.sum() + c.sum()).backward()
            finally:
                peephole_lstm.set_backend("auto")
            results.append([out.detach(), h.detach(), c.detach(), xx.grad] + [p.grad.clone() for p in model.parameters()])
            model.zero_grad()
        for got, want in zip(*results):
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
        assert torch.ops.peephole_lstm_cpp.pool_bytes() >= 4 << 20  # the gate buffers came back
    assert peephole_lstm.release_buffers() > 0 and torch.ops.peephole_lstm_cpp.pool_bytes() == 0
