"""The input projection ``x W_ih^T`` of every step at once, ahead of the recurrence.

On eager CPU float32 with the C++ kernel the product takes oneDNN's matmul where that
measures faster than ``F.linear`` (MKL), per shape and process; a large inference product
goes into a reused per-thread scratch buffer; and a large-step inference layer may hand ``x``
and ``W_ih`` to the kernel itself (:func:`projects_in_kernel`).
"""

from __future__ import annotations

import threading
import time

import torch
from torch import Tensor

from . import backend

__all__ = ["input_projection", "projects_in_kernel", "release_scratch"]

_PROJ_CHOICE: dict[tuple[int, int, int], bool] = {}


def _proj_key(rows: int, in_features: int, out_features: int) -> tuple[int, int, int]:
    # rows by power of two: variable-length inference does not re-measure for every length
    return rows.bit_length(), in_features, out_features


def _onednn_linear(x2: Tensor, w: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2, w, None, "none", [], "")


def _onednn_wins(x2: Tensor, w: Tensor) -> bool:
    """Whether oneDNN's matmul beats ``F.linear`` (MKL) for this shape here: measured once per
    shape and process (MKL's sgemm took 2-3x oneDNN's time on an AMD EPYC; on Intel the two
    are close), best of three calls each."""
    key = _proj_key(x2.size(0), x2.size(1), w.size(0))
    if key not in _PROJ_CHOICE:
        best = {}
        for name, fn in (("mkl", lambda: torch.nn.functional.linear(x2, w)), ("onednn", lambda: _onednn_linear(x2, w))):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        _PROJ_CHOICE[key] = best["onednn"] < best["mkl"]
    return _PROJ_CHOICE[key]


def _onednn_eligible(x: Tensor, w: Tensor) -> bool:
    """Eager CPU float32, large enough, not traced: where oneDNN's matmul may take the product."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    if x.numel() < (1 << 16) or type(x) is not torch.Tensor or type(w) not in (torch.Tensor, torch.nn.Parameter):
        return False  # small: call overheads dominate; fake tensors and subclasses go through F.linear
    if backend.get_backend() == "python" or not torch.backends.mkldnn.is_available():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


class _OneDnnProjection(torch.autograd.Function):
    """``x2 W^T`` with autograd, for training: forward and ``dx = g W`` by oneDNN's matmul, the
    weight gradient ``g^T x2`` by the C++ kernel's A^T B GEMM (each measured per shape against
    MKL, which ran these products at half oneDNN's speed on an AMD EPYC). First derivatives
    only, like the recurrence op it feeds. With ``scratch`` the product goes into this thread's
    scratch buffer (see ``input_projection``): the recurrence consumes it at once and neither
    backward reads it."""

    @staticmethod
    def forward(ctx, x2: Tensor, w: Tensor, scratch: bool = False) -> Tensor:
        ctx.save_for_backward(x2, w)
        if scratch:
            return _onednn_into(x2, w, _scratch_buffer(x2.size(0) * w.size(0)).view(x2.size(0), w.size(0)))
        return _onednn_linear(x2, w)  # (N, 4H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x2, w = ctx.saved_tensors
        g = g.contiguous()  # (N, 4H)
        dx = _onednn_linear(g, w.t().contiguous()) if ctx.needs_input_grad[0] else None  # (N, I)
        dw = torch.ops.peephole_lstm_cpp.mm_tn(g, x2) if ctx.needs_input_grad[1] else None  # (4H, I)
        return dx, dw, None


_BLOCK_BYTES = 8 << 20  # oneDNN's fresh row blocks: small enough for reused heap memory


def _onednn_into(x2: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """``out = x2 W^T`` by oneDNN, which writes only fresh tensors: row blocks of at most
    ``_BLOCK_BYTES`` (reused heap memory, no page faults) copied in."""
    rows = max(1, _BLOCK_BYTES // (4 * w.size(0)))
    for r0 in range(0, x2.size(0), rows):
        out[r0 : r0 + rows].copy_(_onednn_linear(x2[r0 : r0 + rows], w))
    return out


# Inference scratch for the input projection: a (T, B, 4H) product over 32 MiB is served by
# fresh mmap'd pages on every call (glibc maps allocations that large), and faulting them in
# took a quarter of the time of a whole S4 forward (measured: 105 MB, ~25 ms of ~100 ms on an
# AMD EPYC); oneDNN's fused RNN keeps its scratchpad. One buffer per thread, the largest
# projection seen (up to _SCRATCH_MAX_BYTES), reused by every later call (training too: the
# recurrence op consumes the projection at once and saves its gates, not its input).
_SCRATCH_MIN_BYTES = 32 << 20
_SCRATCH_MAX_BYTES = 1 << 30
_scratch = threading.local()


def _scratch_buffer(numel: int) -> Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        _scratch.buf = None  # free the old one first
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def release_scratch() -> None:
    """Free this thread's inference scratch buffer (see ``input_projection``)."""
    _scratch.buf = None


