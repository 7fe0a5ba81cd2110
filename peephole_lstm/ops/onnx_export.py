"""How a ``PeepholeLSTM`` appears inside ``torch.onnx.export`` of a whole model.

Both of torch's exporters, with no argument from the user:

* a configuration ONNX's ``LSTM`` operator expresses (diagonal or no peepholes, no
  projection, no candidate peephole) becomes one standard ``LSTM`` node per layer, peepholes
  in its input ``P``, both directions in one node (``direction="bidirectional"``): through
  ``torch.onnx.ops.symbolic_multi_out`` under the dynamo exporter, through an
  ``autograd.Function`` with a ``symbolic`` under the TorchScript exporter;
* any other configuration (``"full"`` peepholes, the candidate peephole, a projection, a cell
  clip, which ONNX's ``LSTM`` lacks: its ``clip`` bounds gate pre-activations) becomes
  a loop over time: an ONNX ``Scan`` from ``torch.scan`` (dynamo), an ONNX ``Loop`` from the
  scripted reference layer (TorchScript).

The sequence length stays dynamic in every case. ONNX's gate order is i, o, f, c where ours
is i, f, g, o; ``P`` is ordered i, o, f; ``B`` is ``[b_ih; b_hh]``.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import Tensor

from .functional import peephole_lstm_cell, peephole_lstm_layer

__all__ = ["exporting", "run"]

TO_ONNX = [0, 3, 1, 2]  # ONNX gate block k is our block TO_ONNX[k]
FROM_ONNX = [0, 2, 3, 1]  # our gate block k is ONNX's block FROM_ONNX[k]


def exporting() -> bool:
    """Inside ``torch.onnx.export`` (either exporter)? Cheap when torch.onnx was never imported."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


def maps_to_lstm_node(m) -> bool:
    return m.proj_size == 0 and m.peephole in ("diagonal", "none") and not m.candidate_peephole and m.cell_clip is None


def reorder_gates(w: Tensor, order: list[int]) -> Tensor:
    """The 4 gate blocks along dim 0 in ``order`` (block k of the result is block ``order[k]``).
    Slices, not chunk: the exporters fold single-output Slices into constants."""
    H = w.size(0) // 4
    return torch.cat([w[k * H : (k + 1) * H] for k in order], 0)


def _gates(w: Tensor) -> Tensor:
    return reorder_gates(w, TO_ONNX)


def _node_tensors(ws: list[list[Optional[Tensor]]], hidden: int):
    """ONNX ``W (D, 4H, I)``, ``R (D, 4H, H)``, ``B (D, 8H)``, ``P (D, 3H)`` or None from the
    slot lists (``_SLOTS`` order) of one layer's directions. Plain torch ops on the weights:
    the exporters fold them into constants."""
    W = torch.stack([_gates(w[0]) for w in ws])
    R = torch.stack([_gates(w[1]) for w in ws])
    if ws[0][2] is not None:
        B = torch.stack([torch.cat([_gates(w[2]), _gates(w[3])]) for w in ws])
    else:
        B = W.new_zeros(len(ws), 8 * hidden)
    P = None
    if ws[0][5] is not None:
        P = torch.stack([torch.cat([w[5], w[7], w[6]]) for w in ws])  # i, o, f
    return W, R, B, P


def _ungates(w: Tensor) -> Tensor:
    return reorder_gates(w, FROM_ONNX)


def _onnx_lstm(x: Tensor, W: Tensor, R: Tensor, B: Tensor, h0: Tensor, c0: Tensor, P: Optional[Tensor]):
    """ONNX's LSTM operator (forward or bidirectional, peepholes P) by the reference layer:
    ``Y (T, D, N, H)``, ``Y_h``, ``Y_c (D, N, H)``."""
    H = R.size(2)
    ys, hs, cs = [], [], []
    for d in range(W.size(0)):
        b = B[d]
        p = [None, None, None] if P is None else [P[d, :H], P[d, 2 * H :], P[d, H : 2 * H]]  # i, f, o
        y, h, c = peephole_lstm_layer(x, h0[d], c0[d], _ungates(W[d]), _ungates(R[d]), _ungates(b[: 4 * H]),
                                      _ungates(b[4 * H :]), None, p[0], p[1], p[2], None, d == 1)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


