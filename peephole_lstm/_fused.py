"""The fast path: one custom op for a layer's whole time loop, with a hand-written BPTT.

``torch.ops.peephole_lstm.recurrence`` runs the recurrence of one layer in one direction
(diagonal or no peepholes, optional projection) given the precomputed input projection
``xw = x W_ih^T`` of every step (one GEMM) and ``bias = b_ih + b_hh``. It is registered with ``torch.library`` with
a fake (meta) kernel and an autograd formula (``peephole_lstm::recurrence_backward``), so
``torch.compile`` and ``torch.export`` see one opaque node instead of an unrolled loop.

Two kernels implement both ops:

* ``"cpp"``: ``csrc/recurrence.cpp``, compiled on first use with
  ``torch.utils.cpp_extension`` (15-30 s on 2 cores, cached across processes in
  ``TORCH_EXTENSIONS_DIR``), CPU float32/float64;
* ``"python"``: the same algorithm in vectorised PyTorch; every device.

Backend selection (environment variable ``PEEPHOLE_LSTM_BACKEND`` or :func:`set_backend`):

* ``"auto"`` (default): the fused op; the C++ kernel on CPU when it builds, else the Python
  kernel (with a one-line warning when no compiler is found);
* ``"cpp"``: the fused op with the C++ kernel on CPU; raises if it cannot be built;
* ``"python"``: the fused op with the Python kernel (no compiler needed);
* ``"reference"``: no fused op; the autograd time loop of :mod:`peephole_lstm.functional`.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor

__all__ = ["BACKENDS", "build_extension", "get_backend", "set_backend"]

BACKENDS = ("auto", "cpp", "python", "reference")
_ENV = "PEEPHOLE_LSTM_BACKEND"


def _backend_from_env() -> str:
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


_BACKEND: str = _backend_from_env()


def set_backend(backend: str) -> None:
    """Select the implementation used by :class:`~peephole_lstm.PeepholeLSTM` (see module doc)."""
    global _BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _BACKEND = backend


def get_backend() -> str:
    """The backend in force: ``"auto"``, ``"cpp"``, ``"python"`` or ``"reference"``."""
    return _BACKEND


# --------------------------------------------------------------------------- C++ build
_ext_lock = threading.Lock()
_ext_state: dict[str, object] = {"tried": False, "ok": False, "error": None}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def _simd_flags() -> tuple[str, list[str]]:
    """The widest at::vec capability this CPU runs (the variants ATen itself is built for)."""
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                          "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return "avx2", ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return "", []


def build_extension(verbose: bool = False) -> bool:
    """Compile (or load from the cache) the C++ kernel. Returns whether it is available.

    Called on first use of the ``"auto"``/``"cpp"`` backends on CPU; call it yourself to
    pay the one-off compile time up front (e.g. in a Docker build step).
    """
    with _ext_lock:
        if _ext_state["tried"]:
            return bool(_ext_state["ok"])
        _ext_state["tried"] = True
        try:
            from torch.utils import cpp_extension

            cxx = os.environ.get("CXX", "c++")
            if shutil.which(cxx) is None:
                raise RuntimeError(f"no C++ compiler ({cxx!r} not on PATH)")
            if not cpp_extension.is_ninja_available():
                raise RuntimeError("ninja is not installed (pip install ninja)")
            src = os.path.join(os.path.dirname(__file__), "csrc", "recurrence.cpp")
            # No -ffast-math, and no FMA contraction of our own arithmetic: results must
            # match the reference path. AVX2/AVX512 let at::vec use SLEEF's exp, as ATen does.
            flags = ["-O3", "-ffp-contract=off", "-fopenmp"]  # OpenMP: at::parallel_for
            simd, simd_flags = _simd_flags()
            name = "peephole_lstm_cpp" + (f"_{simd}" if simd else "")
            flags += simd_flags
            cpp_extension.load(
                name=name,
                sources=[src],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=verbose,
            )
            _ext_state["ok"] = True
        except Exception as exc:  # any build failure falls back, with one warning
            _ext_state["error"] = exc
            if _BACKEND == "cpp":
                raise RuntimeError(
                    f"{_ENV}=cpp but the C++ kernel could not be built: {exc}"
                ) from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(
                f"peephole_lstm: C++ kernel unavailable ({first}); using the pure-PyTorch "
                f"fused kernel (slower). Set {_ENV}=python to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return bool(_ext_state["ok"])


def _use_cpp(t: Tensor) -> bool:
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        if _BACKEND == "cpp" and t.device.type == "cpu":
            raise RuntimeError(f"{_ENV}=cpp supports float32/float64, got {t.dtype}")
        return False
    if _BACKEND == "python":
        return False
    if _ext_state["tried"]:  # every call after the first: no lock on the hot path
        return bool(_ext_state["ok"])
    return build_extension()


# ---------------------------------------------------------------- Python kernels
def _forward_py(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    reverse: bool,
    save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, G = xw.shape
    H = G // 4
    P = h0.size(1)
    if bias is not None:
        xw = xw + bias  # (T, B, 4H)
    gates = torch.empty_like(xw)  # (T, B, 4H): activated i, f, g, o
    cs = xw.new_empty(T, B, H)
    out = xw.new_empty(T, B, P)
    w_hh_t = w_hh.t()  # (P, 4H)
    h, c = h0, c0
    for s in range(T):
        t = T - 1 - s if reverse else s
        g_t = gates[t]
        torch.addmm(xw[t], h, w_hh_t, out=g_t)  # (B, 4H)
        z_i, z_f, z_g, z_o = g_t.chunk(4, 1)  # views into gates[t]
        if w_ci is not None:
            z_i.addcmul_(c, w_ci)
        if w_cf is not None:
            z_f.addcmul_(c, w_cf)
        z_i.sigmoid_()
        z_f.sigmoid_()
        z_g.tanh_()
        c_t = cs[t]
        torch.mul(z_f, c, out=c_t)
        c_t.addcmul_(z_i, z_g)
        if w_co is not None:
            z_o.addcmul_(c_t, w_co)
        z_o.sigmoid_()
        if w_hr is None:
            torch.mul(z_o, c_t.tanh(), out=out[t])
        else:
            torch.mm(z_o * c_t.tanh(), w_hr.t(), out=out[t])
        h, c = out[t], c_t
    if not save:
        return out, h.clone(), c.clone(), xw.new_empty(0), xw.new_empty(0)
    return out, h.clone(), c.clone(), gates, cs


def _backward_py(
    grad_out: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor,
    out: Tensor,
    gates: Tensor,
    cs: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, G = gates.shape
    H = G // 4
    P = out.size(2)
    i_all, f_all, g_all, o_all = gates.chunk(4, 2)  # 4 x (T, B, H)
    tanh_c = cs.tanh()  # (T, B, H)
    h0u, c0u = h0.unsqueeze(0), c0.unsqueeze(0)
    if reverse:
        h_prev = torch.cat([out[1:], h0u], 0)  # (T, B, P)
        c_prev_all = torch.cat([cs[1:], c0u], 0)  # (T, B, H)
    else:
        h_prev = torch.cat([h0u, out[:-1]], 0)
        c_prev_all = torch.cat([c0u, cs[:-1]], 0)
    # Every factor that does not depend on the incoming gradient, for all steps at once, so
    # that the sequential loop is ~10 ops per step (the loop's op count is its cost).
    k_o = tanh_c * o_all * (1 - o_all)  # d_o = dr * k_o
    k_c = o_all * (1 - tanh_c * tanh_c)  # dc += dr * k_c
    k_i = g_all * i_all * (1 - i_all)  # d_i = dc * k_i
    k_f = c_prev_all * f_all * (1 - f_all)  # d_f = dc * k_f
    k_g = i_all * (1 - g_all * g_all)  # d_g = dc * k_g
    dgates = torch.empty_like(gates)  # (T, B, 4H)
    dH = torch.empty_like(out)  # (T, B, P)
    dc = grad_cn.clone()
    dh0 = h0.new_empty(0)
    t_last = 0 if reverse else T - 1
    torch.add(grad_out[t_last], grad_hn, out=dH[t_last])
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        dr = dH[t] if w_hr is None else dH[t] @ w_hr  # (B, H)
        d_i, d_f, d_g, d_o = dgates[t].chunk(4, 1)  # views into dgates[t]
        torch.mul(dr, k_o[t], out=d_o)
        dc = torch.addcmul(dc, dr, k_c[t])
        if w_co is not None:
            dc.addcmul_(d_o, w_co)
        torch.mul(dc, k_i[t], out=d_i)
        torch.mul(dc, k_f[t], out=d_f)
        torch.mul(dc, k_g[t], out=d_g)
        dc = dc * f_all[t]
        if w_ci is not None:
            dc.addcmul_(d_i, w_ci)
        if w_cf is not None:
            dc.addcmul_(d_f, w_cf)
        if s > 0:
            t_prev = t + 1 if reverse else t - 1
            torch.addmm(grad_out[t_prev], dgates[t], w_hh, out=dH[t_prev])
        else:
            dh0 = dgates[t] @ w_hh  # (B, P)
    dw_hh = dgates.reshape(T * B, G).t() @ h_prev.reshape(T * B, P)  # (4H, P)
    d_bias = dgates.sum((0, 1)) if bias is not None else out.new_empty(0)
    dw_hr = out.new_empty(0)  # an absent weight's grad; outputs may not alias each other
    if w_hr is not None:
        dw_hr = dH.reshape(T * B, P).t() @ (o_all * tanh_c).reshape(T * B, H)  # (P, H)
    d_i_all, d_f_all, _, d_o_all = dgates.chunk(4, 2)
    dw_ci = (d_i_all * c_prev_all).sum((0, 1)) if w_ci is not None else out.new_empty(0)
    dw_cf = (d_f_all * c_prev_all).sum((0, 1)) if w_cf is not None else out.new_empty(0)
    dw_co = (d_o_all * cs).sum((0, 1)) if w_co is not None else out.new_empty(0)
    return dgates, dh0, dc, dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co


_SCRIPTED: dict = {}


def _scripted(fn):
    """``fn`` compiled by TorchScript, once: the interpreter's per-op overhead is well below
    Python's, and the Python kernels are 10-12 small ops per time step (the forward ran 1.3x
    faster at T=500). Falls back to ``fn`` itself wherever TorchScript cannot compile it."""
    if fn not in _SCRIPTED:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.13
                _SCRIPTED[fn] = torch.jit.script(fn)
        except Exception:  # a future torch without TorchScript: plain Python is correct too
            _SCRIPTED[fn] = fn
    return _SCRIPTED[fn]


# ------------------------------------------------------------------- custom ops
@torch.library.custom_op("peephole_lstm::recurrence", mutates_args=())
def recurrence(
    xw: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    reverse: bool,
    save: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer's recurrence over ``xw = x W_ih^T`` (T, B, 4H), with ``bias`` (4H,) =
    ``b_ih + b_hh`` added inside. Returns ``(output, h_n, c_n, gates, cs)``; the last two are
    the activations saved for the backward, empty when ``save`` is false (inference)."""
    if _use_cpp(xw):
        return torch.ops.peephole_lstm_cpp.forward(xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save)
    return _scripted(_forward_py)(xw.contiguous(), h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save)


