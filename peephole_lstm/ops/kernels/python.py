"""The fused recurrence in vectorised PyTorch: every device, no compiler.

Algorithm (the same as ``cpu.cpp``): the caller computes ``xw = x W_ih^T`` for every step;
per step one ``addmm`` for ``h_{t-1} W_hh^T``, the peepholes (``w ⊙ c`` diagonal, or one
GEMM ``c_{t-1} [W_ci; W_cf; W_cc]^T`` and one ``c_t W_co^T`` for full matrices), the gate
activations in place, the cell and the output. The backward precomputes every factor that
does not depend on the incoming gradient for all steps at once, so that its sequential loop
is ~10 ops per step, then forms the weight gradients with one GEMM or sum each.

Memory layout: everything works on flat rows, ``(N, ·)``: step ``t`` owns rows
``off[t] .. off[t] + n[t]``. Unpacked input is ``(T, B, ·)`` viewed as ``N = T B`` rows with
``n[t] = B``; packed input (a ``PackedSequence``'s ``batch_sizes``) runs step ``t`` on its
first ``n[t]`` sequences only. Saved for the backward: activated gates ``[i, f, g, o]``
``(N, 4H)`` and cell states ``(N, H)``; inference saves nothing and keeps no gate buffer.

Both functions are plain typed Python so that TorchScript can compile them (its interpreter
runs the small per-step ops faster than Python; see ``recurrence._scripted``).
"""

from typing import List, Optional

import torch
from torch import Tensor

__all__ = ["backward", "carried", "forward", "previous_states", "steps", "weight_grads"]


def steps(T: int, B: int, batch_sizes: Optional[Tensor]) -> tuple[List[int], List[int]]:
    """Rows per step and their first row: ``(n, off)``."""
    if batch_sizes is None:
        n = [B] * T
    else:
        n = torch.jit.annotate(List[int], batch_sizes.tolist())
    off: List[int] = []
    acc = 0
    for v in n:
        off.append(acc)
        acc += v
    return n, off


def carried(n: List[int], t: int, other: int) -> int:
    """Rows of step ``t`` that step ``other`` also has (0 when there is no such step): with
    non-increasing batch sizes these are the first ones, carried between the two steps."""
    return min(n[t], n[other]) if 0 <= other < len(n) else 0


def previous_states(seq: Tensor, init: Tensor, n: List[int], off: List[int], reverse: bool) -> Tensor:
    """The state each step started from, ``(N, D)``: the rows of the step before it in
    processing order, and ``init`` ``(B, D)`` for the rows that start at it."""
    T = len(n)
    if T > 0 and min(n) == max(n):  # unpacked: a shift by one step
        B = n[0]
        s = seq.view(T, B, seq.size(-1))
        if reverse:
            return torch.cat([s[1:], init.unsqueeze(0)], 0).view(seq.shape)
        return torch.cat([init.unsqueeze(0), s[:-1]], 0).view(seq.shape)
    prev = torch.empty_like(seq)
    for t in range(T):
        t_prev = t + 1 if reverse else t - 1
        n_from = carried(n, t, t_prev)
        if n_from > 0:
            prev[off[t] : off[t] + n_from] = seq[off[t_prev] : off[t_prev] + n_from]
        if n[t] > n_from:
            prev[off[t] + n_from : off[t] + n[t]] = init[n_from : n[t]]
    return prev


def _peep(w: Tensor, c: Tensor) -> Tensor:
    return c * w if w.dim() == 1 else c @ w.t()


