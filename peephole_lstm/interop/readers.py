"""Weights of foreign LSTMs read into ``PeepholeLSTM``'s layout: the ``LSTM`` nodes of an ONNX
model and TensorFlow v1's ``LSTMCell(use_peepholes=True)``.

Each reader returns the ``PeepholeLSTM`` constructor arguments and a state dict; the layer's
classmethods (``PeepholeLSTM.from_onnx``, ``.from_tensorflow``) build the module from them.
Nothing here imports the layer, so the layer can call down into it.

ONNX's ``LSTM`` operator has the peephole input ``P`` and computes exactly our diagonal
peephole cell (https://onnx.ai/onnx/operators/onnx__LSTM.html); its gate order is i, o, f, c
where ours (``nn.LSTM``'s) is i, f, g, o, and ``P`` is ordered i, o, f.
"""

from __future__ import annotations

import io
import os
from typing import Any, Optional

import torch
from torch import Tensor

from ..ops.onnx_export import FROM_ONNX, reorder_gates

__all__ = ["read_onnx", "read_tensorflow"]


def read_onnx(model_or_path: Any, *, batch_first: Optional[bool] = None) -> tuple[dict, dict[str, Tensor]]:
    """The ``PeepholeLSTM`` arguments and state dict (float64 or the file's dtype) that hold
    the weights of the ``LSTM`` node(s) of an ONNX model: what ``PeepholeLSTM.from_onnx``
    builds from (the mapping and what is refused are documented there).
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(model_or_path, (str, os.PathLike)):
        proto = onnx.load(os.fspath(model_or_path))
    elif isinstance(model_or_path, (bytes, bytearray)):
        proto = onnx.load_from_string(bytes(model_or_path))
    elif isinstance(model_or_path, io.IOBase):
        proto = onnx.load(model_or_path)
    else:
        proto = model_or_path
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    for node in proto.graph.node:  # Constant nodes hold weights too in some exporters
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = torch.from_numpy(numpy_helper.to_array(a.t).copy())
    lstms = [n for n in proto.graph.node if n.op_type == "LSTM"]
    if not lstms:
        raise ValueError("the ONNX model has no LSTM node")
    layers = []
    for node in lstms:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
        if acts and [a.lower() for a in acts] not in (["sigmoid", "tanh", "tanh"], ["sigmoid", "tanh", "tanh"] * 2):
            raise ValueError(f"LSTM node {node.name!r}: activations {acts} are not sigmoid/tanh/tanh")
        if "clip" in attrs:
            raise ValueError(f"LSTM node {node.name!r}: cell clip is not supported")
        if attrs.get("input_forget", 0):
            raise ValueError(f"LSTM node {node.name!r}: input_forget=1 (coupled gates) is not supported")

        def get(k: int, what: str, node=node) -> Optional[Tensor]:
            if len(node.input) <= k or not node.input[k]:
                return None
            if node.input[k] not in inits:
                raise ValueError(f"LSTM node {node.name!r}: {what} ({node.input[k]!r}) is not a constant initializer")
            return inits[node.input[k]]

        W, R, B, P = get(1, "W"), get(2, "R"), get(3, "B"), get(7, "P")
        layers.append((attrs, W, R, B, P))
    attrs0, W0, _, _, P0 = layers[0]
    H = int(attrs0["hidden_size"])
    D = W0.shape[0]
    if batch_first is None:
        props = {p.key: p.value for p in proto.metadata_props}
        batch_first = bool(int(props.get("peephole_lstm.batch_first", attrs0.get("layout", 0))))
    kwargs = dict(
        input_size=int(W0.shape[2]), hidden_size=H, num_layers=len(layers),
        bias=any(b is not None for _, _, _, b, _ in layers), batch_first=batch_first, bidirectional=D == 2,
        peephole="diagonal" if P0 is not None else "none",
    )
    sd = {}
    for k, (attrs, W, R, B, P) in enumerate(layers):
        direction = attrs.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if (direction == "bidirectional") != (D == 2) or direction == "reverse" or int(attrs["hidden_size"]) != H:
            raise ValueError(f"LSTM layer {k}: direction/hidden_size differ from the first layer's or are 'reverse'")
        for d in range(D):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            sd["weight_ih" + sfx] = reorder_gates(W[d], FROM_ONNX)
            sd["weight_hh" + sfx] = reorder_gates(R[d], FROM_ONNX)
            if kwargs["bias"]:
                b = B[d] if B is not None else torch.zeros(8 * H)
                sd["bias_ih" + sfx] = reorder_gates(b[: 4 * H], FROM_ONNX)
                sd["bias_hh" + sfx] = reorder_gates(b[4 * H :], FROM_ONNX)
            if kwargs["peephole"] == "diagonal":
                p = P[d] if P is not None else torch.zeros(3 * H)
                sd["weight_ci" + sfx], sd["weight_co" + sfx], sd["weight_cf" + sfx] = p[:H], p[H : 2 * H], p[2 * H :]
    return kwargs, sd


def read_tensorflow(
    kernel,
    bias,
    w_i_diag,
    w_f_diag,
    w_o_diag,
    forget_bias: float = 1.0,
    cell_clip: Optional[float] = None,
    *,
    batch_first: bool = False,
) -> tuple[dict, dict[str, Tensor]]:
    """The arguments and float64 state dict of a one-layer ``PeepholeLSTM`` equal to TensorFlow v1
    ``LSTMCell(use_peepholes=True)``: what ``PeepholeLSTM.from_tensorflow`` builds from (the
    mapping is documented there): TF's gate blocks i, j, f, o reordered to i, f, g, o and
    ``forget_bias`` folded into the forget gate's bias.
    """
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    kernel, bias = as_t(kernel), as_t(bias)
    if kernel.dim() != 2 or kernel.shape[1] % 4 or bias.shape != (kernel.shape[1],):
        raise ValueError(f"kernel must be (I + H, 4H) and bias (4H,), got {tuple(kernel.shape)} and {tuple(bias.shape)}")
    H = kernel.shape[1] // 4
    I = kernel.shape[0] - H
    if I <= 0:
        raise ValueError(f"kernel has {kernel.shape[0]} rows, not more than hidden size {H}")
    diags = [as_t(w) for w in (w_i_diag, w_f_diag, w_o_diag)]
    if any(w.shape != (H,) for w in diags):
        raise ValueError(f"w_i_diag, w_f_diag, w_o_diag must have shape ({H},)")
    order = [0, 2, 1, 3]  # ours (i, f, g, o) from TF's (i, j, f, o)
    b = bias.clone()
    b[2 * H : 3 * H] += forget_bias  # TF's f block
    kwargs = dict(input_size=I, hidden_size=H, batch_first=batch_first, cell_clip=cell_clip)
    sd = {
        "weight_ih_l0": reorder_gates(kernel[:I].T, order),
        "weight_hh_l0": reorder_gates(kernel[I:].T, order),
        "bias_ih_l0": reorder_gates(b, order),
        "bias_hh_l0": torch.zeros(4 * H, dtype=torch.float64),
        "weight_ci_l0": diags[0],
        "weight_cf_l0": diags[1],
        "weight_co_l0": diags[2],
    }
    return kwargs, sd
