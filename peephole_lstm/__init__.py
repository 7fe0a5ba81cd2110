"""peephole-lstm: an exact, fast LSTM with peephole connections, a drop-in for ``torch.nn.LSTM``,
and a Lightning forecaster built on it.

The package holds two products, in layers whose imports point one way (each only downward):

* :mod:`peephole_lstm.ops` -- the computing: the reference recurrence, the fused op with its
  backward, backend choice and the kernels (C++, Triton, PyTorch). torch only.
* :mod:`peephole_lstm.modules` -- the layer: ``PeepholeLSTM`` and ``PeepholeLSTMCell``, which
  hold ``nn.LSTM``'s contract and call one level down. torch only.
* :mod:`peephole_lstm.interop` -- ONNX export and ONNX / TensorFlow import, on top of the layer
  (needs ``onnx`` for ONNX).
* :mod:`peephole_lstm.forecast` -- the forecasting application: data, network, Lightning
  module, intervals and the CLI (needs the ``train`` extra).

``import peephole_lstm`` needs only torch. The Lightning parts (``PeepholeLSTMRegressor``,
``SeriesDataModule``) and the ONNX export (``export_onnx``) load on first access.
"""

import torch as _torch

from .modules import PeepholeLSTM, PeepholeLSTMCell
from .ops import build_extension, get_backend, release_buffers, set_backend

# ``torch.load`` of a ``torch.save(model)`` (weights_only=True, torch's default) may rebuild
# these two: their state is parameters, ints, floats, strings and lists only.
_torch.serialization.add_safe_globals([PeepholeLSTM, PeepholeLSTMCell])

__version__ = "0.4.0"

__all__ = [
    "PeepholeLSTM",
    "PeepholeLSTMCell",
    "PeepholeLSTMRegressor",
    "SeriesDataModule",
    "build_extension",
    "export_onnx",
    "get_backend",
    "release_buffers",
    "set_backend",
]

_LAZY = {
    "PeepholeLSTMRegressor": ("peephole_lstm.forecast.regressor", "train"),
    "SeriesDataModule": ("peephole_lstm.forecast.datamodule", "train"),
    "export_onnx": ("peephole_lstm.interop.export", "onnx"),
}


def __getattr__(name: str):
    # Lazy so that drop-in users never import Lightning / onnx (PEP 562).
    if name in _LAZY:
        import importlib

        module, extra = _LAZY[name]
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                f"peephole_lstm.{name} needs {exc.name!r}: pip install 'peephole-lstm[{extra}]'", name=exc.name
            ) from exc
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
