"""The op layer: one call below the modules, torch only.

* :mod:`~peephole_lstm.ops.functional` -- the reference recurrence, equation by equation
  (autograd through a Python time loop; any dtype and device);
* :mod:`~peephole_lstm.ops.recurrence` -- the fused op ``torch.ops.peephole_lstm.recurrence``:
  one layer's whole time loop with its hand-written backward, dispatched to a kernel;
* :mod:`~peephole_lstm.ops.backend` -- which kernel runs it; :mod:`~peephole_lstm.ops.build`
  -- the C++ kernel's build and cache;
* :mod:`~peephole_lstm.ops.projection` -- the input projection ahead of the recurrence;
* :mod:`~peephole_lstm.ops.onnx_export` -- the recurrence as ONNX nodes while
  ``torch.onnx.export`` traces;
* :mod:`~peephole_lstm.ops.kernels` -- the kernels: ``cpu/`` (C++), ``python.py``, ``triton.py``.
"""

import sys

import torch

from . import build
from .backend import build_extension, get_backend, set_backend
from .projection import release_scratch

__all__ = ["build_extension", "get_backend", "release_buffers", "set_backend"]


def release_buffers() -> int:
    """Free the memory the kernels keep for their next calls: this thread's inference
    scratch, the C++ kernel's pool of free large buffers (saved gates, gate gradients; at
    most ``PEEPHOLE_LSTM_POOL_MB``, default 1024, kept so that the next training step does not
    fault fresh pages in) and, on CUDA, the Triton path's cached CUDA graphs with their
    buffers. Returns the CPU pool's bytes freed. Nothing in use is touched."""
    release_scratch()
    triton_kernels = sys.modules.get("peephole_lstm.ops.kernels.triton")  # loaded only if it ever ran
    if triton_kernels is not None:
        triton_kernels.release_graphs()
    if build.built():
        return int(torch.ops.peephole_lstm_cpp.release_pool())
    return 0
