"""Interoperability, on top of the layer: ONNX export with native peepholes
(:func:`export_onnx`), and ONNX / TensorFlow weights imported into a ``PeepholeLSTM``
(:func:`from_onnx`, :func:`from_tensorflow`; the readers in :mod:`.readers`).

Needs ``onnx`` for the ONNX parts (``pip install 'peephole-lstm[onnx]'``), imported on use.
"""

from __future__ import annotations

from ..modules.lstm import PeepholeLSTM
from .export import export_onnx

__all__ = ["export_onnx", "from_onnx", "from_tensorflow"]


# The imports, as functions (the layer's classmethods build the module from interop.readers).
from_onnx = PeepholeLSTM.from_onnx
from_tensorflow = PeepholeLSTM.from_tensorflow
