"""Interoperability, on top of the layer: ONNX export with native peepholes
(:func:`export_onnx`), and ONNX / TensorFlow weights imported into a ``PeepholeLSTM``
(:func:`from_onnx`, :func:`from_tensorflow`; the readers in :mod:`.readers`).

Needs ``onnx`` for the ONNX parts (``pip install 'peephole-lstm[onnx]'``), imported on use.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..modules.lstm import PeepholeLSTM
from .export import export_onnx

__all__ = ["export_onnx", "from_onnx", "from_tensorflow"]


def from_onnx(
    model_or_path: Any, *, dtype: torch.dtype = torch.float32, batch_first: Optional[bool] = None
) -> PeepholeLSTM:
    """A ``PeepholeLSTM`` holding the weights of the ``LSTM`` node(s) of an ONNX model (path,
    bytes, file or ``ModelProto``): :meth:`PeepholeLSTM.from_onnx`.

    Consecutive ``LSTM`` nodes become the layers (in graph order); ``P`` present gives
    ``peephole="diagonal"``, absent ``"none"``. ``layout=1`` gives ``batch_first=True``.
    Refused with a clear error: non-default activations, ``clip``, ``input_forget=1``, and
    weights that are not initializers. ``batch_first=None`` takes it from a model written by
    :func:`export_onnx`, else from the first node's ``layout``.
    """
    return PeepholeLSTM.from_onnx(model_or_path, dtype=dtype, batch_first=batch_first)


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
    ``tf.compat.v1.nn.rnn_cell.LSTMCell(num_units, use_peepholes=True)``:
    :meth:`PeepholeLSTM.from_tensorflow`.

    TF computes ``[i, j, f, o] = concat([x, h]) @ kernel + bias`` (kernel ``(I + H, 4H)``),
    ``c = σ(f + forget_bias + w_f_diag c_prev) c_prev + σ(i + w_i_diag c_prev) tanh(j)``,
    ``c = clip(c, -cell_clip, cell_clip)`` when ``cell_clip`` is set,
    ``h = σ(o + w_o_diag c) tanh(c)``: our cell with ``g = j``, ``forget_bias`` folded into
    the forget gate's bias and the same ``cell_clip``. ``num_proj`` cells are not supported.
    """
    return PeepholeLSTM.from_tensorflow(kernel, bias, w_i_diag, w_f_diag, w_o_diag, forget_bias, cell_clip,
                                        batch_first=batch_first, dtype=dtype)
