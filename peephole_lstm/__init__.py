"""peephole-lstm: an exact, fast LSTM with peephole connections, a drop-in for ``torch.nn.LSTM``.

``import peephole_lstm`` needs only torch. The Lightning parts (``PeepholeLSTMRegressor``,
``SeriesDataModule``) and the ONNX export (``export_onnx``) load on first access.
"""

import torch as _torch

from ._backend import build_extension, get_backend, release_buffers, set_backend
from .cell import PeepholeLSTMCell
from .lstm import PeepholeLSTM

# ``torch.load`` of a ``torch.save(model)`` (weights_only=True, torch's default) may rebuild
# these two: their state is parameters, ints, floats, strings and lists only.
_torch.serialization.add_safe_globals([PeepholeLSTM, PeepholeLSTMCell])

__version__ = "0.1.0"

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
    "PeepholeLSTMRegressor": ("peephole_lstm.model", "train"),
    "SeriesDataModule": ("peephole_lstm.data", "train"),
    "export_onnx": ("peephole_lstm.interop", "onnx"),
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