def forward(
    xw: Tensor,
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
    save: bool,
    cell_clip: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    G = xw.size(-1)
    H = G // 4
    B = h0.size(0)
    P = h0.size(1)
    T = xw.size(0) if batch_sizes is None else batch_sizes.size(0)
    n, off = steps(T, B, batch_sizes)
    x = xw.reshape(-1, G)  # (N, 4H)
    N = x.size(0)
    gates = x.new_empty(N, G) if save else x.new_empty(0)  # activated i, f, g, o
    cs = x.new_empty(N, H) if save else x.new_empty(0)
    out = x.new_empty(N, P)
    w_hh_t = w_hh.t()  # (P, 4H)
    h_state = h0.clone()  # (B, P): every sequence's running state (a finished one keeps its last)
    c_state = c0.clone()  # (B, H)
    for s in range(T):
        t = T - 1 - s if reverse else s
        rows = n[t]
        r0 = off[t]
        hp = h_state[:rows]
        cp = c_state[:rows]
        if save:
            z = gates[r0 : r0 + rows]
            torch.addmm(x[r0 : r0 + rows], hp, w_hh_t, out=z)  # (n, 4H)
        else:
            z = torch.addmm(x[r0 : r0 + rows], hp, w_hh_t)
        if bias is not None:
            z.add_(bias)
        z_i, z_f, z_g, z_o = z.chunk(4, 1)  # views into z
        if w_ci is not None:
            z_i.add_(_peep(w_ci, cp))
        if w_cf is not None:
            z_f.add_(_peep(w_cf, cp))
        if w_cc is not None:
            z_g.add_(_peep(w_cc, cp))
        z_i.sigmoid_()
        z_f.sigmoid_()
        z_g.tanh_()
        c_t = z_f * cp
        c_t.addcmul_(z_i, z_g)
        if cell_clip > 0:
            c_t.clamp_(-cell_clip, cell_clip)
        if w_co is not None:
            z_o.add_(_peep(w_co, c_t))  # the output gate sees the new cell state
        z_o.sigmoid_()
        h_t = z_o * c_t.tanh()
        if w_hr is not None:
            h_t = h_t @ w_hr.t()  # (n, P)
        out[r0 : r0 + rows] = h_t
        if save:
            cs[r0 : r0 + rows] = c_t
        h_state[:rows] = h_t
        c_state[:rows] = c_t
    if batch_sizes is None:
        out = out.view(T, B, P)
        if save:
            gates = gates.view(T, B, G)
            cs = cs.view(T, B, H)
    return out, h_state, c_state, gates, cs


def backward(
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
    w_cc: Optional[Tensor],
    batch_sizes: Optional[Tensor],
    reverse: bool,
    cell_clip: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    G = gates.size(-1)
    H = G // 4
    B = h0.size(0)
    P = h0.size(1)
    T = gates.size(0) if batch_sizes is None else batch_sizes.size(0)
    n, off = steps(T, B, batch_sizes)
    g2 = gates.reshape(-1, G)  # (N, 4H)
    cs2 = cs.reshape(-1, H)  # (N, H)
    out2 = out.reshape(-1, P)  # (N, P)
    i_all, f_all, g_all, o_all = g2.chunk(4, 1)  # 4 x (N, H)
    tanh_c = cs2.tanh()
    c_prev = previous_states(cs2, c0, n, off, reverse)  # (N, H)
    # Every factor that does not depend on the incoming gradient, for all steps at once.
    k_o = tanh_c * o_all * (1 - o_all)  # d_o = dr * k_o
    k_c = o_all * (1 - tanh_c * tanh_c)  # dc += dr * k_c
    k_i = g_all * i_all * (1 - i_all)  # d_i = dc * k_i
    k_f = c_prev * f_all * (1 - f_all)  # d_f = dc * k_f
    k_g = i_all * (1 - g_all * g_all)  # d_g = dc * k_g
    # cell_clip: no gradient flows through a clipped c_t (saved c at the bound)
    unclipped: Optional[Tensor] = (cs2.abs() < cell_clip).to(cs2.dtype) if cell_clip > 0 else None
    full = (w_ci is not None and w_ci.dim() == 2) or (w_co is not None and w_co.dim() == 2)
    wc: Optional[Tensor] = None  # full: [W_ci; W_cf; (W_cc)] (kc H, H)
    if full:
        parts: List[Tensor] = []
        for w in (w_ci, w_cf):
            parts.append(w if w is not None else w_hh.new_zeros(H, H))
        if w_cc is not None:
            parts.append(w_cc)
        wc = torch.cat(parts, 0)
    dgates = torch.empty_like(g2)  # (N, 4H)
    dH = grad_out.reshape(-1, P).clone()  # (N, P)
    dc = torch.zeros_like(c0)  # (B, H)
    dh0 = torch.zeros_like(h0)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        t_prev = t + 1 if reverse else t - 1  # the step that fed this one
        t_next = t - 1 if reverse else t + 1  # the step this one fed
        rows = n[t]
        r0 = off[t]
        n_enter = carried(n, t, t_next)
        if n_enter < rows:  # the sequences whose last step this is
            dH[r0 + n_enter : r0 + rows] += grad_hn[n_enter:rows]
            dc[n_enter:rows] = grad_cn[n_enter:rows]
        dh_t = dH[r0 : r0 + rows]
        dr = dh_t if w_hr is None else dh_t @ w_hr  # (n, H)
        d_i, d_f, d_g, d_o = dgates[r0 : r0 + rows].chunk(4, 1)  # views into dgates
        torch.mul(dr, k_o[r0 : r0 + rows], out=d_o)
        dcn = torch.addcmul(dc[:rows], dr, k_c[r0 : r0 + rows])
        if w_co is not None:
            if w_co.dim() == 1:
                dcn.addcmul_(d_o, w_co)
            else:
                dcn.addmm_(d_o, w_co)
        if unclipped is not None:
            dcn = dcn * unclipped[r0 : r0 + rows]
        torch.mul(dcn, k_i[r0 : r0 + rows], out=d_i)
        torch.mul(dcn, k_f[r0 : r0 + rows], out=d_f)
        torch.mul(dcn, k_g[r0 : r0 + rows], out=d_g)
        dcp = dcn * f_all[r0 : r0 + rows]
        if wc is not None:
            dcp.addmm_(dgates[r0 : r0 + rows, : wc.size(0)], wc)
        else:
            if w_ci is not None:
                dcp.addcmul_(d_i, w_ci)
            if w_cf is not None:
                dcp.addcmul_(d_f, w_cf)
            if w_cc is not None:
                dcp.addcmul_(d_g, w_cc)
        dc[:rows] = dcp
        dh = dgates[r0 : r0 + rows] @ w_hh  # (n, P): the gradient of h_{t-1}
        n_from = carried(n, t, t_prev)
        if n_from > 0:
            dH[off[t_prev] : off[t_prev] + n_from] += dh[:n_from]
        if rows > n_from:
            dh0[n_from:rows] = dh[n_from:]
    dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co, dw_cc = weight_grads(
        dgates, dH, out2, cs2, c_prev, o_all * tanh_c, h0, n, off, reverse, bias, w_hr, w_ci, w_cf, w_co, w_cc
    )
    d_xw = dgates if batch_sizes is not None else dgates.view(T, B, G)
    return d_xw, dh0, dc, dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co, dw_cc


def weight_grads(
    dgates: Tensor,
    dH: Tensor,
    out2: Tensor,
    cs2: Tensor,
    c_prev: Tensor,
    r_all: Tensor,
    h0: Tensor,
    n: List[int],
    off: List[int],
    reverse: bool,
    bias: Optional[Tensor],
    w_hr: Optional[Tensor],
    w_ci: Optional[Tensor],
    w_cf: Optional[Tensor],
    w_co: Optional[Tensor],
    w_cc: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The weight gradients after the step loop, one GEMM or sum over all steps each:
    ``(dW_hh, d_bias, dW_hr, dw_ci, dw_cf, dw_co, dw_cc)`` from the pre-activation gradients
    ``dgates (N, 4H)``, the output gradients ``dH (N, P)``, the outputs ``out2 (N, P)``, the
    cell states ``cs2`` and their predecessors ``c_prev (N, H)``, and ``r_all = o tanh(c)``
    (what the projection saw). An absent weight's gradient is an empty tensor. Shared by
    the Triton kernel."""
    h_prev = previous_states(out2, h0, n, off, reverse)  # (N, P)
    dw_hh = dgates.t() @ h_prev  # (4H, P)
    d_bias = dgates.sum(0) if bias is not None else out2.new_empty(0)  # outputs may not alias
    dw_hr = dH.t() @ r_all if w_hr is not None else out2.new_empty(0)  # (P, H)
    d_i_all, d_f_all, d_g_all, d_o_all = dgates.chunk(4, 1)
    dws: List[Tensor] = []
    for w, d, c in ((w_ci, d_i_all, c_prev), (w_cf, d_f_all, c_prev), (w_co, d_o_all, cs2), (w_cc, d_g_all, c_prev)):
        if w is None:
            dws.append(out2.new_empty(0))
        elif w.dim() == 1:
            dws.append((d * c).sum(0))
        else:
            dws.append(d.t() @ c)  # (H, H)
    return dw_hh, d_bias, dw_hr, dws[0], dws[1], dws[2], dws[3]
