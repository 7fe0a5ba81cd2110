"""ONNX export with native peepholes: a ``PeepholeLSTM`` as ``LSTM`` nodes with ``P``.

ONNX's ``LSTM`` operator has the peephole input ``P`` and computes exactly our diagonal
peephole cell (https://onnx.ai/onnx/operators/onnx__LSTM.html); its gate order is i, o, f, c
where ours (``nn.LSTM``'s) is i, f, g, o, and ``P`` is ordered i, o, f.
"""

from __future__ import annotations

import os
from typing import IO, Any, Optional, Union

import torch
from torch import Tensor

from ..modules.lstm import PeepholeLSTM
from ..ops.onnx_export import TO_ONNX, reorder_gates

__all__ = ["export_onnx"]

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
            Ws.append(reorder_gates(sd["weight_ih" + sfx], TO_ONNX))
            Rs.append(reorder_gates(sd["weight_hh" + sfx], TO_ONNX))
            if model.bias:
                Bs.append(torch.cat([reorder_gates(sd[k + sfx], TO_ONNX) for k in ("bias_ih", "bias_hh")]))
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
