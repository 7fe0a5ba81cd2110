"""The fast path: one custom op for a layer's whole time loop, with a hand-written BPTT.

``torch.ops.peephole_lstm.recurrence`` runs the recurrence of one layer in one direction
given the precomputed input projection ``xw = x W_ih^T`` of every step (one GEMM) and
``bias = b_ih + b_hh``: diagonal (vectors) or full (matrices) peepholes or none, the
candidate peephole, an optional projection, and padded ``(T, B, ·)`` or packed ``(N, ·)``
rows (with a ``PackedSequence``'s ``batch_sizes``). It is registered with ``torch.library``
with a fake (meta) kernel and an autograd formula (``peephole_lstm::recurrence_backward``),
so ``torch.compile`` and ``torch.export`` see one opaque node instead of an unrolled loop.

The kernels live in :mod:`peephole_lstm.ops.kernels` (``cpu/``: C++, CPU float32/float64;
``triton.py``: Triton element-wise kernels around cuBLAS GEMMs, CUDA; ``python.py``:
vectorised PyTorch, every device); :mod:`peephole_lstm.ops.backend` picks one.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from . import backend
from .kernels import python as _py

__all__ = ["recurrence", "recurrence_backward", "recurrence_from_input"]

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
# Defined with torch.library.Library, not @custom_op: a custom_op's kernel is wrapped in
# torch._disable_dynamo, whose first call imports torch._dynamo (~1.4 s in every new process,
# on the first forward). The schema, fake kernel and autograd formula are the same.
_LIB = torch.library.Library("peephole_lstm", "FRAGMENT")
_LIB.define(
    "recurrence(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, "
    "Tensor? w_cf, Tensor? w_co, bool reverse, bool save=True, Tensor? w_cc=None, Tensor? batch_sizes=None, "
    "float? cell_clip=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_LIB.define(
    "recurrence_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor out, Tensor gates, Tensor cs, "
    "Tensor h0, Tensor c0, Tensor w_hh, Tensor? bias, Tensor? w_hr, Tensor? w_ci, Tensor? w_cf, Tensor? w_co, "
    "bool reverse, Tensor? w_cc=None, Tensor? batch_sizes=None, float? cell_clip=None) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def recurrence(*args, **kwargs) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``torch.ops.peephole_lstm.recurrence`` (see :func:`_recurrence_impl`)."""
    return torch.ops.peephole_lstm.recurrence.default(*args, **kwargs)


def recurrence_backward(*args, **kwargs) -> tuple[Tensor, ...]:
    """``torch.ops.peephole_lstm.recurrence_backward`` (see :func:`_recurrence_backward_impl`)."""
    return torch.ops.peephole_lstm.recurrence_backward.default(*args, **kwargs)


def _clip(cell_clip: Optional[float]) -> float:
    """The kernels' cell clip: 0 for none."""
    return float(cell_clip) if cell_clip is not None else 0.0


def recurrence_from_input(
    x: Tensor,
    w_ih: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    w_cc: Optional[Tensor],
    batch_sizes: Optional[Tensor],
    reverse: bool,
    cell_clip: Optional[float],
) -> tuple[Tensor, Tensor, Tensor]:
    """Inference only (no autograd, eager, the C++ kernel): :func:`recurrence` given the layer
    input ``x`` (T, B, I) or packed (N, I) and ``W_ih`` instead of ``xw``; the kernel forms each
    step's ``x_t W_ih^T`` in its loop (``torch.ops.peephole_lstm_cpp.forward_x``; see
    ``projection.projects_in_kernel``). Returns ``(output, h_n, c_n)``."""
    return torch.ops.peephole_lstm_cpp.forward_x(
        x, w_ih, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes, reverse, _clip(cell_clip)
    )


