"""Reference peephole-LSTM math: one step, and one layer in one direction.

This is the readable, equation-by-equation path. It is plain typed Python so that
``torch.jit.script`` compiles it, it runs on every device, autograd differentiates it
(to any order), and it covers every configuration: ``"full"`` peepholes, the candidate
peephole and variable-length (packed) batches. The fused path in :mod:`peephole_lstm.ops.recurrence`
must agree with it; the tests hold both to an independent float64 reference.

A peephole weight is ``None`` (absent), a vector of shape ``(H,)`` (diagonal, applied
as ``w * c``) or a matrix of shape ``(H, H)`` (full, applied as ``W @ c``).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["peephole_lstm_cell", "peephole_lstm_layer"]


def _peep(w: Tensor, c: Tensor) -> Tensor:
    """Peephole term of a gate: ``w ⊙ c`` (diagonal) or ``W c`` (full)."""
    if w.dim() == 1:
        return c * w
    return F.linear(c, w)


def peephole_lstm_cell(
    gates_x: Tensor,
    h: Tensor,
    c: Tensor,
    w_hh: Tensor,
    w_hr: Optional[Tensor] = None,
    w_ci: Optional[Tensor] = None,
    w_cf: Optional[Tensor] = None,
    w_co: Optional[Tensor] = None,
    w_cc: Optional[Tensor] = None,
    cell_clip: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """One time step.

    Args:
        gates_x: ``W_ih x_t + b_ih + b_hh``, shape ``(B, 4H)``, gate order i, f, g, o.
        h: previous hidden state ``(B, H_out)``.
        c: previous cell state ``(B, H)``.
        w_hh: ``(4H, H_out)``.
        w_hr: projection ``(H_out, H)`` or ``None``.
        w_ci: peephole of the input gate: ``(H,)`` diagonal, ``(H, H)`` full, or ``None``.
        w_cf: peephole of the forget gate, as ``w_ci``.
        w_co: peephole of the output gate (on ``c_t``), as ``w_ci``.
        w_cc: the candidate peephole (``g_t = tanh(z_g + w_cc c_{t-1})``) or ``None``.
        cell_clip: clip ``c_t`` to ``[-cell_clip, cell_clip]`` before the output gate and the
            output see it (TensorFlow's ``LSTMCell(cell_clip=...)``); ``None``: no clip.

    Returns:
        ``(h_t, c_t)``.
    """
    gates = gates_x + F.linear(h, w_hh)  # (B, 4H)
    z_i, z_f, z_g, z_o = gates.chunk(4, 1)  # 4 x (B, H)
    if w_ci is not None:
        z_i = z_i + _peep(w_ci, c)
    if w_cf is not None:
        z_f = z_f + _peep(w_cf, c)
    if w_cc is not None:
        z_g = z_g + _peep(w_cc, c)
    i = torch.sigmoid(z_i)
    f = torch.sigmoid(z_f)
    g = torch.tanh(z_g)
    c_new = f * c + i * g
    if cell_clip is not None:
        c_new = c_new.clamp(-cell_clip, cell_clip)
    if w_co is not None:
        z_o = z_o + _peep(w_co, c_new)  # the output gate sees the NEW cell state
    o = torch.sigmoid(z_o)
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)  # (B, H_out)
    return h_new, c_new


def _reverse_padded(x: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """Reverse a time-major padded batch ``(T, B, *)`` along time, each sequence
    within its own length (padding stays at the end)."""
    if lengths is None:
        return x.flip(0)
    T = x.size(0)
    t = torch.arange(T, device=x.device).unsqueeze(1)  # (T, 1)
    lens = lengths.to(x.device).unsqueeze(0)  # (1, B)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (T, B)
    idx = idx.view(idx.size(0), idx.size(1), 1).expand(x.size())
    return x.gather(0, idx)


def peephole_lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
    w_hr: Optional[Tensor] = None,
    w_ci: Optional[Tensor] = None,
    w_cf: Optional[Tensor] = None,
    w_co: Optional[Tensor] = None,
    w_cc: Optional[Tensor] = None,
    reverse: bool = False,
    lengths: Optional[Tensor] = None,
    cell_clip: Optional[float] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One layer, one direction, over a time-major sequence.

    Args:
        x: ``(T, B, H_in)``.
        h0: the initial hidden state ``(B, H_out)``.
        c0: the initial cell state ``(B, H)``.
        reverse: run from the last valid step to the first.
        lengths: ``(B,)`` valid lengths for a padded batch (packed input); the state of
            a sequence stops changing after its last step and its outputs past it are 0.
        cell_clip: see :func:`peephole_lstm_cell`.

    Returns:
        ``(output (T, B, H_out), h_n (B, H_out), c_n (B, H))``.
    """
    if reverse:
        x = _reverse_padded(x, lengths)
    gates_x = F.linear(x, w_ih, b_ih)  # (T, B, 4H): one GEMM for every step
    if b_hh is not None:
        gates_x = gates_x + b_hh
    h = h0
    c = c0
    outputs: list[Tensor] = []
    # unbind, not x[t]: indexing in a loop makes TorchScript's backward O(T^2).
    for t, g_t in enumerate(gates_x.unbind(0)):
        h_new, c_new = peephole_lstm_cell(g_t, h, c, w_hh, w_hr, w_ci, w_cf, w_co, w_cc, cell_clip)
        if lengths is not None:
            valid = (lengths.to(h.device) > t).unsqueeze(1)  # (B, 1)
            h = torch.where(valid, h_new, h)
            c = torch.where(valid, c_new, c)
            outputs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
        else:
            h = h_new
            c = c_new
            outputs.append(h_new)
    out = torch.stack(outputs, 0)  # (T, B, H_out)
    if reverse:
        out = _reverse_padded(out, lengths)
    return out, h, c