_LARGE_STEP_FLOPS = 1 << 23  # the C++ kernel's one-region bound (serial_step_flops in kernels/cpu/threads.h)


def projects_in_kernel(x: Tensor, w_ih: Tensor, h0: Tensor) -> bool:
    """Whether an inference layer call should hand the C++ kernel ``x`` and ``W_ih`` instead of
    ``xw = x W_ih^T`` (``torch.ops.peephole_lstm_cpp.forward_x``): where ``input_projection``
    would write a large product (``_SCRATCH_MIN_BYTES`` and more) for a loop of large steps
    (``h W_hh^T`` alone at least 2^23 FLOPs, beyond the kernel's one-region bound). The kernel
    then writes each step's ``x_t W_ih^T`` into the step's gate rows just before the step's GEMM
    adds ``h_{t-1} W_hh^T``: the (T, B, 4H) product never goes through memory. Callers check
    that no gradient is needed."""
    rows = x.numel() // max(1, x.size(-1))  # T*B, or N packed
    batch, p = h0.shape  # (B, P)
    if 4 * rows * w_ih.size(0) < _SCRATCH_MIN_BYTES or 2 * batch * p * w_ih.size(0) < _LARGE_STEP_FLOPS:
        return False  # the shapes first: small calls skip the checks below
    return _onednn_eligible(x, w_ih) and backend.use_cpp(x)


def input_projection(x: Tensor, w_ih: Tensor, scratch: bool = False) -> Tensor:
    """``x W_ih^T`` for every step at once, ``(*, I) -> (*, 4H)``. In eager CPU float32 (not
    traced, not autocast) with the C++ kernel it takes oneDNN's matmul where that measures
    faster than ``F.linear`` (MKL), in training too (``_OneDnnProjection``). With ``scratch``
    (the caller consumes the result before its next call on this thread and keeps no
    reference; no backward reads it) a large product, in inference or training, is written
    into a reused per-thread buffer."""
    if _onednn_eligible(x, w_ih) and backend.use_cpp(x):
        x2 = x.reshape(-1, x.size(-1)).contiguous()  # (T*B, I)
        numel = x2.size(0) * w_ih.size(0)
        grad = torch.is_grad_enabled() and (x.requires_grad or w_ih.requires_grad)
        big = scratch and _SCRATCH_MIN_BYTES <= 4 * numel <= _SCRATCH_MAX_BYTES
        if grad:
            if _onednn_wins(x2.detach(), w_ih.detach()):
                return _OneDnnProjection.apply(x2, w_ih, big).view(*x.shape[:-1], w_ih.size(0))
        elif big:
            out = _scratch_buffer(numel).view(x2.size(0), w_ih.size(0))  # (T*B, 4H)
            if _onednn_wins(x2, w_ih):
                _onednn_into(x2, w_ih, out)  # ~half MKL's time on a wide input (AMD)
            else:
                torch.mm(x2, w_ih.t(), out=out)
            return out.view(*x.shape[:-1], w_ih.size(0))
        elif _onednn_wins(x2, w_ih):
            return _onednn_linear(x2, w_ih).view(*x.shape[:-1], w_ih.size(0))
    return torch.nn.functional.linear(x, w_ih)