@recurrence.register_fake
def _(xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save=True):
    T, B, G = xw.shape
    H = G // 4
    P = h0.shape[1]
    return (
        xw.new_empty(T, B, P),
        xw.new_empty(B, P),
        xw.new_empty(B, H),
        xw.new_empty(T, B, G) if save else xw.new_empty(0),
        xw.new_empty(T, B, H) if save else xw.new_empty(0),
    )


@torch.library.custom_op("peephole_lstm::recurrence_backward", mutates_args=())
def recurrence_backward(
    grad_out: Tensor,
    grad_hn: Tensor,
    grad_cn: Tensor,
    out: Tensor,
    gates: Tensor,
    cs: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`recurrence`: ``(d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci,
    d_w_cf, d_w_co)``; an absent weight's gradient is an empty tensor."""
    args = (grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co)
    if _use_cpp(gates):
        return torch.ops.peephole_lstm_cpp.backward(*args, reverse)
    args = tuple(a.contiguous() if a is not None else None for a in args)
    return _scripted(_backward_py)(*args, reverse)


@recurrence_backward.register_fake
def _(grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse):
    def like(w: Optional[Tensor]) -> Tensor:
        return torch.empty_like(w) if w is not None else out.new_empty(0)

    return (
        torch.empty_like(gates),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_hh),
        like(bias),
        like(w_hr),
        like(w_ci),
        like(w_cf),
        like(w_co),
    )


def _setup_context(ctx, inputs, output):
    xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save = inputs
    out, _, _, gates, cs = output
    ctx.saved = save
    ctx.save_for_backward(out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co)
    ctx.reverse = reverse


def _backward(ctx, grad_out, grad_hn, grad_cn, _grad_gates, _grad_cs):
    if not ctx.saved:
        raise RuntimeError("peephole_lstm::recurrence was called with save=False; it has no backward")
    out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co = ctx.saved_tensors
    # An output nobody used arrives as None: its gradient is zero.
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn
    grad_cn = torch.zeros_like(c0) if grad_cn is None else grad_cn
    d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci, d_w_cf, d_w_co = recurrence_backward(
        grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co,
        ctx.reverse,
    )
    return (
        d_xw,
        d_h0,
        d_c0,
        d_w_hh,
        d_bias if bias is not None else None,
        d_w_hr if w_hr is not None else None,
        d_w_ci if w_ci is not None else None,
        d_w_cf if w_cf is not None else None,
        d_w_co if w_co is not None else None,
        None,
        None,
    )


recurrence.register_autograd(_backward, setup_context=_setup_context)
