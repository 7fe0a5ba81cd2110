"""Interoperability: ONNX export with native peepholes, ONNX and TensorFlow weight import.

ONNX's ``LSTM`` operator has the peephole input ``P`` and computes exactly our diagonal
peephole cell (https://onnx.ai/onnx/operators/onnx__LSTM.html); its gate order is i, o, f, c
where ours (``nn.LSTM``'s) is i, f, g, o, and ``P`` is ordered i, o, f.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any, Optional, Union

import torch
from torch import Tensor

from ._onnx import _FROM_ONNX, _TO_ONNX, reorder_gates
from .lstm import PeepholeLSTM

__all__ = ["export_onnx", "from_onnx", "from_tensorflow"]

def _check_exportable(model: PeepholeLSTM) -> None:
    if not isinstance(model, PeepholeLSTM):
        raise TypeError(f"export_onnx expects a PeepholeLSTM, got {type(model).__name__}")
    reasons = []
    if model.proj_size > 0:
        reasons.append("proj_size > 0 (ONNX LSTM has no output projection)")
    if model.peephole == "full":
        reasons.append('peephole="full" (ONNX LSTM peepholes P are diagonal)')
    if model.candidate_peephole:
        reasons.append("candidate_peephole=True (ONNX LSTM has no candidate peephole)")
    if model.cell_clip is not None:
        reasons.append(
            "cell_clip (ONNX LSTM's clip bounds the gate pre-activations, not the cell state; "
            "torch.onnx.export of the model writes a Scan/Loop instead)"
        )
    if reasons:
        raise ValueError("cannot export to ONNX's LSTM operator: " + "; ".join(reasons))


def export_onnx(
    model: PeepholeLSTM,
    f: Union[str, os.PathLike, IO[bytes]],
    example_input: Optional[Tensor] = None,
    *,
    opset: int = 18,
    input_name: str = "input",
) -> Any:
    """Write ``model`` as an ONNX graph of standard ``LSTM`` nodes **with peepholes** (input
    ``P``), one node per layer (``direction="bidirectional"`` where it applies).

    Graph inputs: ``input`` (``(L, N, H_in)``, or ``(N, L, H_in)`` with ``batch_first``),
    with dynamic batch and sequence axes; ``h0`` and ``c0`` (``(D*num_layers, N, H)``), which
    may be left out: they default to zeros (ONNX optional inputs from opset 15; at opset 14,
    zero initializers that a feed overrides). Outputs: ``output``, ``h_n``, ``c_n``, as the
    module returns them. Weights are written as float32. Dropout is not exported (inference).

    Args:
        model: a ``PeepholeLSTM`` with ``peephole="diagonal"`` or ``"none"``, no projection and
            no candidate peephole (what ONNX's ``LSTM`` can express; anything else raises
            ``ValueError`` naming the reason).
        f: a path or a binary file object.
        example_input: optional; checked against the model (``input_size``) when given.
        opset: ONNX opset (>= 14; default 18).

    Returns:
        the ``onnx.ModelProto`` written.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    _check_exportable(model)
    if not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset must be an int >= 14 (LSTM with layout and P), got {opset!r}")
    if example_input is not None and example_input.size(-1) != model.input_size:
        raise ValueError(
            f"example_input.size(-1) must be equal to input_size. Expected {model.input_size}, "
            f"got {example_input.size(-1)}"
        )
    H, L = model.hidden_size, model.num_layers
    D = 2 if model.bidirectional else 1
    nodes, inits = [], []

    def const(name: str, array) -> str:
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    x = input_name
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["x_tm"], perm=[1, 0, 2]))
        x = "x_tm"
    # Optional initial states: graph inputs with zero defaults of batch 1, expanded to N.
    nodes.append(helper.make_node("Shape", [x], ["x_shape"]))
    nodes.append(helper.make_node("Gather", ["x_shape", const("one_idx", np.array(1, np.int64))], ["batch"], axis=0))
    nodes.append(helper.make_node("Unsqueeze", ["batch", const("axes0", np.array([0], np.int64))], ["batch1"]))
    state_shape = ["state_shape"]
    nodes.append(
        helper.make_node(
            "Concat", [const("ld", np.array([L * D], np.int64)), "batch1", const("hsz", np.array([H], np.int64))],
            state_shape, axis=0,
        )
    )
    if opset >= 15:
        # h0/c0: graph inputs of ONNX's optional type; one not given is None, and the state is
        # zeros (OptionalHasElement/If). No initializer doubles as an input, so ONNX Runtime
        # loads the model without its "Initializer h0 appears in graph inputs" warning.
        nodes.append(helper.make_node("ConstantOfShape", state_shape, ["zeros_state"],
                                      value=numpy_helper.from_array(np.zeros(1, np.float32))))
        for name in ("h0", "c0"):
            then_g = helper.make_graph(
                [helper.make_node("OptionalGetElement", [name], [f"{name}_given"])], f"{name}_given", [],
                [helper.make_tensor_value_info(f"{name}_given", TensorProto.FLOAT, [L * D, "batch", H])],
            )
            else_g = helper.make_graph(
                [helper.make_node("Identity", ["zeros_state"], [f"{name}_zeros"])], f"{name}_zeros", [],
                [helper.make_tensor_value_info(f"{name}_zeros", TensorProto.FLOAT, [L * D, "batch", H])],
            )
            nodes.append(helper.make_node("OptionalHasElement", [name], [f"{name}_has"]))
            nodes.append(helper.make_node("If", [f"{name}_has"], [f"{name}_full"], then_branch=then_g,
                                          else_branch=else_g))
    else:  # opset 14: overridable zero initializers (ONNX Runtime warns that they are inputs)
        zeros = np.zeros((L * D, 1, H), np.float32)
        const("h0", zeros)
        const("c0", zeros.copy())
        nodes.append(helper.make_node("Expand", ["h0", "state_shape"], ["h0_full"]))
        nodes.append(helper.make_node("Expand", ["c0", "state_shape"], ["c0_full"]))

    h_outs, c_outs = [], []
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    for layer in range(L):
        Ws, Rs, Bs, Ps = [], [], [], []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            Ws.append(reorder_gates(sd["weight_ih" + sfx], _TO_ONNX))
            Rs.append(reorder_gates(sd["weight_hh" + sfx], _TO_ONNX))
            if model.bias:
                Bs.append(torch.cat([reorder_gates(sd[k + sfx], _TO_ONNX) for k in ("bias_ih", "bias_hh")]))
            else:
                Bs.append(torch.zeros(8 * H))
            if model.peephole == "diagonal":
                Ps.append(torch.cat([sd["weight_ci" + sfx], sd["weight_co" + sfx], sd["weight_cf" + sfx]]))
        lo, hi = layer * D, (layer + 1) * D
        sl = f"l{layer}"
        nodes.append(helper.make_node("Slice", ["h0_full", const(f"lo{sl}", np.array([lo], np.int64)),
                                                const(f"hi{sl}", np.array([hi], np.int64))], [f"h0_{sl}"]))
        nodes.append(helper.make_node("Slice", ["c0_full", f"lo{sl}", f"hi{sl}"], [f"c0_{sl}"]))
        inputs = [
            x,
            const(f"W_{sl}", torch.stack(Ws).numpy()),  # (D, 4H, I)
            const(f"R_{sl}", torch.stack(Rs).numpy()),  # (D, 4H, H)
            const(f"B_{sl}", torch.stack(Bs).numpy()),  # (D, 8H)
            "",  # sequence_lens: all full length
            f"h0_{sl}",
            f"c0_{sl}",
        ]
        if Ps:  # peephole="none" writes no P: a plain LSTM node
            inputs.append(const(f"P_{sl}", torch.stack(Ps).numpy()))  # (D, 3H): i, o, f
        nodes.append(
            helper.make_node(
                "LSTM", inputs, [f"Y_{sl}", f"Yh_{sl}", f"Yc_{sl}"], name=f"lstm_{sl}", hidden_size=H,
                direction="bidirectional" if D == 2 else "forward",
            )
        )
        # Y: (T, D, N, H) -> (T, N, D*H), the next layer's input
        nodes.append(helper.make_node("Transpose", [f"Y_{sl}"], [f"Yt_{sl}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt_{sl}", const(f"shp_{sl}", np.array([0, 0, -1], np.int64))],
                                      [f"out_{sl}"]))
        x = f"out_{sl}"
        h_outs.append(f"Yh_{sl}")
        c_outs.append(f"Yc_{sl}")
    if model.batch_first:
        nodes.append(helper.make_node("Transpose", [x], ["output"], perm=[1, 0, 2]))
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"]))
    nodes.append(helper.make_node("Concat", h_outs, ["h_n"], axis=0))
    nodes.append(helper.make_node("Concat", c_outs, ["c_n"], axis=0))

    def state_input(name: str):
        t = helper.make_tensor_type_proto(TensorProto.FLOAT, [L * D, "batch", H])
        if opset >= 15:
            t = helper.make_optional_type_proto(t)
        return helper.make_value_info(name, t)

    seq_in = ["batch", "sequence", model.input_size] if model.batch_first else ["sequence", "batch", model.input_size]
    seq_out = ["batch", "sequence", D * H] if model.batch_first else ["sequence", "batch", D * H]
    graph = helper.make_graph(
        nodes,
        "peephole_lstm",
        inputs=[
            helper.make_tensor_value_info(input_name, TensorProto.FLOAT, seq_in),
            state_input("h0"),
            state_input("c0"),
        ],
        outputs=[
            helper.make_tensor_value_info("output", TensorProto.FLOAT, seq_out),
            helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L * D, "batch", H]),
            helper.make_tensor_value_info("c_n", TensorProto.FLOAT, [L * D, "batch", H]),
        ],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="peephole-lstm")
    proto.ir_version = 8  # opset 14: initializers that are graph inputs are overridable (h0/c0)
    # The LSTM nodes are time-major (the Transposes do batch_first): say so for from_onnx.
    onnx.helper.set_model_props(proto, {"peephole_lstm.batch_first": str(int(model.batch_first))})
    onnx.checker.check_model(proto)
    if isinstance(f, (str, os.PathLike)):
        onnx.save(proto, os.fspath(f))
    else:
        f.write(proto.SerializeToString())
    return proto