def _recurrence_impl(
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
    w_cc: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    cell_clip: Optional[float] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One layer's recurrence over ``xw = x W_ih^T`` (T, B, 4H), or packed (N, 4H) with
    ``batch_sizes`` (T,) (int64, CPU, non-increasing, as in a ``PackedSequence``), with
    ``bias`` (4H,) = ``b_ih + b_hh`` added inside. Peepholes ``w_ci, w_cf, w_co`` (and the
    candidate ``w_cc``) are all vectors (H,) or all matrices (H, H), or None; ``cell_clip``
    clips each ``c_t`` to ``[-cell_clip, cell_clip]`` (None: no clip). Returns
    ``(output, h_n, c_n, gates, cs)``; the last two are the activations saved for the
    backward, empty when ``save`` is false (inference)."""
    clip = _clip(cell_clip)
    if backend.use_cpp(xw):
        return torch.ops.peephole_lstm_cpp.forward(
            xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes, reverse, save, clip
        )
    if backend.use_triton(xw):
        from .kernels import triton as _tr  # imports triton: only here

        return _tr.forward(xw, h0.contiguous(), c0.contiguous(), w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc,
                           batch_sizes, reverse, save, clip)
    return _scripted(_py.forward)(
        xw.contiguous(), h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes, reverse, save, clip
    )


_LIB.impl("recurrence", _recurrence_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("peephole_lstm::recurrence", lib=_LIB)
def _(xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save=True, w_cc=None, batch_sizes=None,
      cell_clip=None):
    G = xw.shape[-1]
    H = G // 4
    B, P = h0.shape
    rows = xw.shape[:-1]  # (T, B) or packed (N,)
    return (
        xw.new_empty(*rows, P),
        xw.new_empty(B, P),
        xw.new_empty(B, H),
        xw.new_empty(*rows, G) if save else xw.new_empty(0),
        xw.new_empty(*rows, H) if save else xw.new_empty(0),
    )


def _recurrence_backward_impl(
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
    w_cc: Optional[Tensor] = None,
    batch_sizes: Optional[Tensor] = None,
    cell_clip: Optional[float] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`recurrence`: ``(d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci,
    d_w_cf, d_w_co, d_w_cc)``; an absent weight's gradient is an empty tensor."""
    args = (grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc)
    clip = _clip(cell_clip)
    if backend.use_cpp(gates):
        return torch.ops.peephole_lstm_cpp.backward(*args, batch_sizes, reverse, clip)
    args = tuple(a.contiguous() if a is not None else None for a in args)
    if backend.use_triton(gates):
        from .kernels import triton as _tr

        return _tr.backward(*args, batch_sizes, reverse, clip)
    return _scripted(_py.backward)(*args, batch_sizes, reverse, clip)


_LIB.impl("recurrence_backward", _recurrence_backward_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("peephole_lstm::recurrence_backward", lib=_LIB)
def _(grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, w_cc=None,
      batch_sizes=None, cell_clip=None):
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
        like(w_cc),
    )


def _setup_context(ctx, inputs, output):
    xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save, w_cc, batch_sizes, cell_clip = inputs
    out, _, _, gates, cs = output
    ctx.saved = save
    ctx.save_for_backward(out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes)
    ctx.reverse = reverse
    ctx.cell_clip = cell_clip


def _backward(ctx, grad_out, grad_hn, grad_cn, _grad_gates, _grad_cs):
    if not ctx.saved:
        raise RuntimeError("peephole_lstm::recurrence was called with save=False; it has no backward")
    out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes = ctx.saved_tensors
    # An output nobody used arrives as None: its gradient is zero.
    grad_out = torch.zeros_like(out) if grad_out is None else grad_out
    grad_hn = torch.zeros_like(h0) if grad_hn is None else grad_hn
    grad_cn = torch.zeros_like(c0) if grad_cn is None else grad_cn
    grads = recurrence_backward(
        grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, ctx.reverse,
        w_cc, batch_sizes, ctx.cell_clip,
    )
    d_xw, d_h0, d_c0, d_w_hh, d_bias, d_w_hr, d_w_ci, d_w_cf, d_w_co, d_w_cc = grads

    def opt(g: Tensor, w: Optional[Tensor]) -> Optional[Tensor]:
        return g if w is not None else None

    return (
        d_xw, d_h0, d_c0, d_w_hh, opt(d_bias, bias), opt(d_w_hr, w_hr), opt(d_w_ci, w_ci), opt(d_w_cf, w_cf),
        opt(d_w_co, w_co), None, None, opt(d_w_cc, w_cc), None, None,
    )


torch.library.register_autograd("peephole_lstm::recurrence", _backward, setup_context=_setup_context, lib=_LIB)

# Under torch.autocast the input projection arrives in bfloat16/float16 while the states and
# weights are float32: the recurrence runs in float32 (cell state and gate math in float32, the
# kernels' dtype), its inputs cast up; the GEMM around it (x W_ih^T) keeps autocast's dtype.
for _device in ("cpu", "cuda"):
    torch.library.register_autocast("peephole_lstm::recurrence", _device, torch.float32, lib=_LIB)