@torch.library.custom_op("peephole_lstm::onnx_lstm", mutates_args=())
def _onnx_lstm_op(
    x: Tensor, W: Tensor, R: Tensor, B: Tensor, h0: Tensor, c0: Tensor, P: Optional[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX's LSTM operator as an op of its own: what the TorchScript exporter's trace records
    (one node, which :func:`_onnx_lstm_symbolic` writes as ``LSTM``)."""
    return tuple(t.clone() for t in _onnx_lstm(x, W, R, B, h0, c0, P))


def _onnx_lstm_symbolic(g, x, W, R, B, h0, c0, P):
    from torch.onnx import symbolic_helper

    seq_lens = g.op("prim::Constant")
    seq_lens.setType(torch._C.OptionalType.ofTensor())
    inputs = [x, W, R, B, seq_lens, h0, c0] + ([] if symbolic_helper._is_none(P) else [P])
    D = symbolic_helper._get_tensor_dim_size(W, 0)
    H = symbolic_helper._get_tensor_dim_size(R, 2)
    return g.op("LSTM", *inputs, hidden_size_i=H, direction_s="bidirectional" if D == 2 else "forward", outputs=3)


_SYMBOLIC_REGISTERED: list = []


def _register_symbolic() -> None:
    if not _SYMBOLIC_REGISTERED:
        torch.onnx.register_custom_op_symbolic("peephole_lstm::onnx_lstm", _onnx_lstm_symbolic, 14)
        _SYMBOLIC_REGISTERED.append(True)


def _lstm_node(x: Tensor, h0: Tensor, c0: Tensor, ws: list[list[Optional[Tensor]]], hidden: int):
    """One layer as an ONNX LSTM node: ``Y (T, D, N, H)``, ``Y_h``, ``Y_c (D, N, H)``."""
    W, R, B, P = _node_tensors(ws, hidden)
    if torch.jit.is_tracing():  # the TorchScript exporter
        _register_symbolic()
        return _onnx_lstm_op(x, W, R, B, h0, c0, P)
    D = len(ws)
    T, N = x.shape[0], x.shape[1]
    return torch.onnx.ops.symbolic_multi_out(
        "LSTM",
        [x, W, R, B, None, h0, c0, P],
        {"hidden_size": hidden, "direction": "bidirectional" if D == 2 else "forward"},
        dtypes=[x.dtype] * 3,
        shapes=[[T, D, N, hidden], [D, N, hidden], [D, N, hidden]],
    )


def _scan_layer(x: Tensor, h0: Tensor, c0: Tensor, w: list[Optional[Tensor]], reverse: bool,
                cell_clip: Optional[float]):
    """One direction of one layer as ``torch.scan`` over time (an ONNX Scan), the reference cell
    inside; the weights reach the body through its closure (lifted by torch.export)."""
    from torch._higher_order_ops.scan import scan

    w_ih, w_hh, b_ih, b_hh, w_hr, w_ci, w_cf, w_co, w_cc = w
    assert w_ih is not None and w_hh is not None
    gates_x = torch.nn.functional.linear(x, w_ih, b_ih)  # (T, B, 4H)
    if b_hh is not None:
        gates_x = gates_x + b_hh

    def step(carry, g_t):
        h, c = carry
        h, c = peephole_lstm_cell(g_t, h, c, w_hh, w_hr, w_ci, w_cf, w_co, w_cc, cell_clip)
        return (h, c), h.clone()

    (h, c), out = scan(step, (h0, c0), gates_x, reverse=reverse)
    return out, h, c


def run(m, x: Tensor, h0: Tensor, c0: Tensor, weights: list[Optional[Tensor]]):
    """``PeepholeLSTM._run`` inside an ONNX export: time-major ``x (T, B, H_in)``, states
    ``(L*D, B, *)``. Returns ``(output (T, B, D*H_out), h_n, c_n)``."""
    D = 2 if m.bidirectional else 1
    node = maps_to_lstm_node(m)
    h_n, c_n = [], []
    for layer in range(m.num_layers):
        lo, hi = layer * D, (layer + 1) * D
        ws = [weights[idx * 9 : (idx + 1) * 9] for idx in range(lo, hi)]
        if node:
            Y, Y_h, Y_c = _lstm_node(x, h0[lo:hi], c0[lo:hi], ws, m.hidden_size)
            x = Y.transpose(1, 2).flatten(2)  # (T, D, B, H) -> (T, B, D*H)
            h_n.append(Y_h)
            c_n.append(Y_c)
            continue
        outs = []
        for d in range(D):
            idx = lo + d
            if torch.jit.is_tracing():  # the scripted loop becomes an ONNX Loop
                out, h, c = _ts_loop(x, h0[idx], c0[idx], ws[d], d == 1, m.cell_clip)
            else:
                out, h, c = _scan_layer(x, h0[idx], c0[idx], ws[d], d == 1, m.cell_clip)
            outs.append(out)
            # reshape, not unsqueeze: a TorchScript Loop's outputs have no rank the exporter knows
            h_n.append(h.reshape(1, x.size(1), -1))
            c_n.append(c.reshape(1, x.size(1), -1))
        x = outs[0] if D == 1 else torch.cat(outs, -1)  # (T, B, D*H_out)
    return x, torch.cat(h_n, 0), torch.cat(c_n, 0)


def _loop_layer(
    gates_x: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor, w_ci: Tensor, w_cf: Tensor, w_co: Tensor,
    w_cc: Tensor, cell_clip: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The time loop for TorchScript's exporter (scripted, it becomes an ONNX Loop): every weight
    present (an absent projection is the identity, an absent candidate peephole zero), so no
    Optional reaches the exporter (``cell_clip`` 0: none). ``gates_x`` (T, B, 4H) includes both
    biases."""
    h = h0
    c = c0
    outs: list[Tensor] = []
    clip: Optional[float] = None
    if cell_clip > 0:
        clip = cell_clip
    for t in range(gates_x.size(0)):
        h, c = peephole_lstm_cell(gates_x[t], h, c, w_hh, w_hr, w_ci, w_cf, w_co, w_cc, clip)
        outs.append(h)
    return torch.stack(outs, 0), h, c


def _ts_loop(x: Tensor, h0: Tensor, c0: Tensor, w: list[Optional[Tensor]], reverse: bool,
             cell_clip: Optional[float]):
    w_ih, w_hh, b_ih, b_hh, w_hr, w_ci, w_cf, w_co, w_cc = w
    assert w_ih is not None and w_hh is not None
    gates_x = torch.nn.functional.linear(x, w_ih, b_ih)  # (T, B, 4H)
    if b_hh is not None:
        gates_x = gates_x + b_hh
    H = w_hh.size(0) // 4
    zero = x.new_zeros(H)  # absent peepholes: diagonal zeros
    w_ci, w_cf, w_co = (zero if p is None else p for p in (w_ci, w_cf, w_co))
    if w_hr is None:
        w_hr = torch.eye(H, dtype=x.dtype, device=x.device)
    if w_cc is None:
        w_cc = zero if w_ci.dim() == 1 else torch.zeros_like(w_ci)
    if not _SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SCRIPTED.append(torch.jit.script(_loop_layer))
    if reverse:
        gates_x = gates_x.flip(0)
    out, h, c = _SCRIPTED[0](gates_x, h0, c0, w_hh, w_hr, w_ci, w_cf, w_co, w_cc, cell_clip or 0.0)
    return (out.flip(0) if reverse else out), h, c


_SCRIPTED: list = []
