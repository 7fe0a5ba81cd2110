"""The fused recurrence for GPUs: Triton kernels, the whole step loop replayed from a CUDA graph.

Algorithm: the caller computes ``xw = x W_ih^T`` for every step (one GEMM). Three ways to
run the steps, picked per layer:

* **One launch for the whole loop** (``_persist_fwd``; forward, H <= 64, no projection,
  equal-length steps, float32/16-bit): program p owns BLOCK_B batch rows and all H units,
  loads W_hh once (kept on chip), keeps h and c in registers, and per step forms
  z = xw_t + h W_hh^T as four (BLOCK_B, HB) x (HB, HB) tl.dots, then the cell (full
  peepholes: four more dots, on c_{t-1} and on c_t, which the program holds whole).
* **One launch per step** (``_step_fwd``; up to FUSED_STEP_MAX_ROWS rows): each program's
  four gate columns of ``h_{t-1} W_hh^T`` (and ``c_{t-1} [W_ci; W_cf; W_cc]^T`` for full
  peepholes) as tl.dots over K blocks, then the cell (``_cell``).
* **cuBLAS + cell kernel** (larger batches): ``z = torch.addmm(xw_t, h_{t-1}, W_hh^T)``,
  ``pc = c_{t-1} [W_ci; W_cf; W_cc]^T``, then ``_fwd_cell``.

A full W_co needs all of c_t first: a second launch (``_fwd_out``) forms its columns of
``po = c_t W_co^T`` (tl.dot where the per-step launch is picked, else torch.mm) and o; a
projection ``h_t = r W_hr^T`` (torch.mm). The backward walks the steps in reverse
(``_bwd_cell``: d_o, the cell gradient through tanh, the clip mask and the diagonal
peepholes, d_i, d_f, d_g and dc_{t-1}; a full W_co splits it in two phases around
``dc += d_o W_co``). Without a projection and where the per-step launch is picked,
``_bwd_cell`` starts with its units' ``dh_t = dH_t + dG_{t+1} W_hh`` (tl.dot over 4H) and,
for full peepholes, ``dc_t += dG_{t+1} [W_ci; W_cf; W_cc]`` and (second phase)
``dc_t += d_o W_co``; otherwise one addmm per step each. Every weight gradient is one GEMM
or sum after the loop.
The element-wise math runs in float32 (float64 for float64 tensors) whatever the storage
dtype. On CUDA each loop (forward, backward) is captured once per shape in a CUDA graph and
replayed (``_graphed``): T small launches cost one replay.

Memory layout: the same flat rows as ``python.py``: step ``t`` owns rows
``off[t] .. off[t] + n[t]`` of ``xw (N, 4H)``, ``out (N, P)``, ``gates (N, 4H)`` (activated
``[i, f, g, o]``) and ``cs (N, H)``; packed input runs step ``t`` on its first ``n[t]``
sequences only. Element-wise programs handle ``BLOCK_B`` rows x ``BLOCK_H`` units; the
in-kernel GEMMs read ``W_hh^T (P, 4H)`` (per step) or ``wT (4, HB, HB)`` (one launch),
zero-padded to a power of two, both contiguous.

Tested without a GPU through Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors);
measured on an H100 (benchmarks/README.md).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ... import tuning
from .python import carried, previous_states, steps, weight_grads

__all__ = ["backward", "forward"]

BLOCK_B = 16
BLOCK_H = 32
BK = 32  # K block of the forward step's in-kernel GEMM (64 spilled registers at tf32x3, sm_90)
BK_BWD = 128  # K block of the backward prologue's GEMM over 4H (4 serial blocks at H = 128, not 16)
FUSED_STEP_MAX_ROWS = 64  # H100, TF32 off: S3 (16 rows) 9.4 vs 45.4 ms a training step through cuBLAS; S2 (64) within 10%
PERSISTENT_MAX_H = 64  # the one-launch kernel holds 4 (H x H) weight tiles per step: 64 KiB at H = 64


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, t, -t)


@triton.jit
def _mm(acc, a_ptr, lda, rows, n_a, w_ptr, sk, su, cols, cm, K, CT: tl.constexpr, PRECISION: tl.constexpr,
        BK: tl.constexpr):
    """``acc + A[rows, :K] @ W[:K, cols]`` as tl.dots over K blocks of BK: A row-major with row
    stride ``lda`` (rows >= ``n_a`` read as 0), ``W[k, u]`` at ``w_ptr + k sk + u su``."""
    kk = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        ka = k0 + kk
        km = ka < K
        a = tl.load(a_ptr + rows[:, None] * lda + ka[None, :], mask=(rows < n_a)[:, None] & km[None, :], other=0.0)
        w = tl.load(w_ptr + ka[:, None] * sk + cols[None, :] * su, mask=km[:, None] & cm[None, :], other=0.0)
        acc += tl.dot(a.to(CT), w.to(CT), input_precision=PRECISION)
    return acc


@triton.jit
def _cell(z_i, z_f, z_g, z_o, cp, rows, cols, m, cm, bias_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, gates_ptr, c_ptr,
          r_ptr, H, clip, HAS_BIAS: tl.constexpr, DIAG: tl.constexpr, HAS_CC: tl.constexpr, HAS_CO: tl.constexpr,
          SPLIT_O: tl.constexpr, CLIP: tl.constexpr, CT: tl.constexpr):
    """The cell from the pre-activations z (BLOCK_B, BLOCK_H) without bias and diagonal
    peepholes: adds them, activates, stores gates [i, f, g, o], c_t and r = o tanh(c_t)
    (SPLIT_O: stores z_o for _fwd_out, which needs c_t W_co^T first)."""
    g4 = rows[:, None] * 4 * H + cols[None, :]
    h1 = rows[:, None] * H + cols[None, :]
    if HAS_BIAS:
        z_i += tl.load(bias_ptr + cols, mask=cm, other=0.0).to(CT)[None, :]
        z_f += tl.load(bias_ptr + H + cols, mask=cm, other=0.0).to(CT)[None, :]
        z_g += tl.load(bias_ptr + 2 * H + cols, mask=cm, other=0.0).to(CT)[None, :]
        z_o += tl.load(bias_ptr + 3 * H + cols, mask=cm, other=0.0).to(CT)[None, :]
    if DIAG:
        z_i += tl.load(wci_ptr + cols, mask=cm, other=0.0).to(CT)[None, :] * cp
        z_f += tl.load(wcf_ptr + cols, mask=cm, other=0.0).to(CT)[None, :] * cp
        if HAS_CC:
            z_g += tl.load(wcc_ptr + cols, mask=cm, other=0.0).to(CT)[None, :] * cp
    i = _sigmoid(z_i)
    f = _sigmoid(z_f)
    g = _tanh(z_g)
    c = f * cp + i * g
    if CLIP:
        c = tl.minimum(tl.maximum(c, -clip), clip)
    tl.store(gates_ptr + g4, i.to(gates_ptr.dtype.element_ty), mask=m)
    tl.store(gates_ptr + g4 + H, f.to(gates_ptr.dtype.element_ty), mask=m)
    tl.store(gates_ptr + g4 + 2 * H, g.to(gates_ptr.dtype.element_ty), mask=m)
    tl.store(c_ptr + h1, c.to(c_ptr.dtype.element_ty), mask=m)
    if SPLIT_O:
        tl.store(gates_ptr + g4 + 3 * H, z_o.to(gates_ptr.dtype.element_ty), mask=m)  # finished by _fwd_out
    else:
        if HAS_CO:  # the output gate sees the new cell state
            z_o += tl.load(wco_ptr + cols, mask=cm, other=0.0).to(CT)[None, :] * c
        o = _sigmoid(z_o)
        tl.store(gates_ptr + g4 + 3 * H, o.to(gates_ptr.dtype.element_ty), mask=m)
        tl.store(r_ptr + h1, (o * _tanh(c)).to(r_ptr.dtype.element_ty), mask=m)


@triton.jit
def _fwd_cell(z_ptr, bias_ptr, cprev_ptr, pc_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, gates_ptr, c_ptr, r_ptr,
              n, H, kc, clip,
              HAS_BIAS: tl.constexpr, DIAG: tl.constexpr, HAS_CC: tl.constexpr, HAS_CO: tl.constexpr,
              HAS_PC: tl.constexpr, SPLIT_O: tl.constexpr, CLIP: tl.constexpr, CT: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The cell after the step's GEMM: z = xw_t + h_{t-1} W_hh^T (n, 4H) from cuBLAS, and for
    full peepholes pc = c_{t-1} [W_ci; W_cf; (W_cc)]^T (n, kc H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cm = cols < H
    m = (rows < n)[:, None] & cm[None, :]
    g4 = rows[:, None] * 4 * H + cols[None, :]
    z_i = tl.load(z_ptr + g4, mask=m, other=0.0).to(CT)
    z_f = tl.load(z_ptr + g4 + H, mask=m, other=0.0).to(CT)
    z_g = tl.load(z_ptr + g4 + 2 * H, mask=m, other=0.0).to(CT)
    z_o = tl.load(z_ptr + g4 + 3 * H, mask=m, other=0.0).to(CT)
    if HAS_PC:
        pk = rows[:, None] * kc * H + cols[None, :]
        z_i += tl.load(pc_ptr + pk, mask=m, other=0.0).to(CT)
        z_f += tl.load(pc_ptr + pk + H, mask=m, other=0.0).to(CT)
        if HAS_CC:
            z_g += tl.load(pc_ptr + pk + 2 * H, mask=m, other=0.0).to(CT)
    cp = tl.load(cprev_ptr + rows[:, None] * H + cols[None, :], mask=m, other=0.0).to(CT)
    _cell(z_i, z_f, z_g, z_o, cp, rows, cols, m, cm, bias_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, gates_ptr, c_ptr,
          r_ptr, H, clip, HAS_BIAS, DIAG, HAS_CC, HAS_CO, SPLIT_O, CLIP, CT)


@triton.jit
def _step_fwd(xw_ptr, h_ptr, wt_ptr, cprev_ptr, wct_ptr, bias_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, gates_ptr,
              c_ptr, r_ptr, n, H, P, kc, clip,
              HAS_BIAS: tl.constexpr, DIAG: tl.constexpr, HAS_CC: tl.constexpr, HAS_CO: tl.constexpr,
              HAS_PC: tl.constexpr, SPLIT_O: tl.constexpr, CLIP: tl.constexpr, CT: tl.constexpr,
              PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BK: tl.constexpr):
    """One step in one launch: the program's four gate columns of z = xw_t + h_{t-1} W_hh^T
    (+ c_{t-1} [W_ci; W_cf; (W_cc)]^T) as tl.dots over K blocks of BK, then the cell.
    ``wt`` = W_hh^T (P, 4H) and ``wct`` = [W_ci; W_cf; (W_cc)]^T (H, kc H), contiguous."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rm = rows < n
    cm = cols < H
    m = rm[:, None] & cm[None, :]
    g4 = rows[:, None] * 4 * H + cols[None, :]
    z_i = tl.load(xw_ptr + g4, mask=m, other=0.0).to(CT)
    z_f = tl.load(xw_ptr + g4 + H, mask=m, other=0.0).to(CT)
    z_g = tl.load(xw_ptr + g4 + 2 * H, mask=m, other=0.0).to(CT)
    z_o = tl.load(xw_ptr + g4 + 3 * H, mask=m, other=0.0).to(CT)
    kk = tl.arange(0, BK)
    for k0 in range(0, P, BK):
        ka = k0 + kk
        km = ka < P
        a = tl.load(h_ptr + rows[:, None] * P + ka[None, :], mask=rm[:, None] & km[None, :], other=0.0).to(CT)
        wp = wt_ptr + ka[:, None] * (4 * H) + cols[None, :]  # (BK, BLOCK_H) of W_hh^T
        wm = km[:, None] & cm[None, :]
        z_i += tl.dot(a, tl.load(wp, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
        z_f += tl.dot(a, tl.load(wp + H, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
        z_g += tl.dot(a, tl.load(wp + 2 * H, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
        z_o += tl.dot(a, tl.load(wp + 3 * H, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
    if HAS_PC:  # full peepholes: the c_{t-1} columns of the same dots
        for k0 in range(0, H, BK):
            ka = k0 + kk
            km = ka < H
            a = tl.load(cprev_ptr + rows[:, None] * H + ka[None, :], mask=rm[:, None] & km[None, :], other=0.0)
            a = a.to(CT)
            wp = wct_ptr + ka[:, None] * (kc * H) + cols[None, :]
            wm = km[:, None] & cm[None, :]
            z_i += tl.dot(a, tl.load(wp, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
            z_f += tl.dot(a, tl.load(wp + H, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
            if HAS_CC:
                z_g += tl.dot(a, tl.load(wp + 2 * H, mask=wm, other=0.0).to(CT), input_precision=PRECISION)
    cp = tl.load(cprev_ptr + rows[:, None] * H + cols[None, :], mask=m, other=0.0).to(CT)
    _cell(z_i, z_f, z_g, z_o, cp, rows, cols, m, cm, bias_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, gates_ptr, c_ptr,
          r_ptr, H, clip, HAS_BIAS, DIAG, HAS_CC, HAS_CO, SPLIT_O, CLIP, CT)


@triton.jit
def _fwd_out(gates_ptr, po_ptr, c_ptr, r_ptr, wco_ptr, n, H, GEMM: tl.constexpr, CT: tl.constexpr,
             PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BK: tl.constexpr):
    """o = σ(z_o + po), po = c_t W_co^T; r = o tanh(c_t). GEMM: the program's columns of po
    as tl.dots over c_t (all H units, written by the step's cell kernel) and ``wco`` = W_co
    (H, H), read transposed; otherwise ``po`` (n, H) from cuBLAS."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cm = cols < H
    m = (rows < n)[:, None] & cm[None, :]
    go = rows[:, None] * 4 * H + 3 * H + cols[None, :]
    h1 = rows[:, None] * H + cols[None, :]
    c = tl.load(c_ptr + h1, mask=m, other=0.0).to(CT)
    z_o = tl.load(gates_ptr + go, mask=m, other=0.0).to(CT)
    if GEMM:
        z_o = _mm(z_o, c_ptr, H, rows, n, wco_ptr, 1, H, cols, cm, H, CT, PRECISION, BK)  # W_co^T[k, u] = W_co[u, k]
    else:
        z_o += tl.load(po_ptr + h1, mask=m, other=0.0).to(CT)
    o = _sigmoid(z_o)
    tl.store(gates_ptr + go, o.to(gates_ptr.dtype.element_ty), mask=m)
    tl.store(r_ptr + h1, (o * _tanh(c)).to(r_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_cell(gates_ptr, c_ptr, cprev_ptr, dr_ptr, dc_ptr, dgates_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr,
              dgn_ptr, w_ptr, wc_ptr, n, n_gemm, H, KC, clip,
              DIAG: tl.constexpr, HAS_CC: tl.constexpr, HAS_CO: tl.constexpr, PHASE: tl.constexpr,
              CLIP: tl.constexpr, CT: tl.constexpr, GEMM: tl.constexpr, PC_GEMM: tl.constexpr,
              CO_GEMM: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BK: tl.constexpr):
    """dc (n, H): dL/dc_t in, dL/dc_{t-1} out (without full-peephole terms). PHASE 0: the
    whole step; 1: d_o and dc = dL/dc_t without the W_co term; 2: the rest. GEMM (PHASE 0
    or 1, no projection): dr = dH_t + dG_{t+1} W_hh for the program's units, the dot over the
    4H columns of the step processed before (``dgn`` (n_gemm, 4H), ``w`` = W_hh (4H, H))
    in the same launch. Full peepholes, in-kernel (the per-step launch): PC_GEMM (PHASE 0
    or 1) first adds ``dG_{t+1}[:, :KC] [W_ci; W_cf; (W_cc)]`` (``wc`` (KC, H)), the
    gradient through step t+1's peepholes on c_t, to dc; CO_GEMM (PHASE 2) adds
    ``d_o W_co`` (``wco`` = W_co (H, H); d_o of every unit, stored by PHASE 1)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    cm = cols < H
    m = (rows < n)[:, None] & cm[None, :]
    g4 = rows[:, None] * 4 * H + cols[None, :]
    h1 = rows[:, None] * H + cols[None, :]
    c = tl.load(c_ptr + h1, mask=m, other=0.0).to(CT)
    dc = tl.load(dc_ptr + h1, mask=m, other=0.0).to(CT)
    if PC_GEMM:
        dc = _mm(dc, dgn_ptr, 4 * H, rows, n_gemm, wc_ptr, H, 1, cols, cm, KC, CT, PRECISION, BK)
    if CO_GEMM:
        dc = _mm(dc, dgates_ptr + 3 * H, 4 * H, rows, n, wco_ptr, H, 1, cols, cm, H, CT, PRECISION, BK)
    if PHASE != 2:
        o = tl.load(gates_ptr + g4 + 3 * H, mask=m, other=0.0).to(CT)
        tc = _tanh(c)
        dr = tl.load(dr_ptr + h1, mask=m, other=0.0).to(CT)
        if GEMM:
            dr = _mm(dr, dgn_ptr, 4 * H, rows, n_gemm, w_ptr, H, 1, cols, cm, 4 * H, CT, PRECISION, BK)
        d_o = dr * tc * o * (1.0 - o)
        dc += dr * o * (1.0 - tc * tc)
        if HAS_CO:
            dc += d_o * tl.load(wco_ptr + cols, mask=cm, other=0.0).to(CT)[None, :]
        tl.store(dgates_ptr + g4 + 3 * H, d_o.to(dgates_ptr.dtype.element_ty), mask=m)
    if PHASE == 1:
        tl.store(dc_ptr + h1, dc.to(dc_ptr.dtype.element_ty), mask=m)
    else:
        if CLIP:  # no gradient through a clipped cell (saved c at the bound)
            dc = tl.where(tl.abs(c) < clip, dc, 0.0)
        i = tl.load(gates_ptr + g4, mask=m, other=0.0).to(CT)
        f = tl.load(gates_ptr + g4 + H, mask=m, other=0.0).to(CT)
        g = tl.load(gates_ptr + g4 + 2 * H, mask=m, other=0.0).to(CT)
        cp = tl.load(cprev_ptr + h1, mask=m, other=0.0).to(CT)
        d_i = dc * g * i * (1.0 - i)
        d_f = dc * cp * f * (1.0 - f)
        d_g = dc * i * (1.0 - g * g)
        dcp = dc * f
        if DIAG:
            dcp += d_i * tl.load(wci_ptr + cols, mask=cm, other=0.0).to(CT)[None, :]
            dcp += d_f * tl.load(wcf_ptr + cols, mask=cm, other=0.0).to(CT)[None, :]
            if HAS_CC:
                dcp += d_g * tl.load(wcc_ptr + cols, mask=cm, other=0.0).to(CT)[None, :]
        tl.store(dgates_ptr + g4, d_i.to(dgates_ptr.dtype.element_ty), mask=m)
        tl.store(dgates_ptr + g4 + H, d_f.to(dgates_ptr.dtype.element_ty), mask=m)
        tl.store(dgates_ptr + g4 + 2 * H, d_g.to(dgates_ptr.dtype.element_ty), mask=m)
        tl.store(dc_ptr + h1, dcp.to(dc_ptr.dtype.element_ty), mask=m)


@triton.jit
def _row(ptr, u, um, ON: tl.constexpr, CT: tl.constexpr, HB: tl.constexpr):
    """A (1, HB) row of ``ptr[u]``: zeros where ``um`` is false or when not ``ON``."""
    v = tl.full([1, HB], 0.0, CT)
    if ON:
        v += tl.load(ptr + u, mask=um, other=0.0).to(CT)[None, :]
    return v


@triton.jit
def _persist_fwd(xw_ptr, h0_ptr, c0_ptr, wt_ptr, wct_ptr, bias_ptr, wci_ptr, wcf_ptr, wcc_ptr, wco_ptr, out_ptr,
                 hn_ptr, cn_ptr, gates_ptr, cs_ptr, T, B, H, clip,
                 HAS_BIAS: tl.constexpr, DIAG: tl.constexpr, FULL: tl.constexpr, HAS_CC: tl.constexpr,
                 HAS_CO: tl.constexpr, CLIP: tl.constexpr, SAVE: tl.constexpr, REV: tl.constexpr, CT: tl.constexpr,
                 PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, HB: tl.constexpr):
    """The whole time loop in one launch (small H): program p owns batch rows p*BLOCK_B..,
    all H units, and keeps h and c in registers from step to step; z_k = xw_t + h W_k^T
    is a (BLOCK_B, HB) x (HB, HB) tl.dot per gate k. The caller pads H to HB (a power of
    two) and transposes W_hh into ``wT`` (4, HB, HB): unmasked, contiguous tile loads (a
    masked, strided 64 x 64 load held 64-bit addresses per element and spilled registers),
    loaded once before the loop (the compiler keeps them in shared memory: 4 x 16 KiB at
    HB = 64; sm_90 ptxas: no spills at 8 warps, ieee or tf32). FULL (the article's
    full-matrix peepholes): the program holds all of c_t too, so ``c_{t-1} [W_ci; W_cf;
    W_cc]^T`` and ``c_t W_co^T`` are four more dots a step, their tiles ``wcT`` (4, HB, HB)
    = [W_ci^T, W_cf^T, W_cc^T, W_co^T] (zero where absent) read from cache each step."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    u = tl.arange(0, HB)
    um = u < H
    m = (rows < B)[:, None] & um[None, :]
    wt = u[:, None] * HB + u[None, :]  # into wT (4, HB, HB): wT[k, v, u] = W_hh[k H + u, v], zero-padded
    h1 = rows[:, None] * H + u[None, :]
    h = tl.load(h0_ptr + h1, mask=m, other=0.0).to(CT)  # padded units stay 0 (their z are 0, c 0)
    c = tl.load(c0_ptr + h1, mask=m, other=0.0).to(CT)
    b_i = _row(bias_ptr, u, um, HAS_BIAS, CT, HB)
    b_f = _row(bias_ptr + H, u, um, HAS_BIAS, CT, HB)
    b_g = _row(bias_ptr + 2 * H, u, um, HAS_BIAS, CT, HB)
    b_o = _row(bias_ptr + 3 * H, u, um, HAS_BIAS, CT, HB)
    p_i = _row(wci_ptr, u, um, DIAG, CT, HB)
    p_f = _row(wcf_ptr, u, um, DIAG, CT, HB)
    p_g = _row(wcc_ptr, u, um, DIAG and HAS_CC, CT, HB)
    p_o = _row(wco_ptr, u, um, DIAG and HAS_CO, CT, HB)
    w_0 = tl.load(wt_ptr + wt).to(CT)
    w_1 = tl.load(wt_ptr + HB * HB + wt).to(CT)
    w_2 = tl.load(wt_ptr + 2 * HB * HB + wt).to(CT)
    w_3 = tl.load(wt_ptr + 3 * HB * HB + wt).to(CT)
    for s in range(T):
        t = s + REV * (T - 1 - 2 * s)  # REV: 0 forward, 1 reverse
        g4 = (t * B + rows)[:, None] * (4 * H) + u[None, :]  # (BLOCK_B, HB) into xw / gates (N, 4H)
        ht = (t * B + rows)[:, None] * H + u[None, :]  # into out / cs (N, H)
        z_i = tl.load(xw_ptr + g4, mask=m, other=0.0).to(CT) + tl.dot(h, w_0, input_precision=PRECISION)
        z_f = tl.load(xw_ptr + g4 + H, mask=m, other=0.0).to(CT) + tl.dot(h, w_1, input_precision=PRECISION)
        z_g = tl.load(xw_ptr + g4 + 2 * H, mask=m, other=0.0).to(CT) + tl.dot(h, w_2, input_precision=PRECISION)
        z_o = tl.load(xw_ptr + g4 + 3 * H, mask=m, other=0.0).to(CT) + tl.dot(h, w_3, input_precision=PRECISION)
        if FULL:  # c_{t-1} [W_ci; W_cf; W_cc]^T
            z_i += tl.dot(c, tl.load(wct_ptr + wt).to(CT), input_precision=PRECISION)
            z_f += tl.dot(c, tl.load(wct_ptr + HB * HB + wt).to(CT), input_precision=PRECISION)
            if HAS_CC:
                z_g += tl.dot(c, tl.load(wct_ptr + 2 * HB * HB + wt).to(CT), input_precision=PRECISION)
        i = _sigmoid(z_i + b_i + p_i * c)
        f = _sigmoid(z_f + b_f + p_f * c)
        g = _tanh(z_g + b_g + p_g * c)
        c = f * c + i * g
        if CLIP:
            c = tl.minimum(tl.maximum(c, -clip), clip)
        if FULL and HAS_CO:  # c_t W_co^T: all of c_t is in this program
            z_o += tl.dot(c, tl.load(wct_ptr + 3 * HB * HB + wt).to(CT), input_precision=PRECISION)
        o = _sigmoid(z_o + b_o + p_o * c)
        h = o * _tanh(c)
        tl.store(out_ptr + ht, h.to(out_ptr.dtype.element_ty), mask=m)
        if SAVE:
            tl.store(gates_ptr + g4, i.to(gates_ptr.dtype.element_ty), mask=m)
            tl.store(gates_ptr + g4 + H, f.to(gates_ptr.dtype.element_ty), mask=m)
            tl.store(gates_ptr + g4 + 2 * H, g.to(gates_ptr.dtype.element_ty), mask=m)
            tl.store(gates_ptr + g4 + 3 * H, o.to(gates_ptr.dtype.element_ty), mask=m)
            tl.store(cs_ptr + ht, c.to(cs_ptr.dtype.element_ty), mask=m)
    tl.store(hn_ptr + h1, h.to(hn_ptr.dtype.element_ty), mask=m)
    tl.store(cn_ptr + h1, c.to(cn_ptr.dtype.element_ty), mask=m)


def _compute(t: Tensor):
    """The element-wise math's dtype: float64 for float64 tensors, else float32."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _grid(n: int, H: int) -> tuple[int, int]:
    return (triton.cdiv(n, BLOCK_B), triton.cdiv(H, BLOCK_H))


def _full_wc(w_ci, w_cf, w_cc, H, like):
    parts = [w if w is not None else like.new_zeros(H, H) for w in (w_ci, w_cf)]
    if w_cc is not None:
        parts.append(w_cc)
    return torch.cat(parts, 0)  # (kc H, H)


def _persistent_ok(xw: Tensor, w_hr: Optional[Tensor], full: bool, uniform: bool, H: int) -> bool:
    """Whether the one-launch kernel runs this layer: ``PEEPHOLE_LSTM_TRITON_PERSISTENT`` ``0``
    never, otherwise (``auto``) for H <= ``PERSISTENT_MAX_H`` without a projection, on
    unpacked (or equal-length) float32/16-bit input."""
    if tuning.get("triton_persistent") == "0":
        return False
    return w_hr is None and uniform and xw.dtype != torch.float64 and H <= PERSISTENT_MAX_H


def _fused_step(x: Tensor, rows: int, H: int) -> bool:
    """Whether a step's GEMM runs inside its cell kernel (tl.dot) instead of cuBLAS:
    ``PEEPHOLE_LSTM_TRITON_STEP`` ``fused`` or ``gemm`` forces it; ``auto``: up to
    FUSED_STEP_MAX_ROWS rows per step."""
    mode = tuning.get("triton_step")
    if mode in ("fused", "gemm"):
        return mode == "fused"
    return rows <= FUSED_STEP_MAX_ROWS


def _step_block_h(rows: int, H: int) -> int:
    """Units per program of the fused step: 32, or 16 when that leaves under 64 programs."""
    return 32 if triton.cdiv(rows, BLOCK_B) * triton.cdiv(H, 32) >= 64 else 16


def _dot_precision(t: Tensor) -> str:
    """tl.dot's float32 mode: ``tf32`` where PyTorch lets cuBLAS use TF32 (``torch.backends.
    cuda.matmul.allow_tf32``, as for the GEMMs of the alternating design), otherwise exact
    float32 (``ieee``, FMA; on an H100 faster than ``tf32x3``'s three tensor-core products at
    S3: 7.75 vs 9.37 ms a training step, and even at S1). ``PEEPHOLE_LSTM_TRITON_DOT``
    overrides it."""
    if not t.is_cuda:
        return "ieee"
    return tuning.get("triton_dot") or ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee")


def _forward_eager(xw: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, bias: Optional[Tensor], w_hr: Optional[Tensor],
                   w_ci: Optional[Tensor], w_cf: Optional[Tensor], w_co: Optional[Tensor], w_cc: Optional[Tensor],
                   batch_sizes: Optional[Tensor], reverse: bool, save: bool, cell_clip: float = 0.0):
    G = xw.size(-1)
    H = G // 4
    B, P = h0.shape
    T = xw.size(0) if batch_sizes is None else batch_sizes.size(0)
    n, off = steps(T, B, batch_sizes)
    uniform = all(v == B for v in n)  # every step on all B rows: states are read where they were written
    x = xw.reshape(-1, G).contiguous()  # (N, 4H)
    N = x.size(0)
    full = any(w is not None and w.dim() == 2 for w in (w_ci, w_cf, w_co, w_cc))
    diag = not full and w_ci is not None
    dummy = x.new_empty(1)
    if T > 0 and _persistent_ok(x, w_hr, full, uniform, H):
        out = x.new_empty(N, P)
        h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
        gates = x.new_empty(N if save else 0, G)
        cs = x.new_empty(N if save else 0, H)
        HB = max(16, triton.next_power_of_2(H))
        w_t = w_hh.new_zeros(4, HB, HB)
        w_t[:, :H, :H] = w_hh.view(4, H, H).transpose(1, 2)  # (4, HB, HB): [k, v, u] = W_hh[k H + u, v]
        wc_t = dummy
        if full:  # (4, HB, HB): [k, v, u] = [W_ci, W_cf, W_cc, W_co][k][u, v], zero where absent
            wc_t = w_hh.new_zeros(4, HB, HB)
            for k, w in enumerate((w_ci, w_cf, w_cc, w_co)):
                if w is not None:
                    wc_t[k, :H, :H] = w.t()
        _persist_fwd[(triton.cdiv(B, BLOCK_B),)](
            x, h0, c0, w_t, wc_t, bias if bias is not None else dummy, w_ci if diag else dummy,
            w_cf if diag else dummy, w_cc if (diag and w_cc is not None) else dummy,
            w_co if diag and w_co is not None else dummy, out, h_n, c_n, gates if save else dummy,
            cs if save else dummy, T, B, H, float(cell_clip),
            HAS_BIAS=bias is not None, DIAG=diag, FULL=full, HAS_CC=w_cc is not None, HAS_CO=w_co is not None,
            CLIP=cell_clip > 0,
            SAVE=save, REV=int(reverse), CT=_compute(x), PRECISION=_dot_precision(x), BLOCK_B=BLOCK_B, HB=HB,
            num_warps=8 if HB >= 64 else 4,  # 64: 4 warps spilled registers (ptxas, sm_90)
        )
        if not save:
            gates, cs = x.new_empty(0), x.new_empty(0)
        elif batch_sizes is None:
            gates, cs = gates.view(T, B, G), cs.view(T, B, H)
        return (out.view(T, B, P) if batch_sizes is None else out), h_n, c_n, gates, cs
    gates = x.new_empty(N if save else B, G)
    cs = x.new_empty(N if save else 2 * B, H)
    out = x.new_empty(N, P)
    r_buf = x.new_empty(B, H) if w_hr is not None else None
    wc = _full_wc(w_ci, w_cf, w_cc, H, x) if full else None
    kc = wc.size(0) // H if wc is not None else 0
    split_o = full and w_co is not None
    w_hh_t = w_hh.t()
    fuse = _fused_step(x, B, H)  # one launch per step (GEMM in the cell kernel)
    prec = _dot_precision(x)
    wt = w_hh_t.contiguous() if fuse else None  # (P, 4H)
    wct = wc.t().contiguous() if fuse and wc is not None else None  # (H, kc H)
    # Equal-length steps read h_{t-1} and c_{t-1} where step t-1 wrote them (no copies);
    # packed steps keep every sequence's state in (B, ·) buffers, their first n_t rows updated.
    h_state, c_state = (h0, c0) if uniform else (h0.clone(), c0.clone())
    weights = (bias if bias is not None else dummy, w_ci if diag else dummy, w_cf if diag else dummy,
               w_cc if (diag and w_cc is not None) else dummy, w_co if (w_co is not None and not full) else dummy)
    flags = dict(HAS_BIAS=bias is not None, DIAG=diag, HAS_CC=w_cc is not None, HAS_CO=w_co is not None and not full,
                 HAS_PC=wc is not None, SPLIT_O=split_o, CLIP=cell_clip > 0, CT=_compute(x), BLOCK_B=BLOCK_B)
    for s in range(T):
        t = T - 1 - s if reverse else s
        rows, r0 = n[t], off[t]
        hp, cp = h_state[:rows], c_state[:rows]
        g_t = gates[r0 : r0 + rows] if save else gates[:rows]
        c_t = cs[r0 : r0 + rows] if save else cs[(s % 2) * B : (s % 2) * B + rows]
        r = r_buf[:rows] if r_buf is not None else out[r0 : r0 + rows]
        if fuse:
            bh = _step_block_h(rows, H)
            _step_fwd[(triton.cdiv(rows, BLOCK_B), triton.cdiv(H, bh))](
                x[r0 : r0 + rows], hp, wt, cp, wct if wct is not None else dummy, *weights, g_t, c_t, r, rows, H, P,
                kc, float(cell_clip), PRECISION=prec, BLOCK_H=bh, BK=BK, **flags,
            )
        else:
            z = torch.addmm(x[r0 : r0 + rows], hp, w_hh_t)  # (n, 4H)
            pc = cp @ wc.t() if wc is not None else dummy  # (n, kc H)
            _fwd_cell[_grid(rows, H)](z, weights[0], cp, pc, *weights[1:], g_t, c_t, r, rows, H, kc, float(cell_clip),
                                      BLOCK_H=BLOCK_H, **flags)
        if split_o:  # o needs all of c_t: po = c_t W_co^T in the next launch (tl.dot) or through cuBLAS
            po = dummy if fuse else c_t @ w_co.t()  # (n, H)
            bh = _step_block_h(rows, H) if fuse else BLOCK_H
            _fwd_out[(triton.cdiv(rows, BLOCK_B), triton.cdiv(H, bh))](
                g_t, po, c_t, r, w_co, rows, H, GEMM=fuse, CT=_compute(x), PRECISION=prec, BLOCK_B=BLOCK_B,
                BLOCK_H=bh, BK=BK,
            )
        if w_hr is not None:
            torch.mm(r, w_hr.t(), out=out[r0 : r0 + rows])  # (n, P)
        if uniform:
            h_state, c_state = out[r0 : r0 + rows], c_t
        else:
            h_state[:rows] = out[r0 : r0 + rows]
            c_state[:rows] = c_t
    if uniform:
        h_state, c_state = h_state.clone(), c_state.clone()
    if not save:
        gates, cs = x.new_empty(0), x.new_empty(0)
    if batch_sizes is None:
        out = out.view(T, B, P)
        if save:
            gates, cs = gates.view(T, B, G), cs.view(T, B, H)
    return out, h_state, c_state, gates, cs


def forward(xw: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, bias: Optional[Tensor], w_hr: Optional[Tensor],
            w_ci: Optional[Tensor], w_cf: Optional[Tensor], w_co: Optional[Tensor], w_cc: Optional[Tensor],
            batch_sizes: Optional[Tensor], reverse: bool, save: bool, cell_clip: float = 0.0):
    """Same contract as :func:`peephole_lstm.ops.kernels.python.forward`; on CUDA replayed from
    a CUDA graph (see :func:`_graphed`)."""
    return _graphed(_forward_eager, (xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc),
                    (batch_sizes, reverse, save, cell_clip))


def _backward_eager(grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor, out: Tensor, gates: Tensor, cs: Tensor, h0: Tensor,
             c0: Tensor, w_hh: Tensor, bias: Optional[Tensor], w_hr: Optional[Tensor], w_ci: Optional[Tensor],
             w_cf: Optional[Tensor], w_co: Optional[Tensor], w_cc: Optional[Tensor], batch_sizes: Optional[Tensor],
             reverse: bool, cell_clip: float = 0.0):
    G = gates.size(-1)
    H = G // 4
    B, P = h0.shape
    T = gates.size(0) if batch_sizes is None else batch_sizes.size(0)
    n, off = steps(T, B, batch_sizes)
    g2 = gates.reshape(-1, G).contiguous()
    cs2 = cs.reshape(-1, H).contiguous()
    out2 = out.reshape(-1, P)
    full = any(w is not None and w.dim() == 2 for w in (w_ci, w_cf, w_co, w_cc))
    diag = not full and w_ci is not None
    wc = _full_wc(w_ci, w_cf, w_cc, H, g2) if full else None
    c_prev = previous_states(cs2, c0, n, off, reverse)  # (N, H)
    dgates = torch.empty_like(g2)
    dH = grad_out.reshape(-1, P).clone()
    dc = torch.zeros_like(c0)
    dh0 = torch.zeros_like(h0)
    dummy = g2.new_empty(1)
    # Without a projection, each step's cell kernel forms its own units' dh_t = dH_t +
    # dG_{t+1} W_hh (GEMM prologue) where the fused step is chosen; dH keeps only the
    # output gradients then. Otherwise one addmm per step adds dG_t W_hh into dH_{t-1}.
    # With full peepholes the same kernels take their GEMMs too: dc_t += dG_{t+1} [W_ci; W_cf;
    # W_cc] in the next step's first kernel (PC_GEMM) and dc_t += d_o W_co in the second
    # (CO_GEMM); otherwise two addmm per step.
    fuse = w_hr is None and _fused_step(g2, B, H)
    pc_in = fuse and wc is not None
    co_in = fuse and full and w_co is not None
    KC = wc.size(0) if wc is not None else 0
    prec = _dot_precision(g2)
    dg_next = dummy
    flags = dict(DIAG=diag, HAS_CC=w_cc is not None, HAS_CO=w_co is not None and not full, CLIP=cell_clip > 0,
                 CT=_compute(g2), PRECISION=prec, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, BK=BK_BWD)
    for s in range(T - 1, -1, -1):
        t = T - 1 - s if reverse else s
        t_prev = t + 1 if reverse else t - 1
        t_next = t - 1 if reverse else t + 1
        rows, r0 = n[t], off[t]
        n_enter = carried(n, t, t_next)
        if n_enter < rows:
            dH[r0 + n_enter : r0 + rows] += grad_hn[n_enter:rows]
            dc[n_enter:rows] = grad_cn[n_enter:rows]
        dh_t = dH[r0 : r0 + rows]
        dr = (dh_t @ w_hr).contiguous() if w_hr is not None else dh_t  # (n, H)
        dg_t = dgates[r0 : r0 + rows]
        gemm = fuse and n_enter > 0
        pc_gemm = pc_in and n_enter > 0
        args = (g2[r0 : r0 + rows], cs2[r0 : r0 + rows], c_prev[r0 : r0 + rows], dr, dc, dg_t,
                w_ci if diag else dummy, w_cf if diag else dummy, w_cc if (diag and w_cc is not None) else dummy,
                w_co if w_co is not None else dummy, dg_next if gemm else dummy,
                w_hh if gemm else dummy, wc if pc_gemm else dummy, rows, n_enter, H, KC, float(cell_clip))
        if full and w_co is not None:
            _bwd_cell[_grid(rows, H)](*args, PHASE=1, GEMM=gemm, PC_GEMM=pc_gemm, CO_GEMM=False, **flags)
            if not co_in:
                dc[:rows].addmm_(dg_t[:, 3 * H :], w_co)  # dc += d_o W_co
            _bwd_cell[_grid(rows, H)](*args, PHASE=2, GEMM=False, PC_GEMM=False, CO_GEMM=co_in, **flags)
        else:
            _bwd_cell[_grid(rows, H)](*args, PHASE=0, GEMM=gemm, PC_GEMM=pc_gemm, CO_GEMM=False, **flags)
        n_from = carried(n, t, t_prev)  # dh_{t-1} = dG W_hh: in the next kernel, or one GEMM here
        if wc is not None:  # dc_{t-1} += dG_{i,f,g} [W_ci; W_cf; W_cc]: here for the rows the next kernel lacks
            k = n_from if pc_in else 0
            if rows > k:
                dc[k:rows].addmm_(dg_t[k:, :KC], wc)
        if n_from > 0 and not fuse:
            dH[off[t_prev] : off[t_prev] + n_from].addmm_(dg_t[:n_from], w_hh)
        if rows > n_from:
            torch.mm(dg_t[n_from:], w_hh, out=dh0[n_from:rows])  # (n - n_from, P)
        dg_next = dg_t
    o_all = g2[:, 3 * H :]
    dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co, dw_cc = weight_grads(
        dgates, dH, out2, cs2, c_prev, o_all * torch.tanh(cs2), h0, n, off, reverse, bias, w_hr, w_ci, w_cf, w_co,
        w_cc,
    )
    d_xw = dgates if batch_sizes is not None else dgates.view(T, B, G)
    return d_xw, dh0, dc, dw_hh, d_bias, dw_hr, dw_ci, dw_cf, dw_co, dw_cc


def backward(grad_out: Tensor, grad_hn: Tensor, grad_cn: Tensor, out: Tensor, gates: Tensor, cs: Tensor, h0: Tensor,
             c0: Tensor, w_hh: Tensor, bias: Optional[Tensor], w_hr: Optional[Tensor], w_ci: Optional[Tensor],
             w_cf: Optional[Tensor], w_co: Optional[Tensor], w_cc: Optional[Tensor], batch_sizes: Optional[Tensor],
             reverse: bool, cell_clip: float = 0.0):
    """Same contract as :func:`peephole_lstm.ops.kernels.python.backward`; on CUDA replayed from
    a CUDA graph (see :func:`_graphed`)."""
    return _graphed(_backward_eager, (grad_out, grad_hn, grad_cn, out, gates, cs, h0, c0, w_hh, bias, w_hr, w_ci,
                                      w_cf, w_co, w_cc), (batch_sizes, reverse, cell_clip))


# ------------------------------------------------------------------ CUDA graphs
# A step loop is T x (2-5) small launches; from Python each costs more CPU time than the GPU
# spends on it. On CUDA a loop's launches are captured once per shape in a CUDA graph and
# replayed: every tensor argument (data, states, weights: the combined bias is a new tensor
# each call) is copied into the graph's own input buffers in one foreach copy, and the
# outputs are cloned out of the graph's memory pool. A shape is captured the second time it
# is seen (one-off shapes run eagerly); at most MAX_GRAPHS graphs are kept (least recently
# used dropped). PEEPHOLE_LSTM_CUDA_GRAPHS=0 turns this off; a call made while the caller is
# itself capturing a graph runs eagerly.
MAX_GRAPHS = 16
_GRAPHS: OrderedDict[tuple, tuple] = OrderedDict()
_SEEN: dict[tuple, int] = {}


def release_graphs() -> None:
    """Drop every cached CUDA graph with its buffers (``peephole_lstm.release_buffers``)."""
    _GRAPHS.clear()
    _SEEN.clear()


def _sig(t: Optional[Tensor]):
    return None if t is None else (tuple(t.shape), t.stride(), t.dtype, t.device)


def _use_graphs(x: Tensor) -> bool:
    return x.is_cuda and tuning.get("cuda_graphs") != "0" \
        and not torch.cuda.is_current_stream_capturing()


def _capture(fn: Callable, static_args: tuple, args: tuple, device: torch.device) -> tuple[Callable[[], None], tuple]:
    """``fn(*static_args, *args)`` captured in a CUDA graph after a warm-up on the capture's
    side stream (cuBLAS workspace, Triton's compiles): ``(replay, outputs)``."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn(*static_args, *args)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):  # other threads may use CUDA
        outs = fn(*static_args, *args)
    return graph.replay, outs


def _graphed(fn: Callable, tensors: tuple, args: tuple):
    """``fn(*tensors, *args)`` (tensors: Tensor or None), replayed from a CUDA graph where
    that applies."""
    x = tensors[0]
    if not _use_graphs(x):
        return fn(*tensors, *args)
    bs = args[0]
    # Under torch.inference_mode the buffers are inference tensors, written only there.
    key = (fn.__name__, tuple(_sig(t) for t in tensors), tuple(bs.tolist()) if bs is not None else None, args[1:],
           torch.is_inference_mode_enabled(), torch.backends.cuda.matmul.allow_tf32,
           *(tuning.get(k) for k in ("triton_persistent", "triton_step", "triton_dot")))
    present = [t for t in tensors if t is not None]
    entry = _GRAPHS.get(key)
    if entry is None:
        if len(_SEEN) > 4096:
            _SEEN.clear()
        _SEEN[key] = _SEEN.get(key, 0) + 1
        if _SEEN[key] < 2:
            return fn(*tensors, *args)
        static = [t.clone() for t in present]
        it = iter(static)
        static_args = tuple(next(it) if t is not None else None for t in tensors)
        replay, outs = _capture(fn, static_args, args, x.device)
        entry = _GRAPHS[key] = (replay, static, outs)
        if len(_GRAPHS) > MAX_GRAPHS:
            _GRAPHS.popitem(last=False)
    else:
        _GRAPHS.move_to_end(key)
    replay, static, outs = entry
    torch._foreach_copy_(static, present)
    replay()
    return tuple(o.clone() for o in outs)