def from_onnx(
    model_or_path: Any, *, dtype: torch.dtype = torch.float32, batch_first: Optional[bool] = None
) -> PeepholeLSTM:
    """A ``PeepholeLSTM`` holding the weights of the ``LSTM`` node(s) of an ONNX model.

    Consecutive ``LSTM`` nodes become the layers (in graph order); ``P`` present gives
    ``peephole="diagonal"``, absent ``"none"``. ``layout=1`` gives ``batch_first=True``.
    Refused with a clear error: non-default activations, ``clip``, ``input_forget=1``, and
    weights that are not initializers. ``batch_first=None`` takes it from a model written by
    :func:`export_onnx`, else from the first node's ``layout``.
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
    model = PeepholeLSTM(
        int(W0.shape[2]), H, len(layers), bias=any(b is not None for _, _, _, b, _ in layers),
        batch_first=batch_first, bidirectional=D == 2, dtype=dtype,
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
            sd["weight_ih" + sfx] = reorder_gates(W[d], _FROM_ONNX)
            sd["weight_hh" + sfx] = reorder_gates(R[d], _FROM_ONNX)
            if model.bias:
                b = B[d] if B is not None else torch.zeros(8 * H)
                sd["bias_ih" + sfx] = reorder_gates(b[: 4 * H], _FROM_ONNX)
                sd["bias_hh" + sfx] = reorder_gates(b[4 * H :], _FROM_ONNX)
            if model.peephole == "diagonal":
                p = P[d] if P is not None else torch.zeros(3 * H)
                sd["weight_ci" + sfx], sd["weight_co" + sfx], sd["weight_cf" + sfx] = p[:H], p[H : 2 * H], p[2 * H :]
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return model.eval()


def from_tensorflow(
    kernel,
    bias,
    w_i_diag,
    w_f_diag,
    w_o_diag,
    forget_bias: float = 1.0,
    cell_clip: Optional[float] = None,
    *,
    batch_first: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PeepholeLSTM:
    """A one-layer ``PeepholeLSTM`` equal to TensorFlow v1
    ``tf.compat.v1.nn.rnn_cell.LSTMCell(num_units, use_peepholes=True)``.

    TF computes ``[i, j, f, o] = concat([x, h]) @ kernel + bias`` (kernel ``(I + H, 4H)``),
    ``c = σ(f + forget_bias + w_f_diag c_prev) c_prev + σ(i + w_i_diag c_prev) tanh(j)``,
    ``c = clip(c, -cell_clip, cell_clip)`` when ``cell_clip`` is set,
    ``h = σ(o + w_o_diag c) tanh(c)``: our cell with ``g = j``, ``forget_bias`` folded into
    the forget gate's bias and the same ``cell_clip``. ``num_proj`` cells are not supported.
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
    model = PeepholeLSTM(I, H, batch_first=batch_first, dtype=dtype, cell_clip=cell_clip)
    sd = {
        "weight_ih_l0": reorder_gates(kernel[:I].T, order),
        "weight_hh_l0": reorder_gates(kernel[I:].T, order),
        "bias_ih_l0": reorder_gates(b, order),
        "bias_hh_l0": torch.zeros(4 * H, dtype=torch.float64),
        "weight_ci_l0": diags[0],
        "weight_cf_l0": diags[1],
        "weight_co_l0": diags[2],
    }
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()})
    return model.eval()
