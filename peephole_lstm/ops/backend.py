"""Which kernel runs the fused op.

Backend selection (environment variable ``PEEPHOLE_LSTM_BACKEND`` or :func:`set_backend`):

* ``"auto"`` (default): the fused op; the C++ kernel on CPU when it builds, else the Python
  kernel (with a one-line warning when no compiler is found);
* ``"cpp"``: the fused op with the C++ kernel on CPU; raises if it cannot be built;
* ``"python"``: the fused op with the Python kernel (no compiler needed);
* ``"triton"``: the fused op with the Triton kernel (``kernels/triton.py``), which ``"auto"``
  takes for CUDA tensors when Triton is installed; forced, it also runs CPU tensors under
  Triton's interpreter (``TRITON_INTERPRET=1``: tests);
* ``"reference"``: no fused op; the autograd time loop of :mod:`peephole_lstm.ops.functional`.

The C++ kernel (``kernels/cpu/``, CPU float32/float64) is compiled on first use
(:mod:`peephole_lstm.ops.build`).
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch
from torch import Tensor

from .. import tuning
from . import build

__all__ = ["BACKENDS", "build_extension", "get_backend", "set_backend", "use_cpp", "use_triton"]

BACKENDS = tuning.KNOBS["backend"].choices  # ("auto", "cpp", "python", "triton", "reference")
_ENV = tuning.KNOBS["backend"].env


def set_backend(backend: str) -> None:
    """Select the implementation used by :class:`~peephole_lstm.PeepholeLSTM` (see module doc)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    tuning.set("backend", backend)


def get_backend() -> str:
    """The backend in force: ``"auto"``, ``"cpp"``, ``"python"``, ``"triton"`` or ``"reference"``."""
    return tuning.get("backend")


def build_extension(verbose: bool = False) -> bool:
    """Compile (or load from the cache) the C++ kernel. Returns whether it is available.

    Called on first use of the ``"auto"``/``"cpp"`` backends on CPU; call it yourself to
    pay the one-off compile time up front (e.g. in a Docker build step). A library already
    built from the same sources, flags and torch loads directly, without the build check.
    A failure raises under ``"cpp"``; otherwise it warns once and the Python kernel runs.
    """
    first = not build.tried()
    if build.load_extension(verbose):
        return True
    exc = build.build_error()
    if get_backend() == "cpp":
        raise RuntimeError(f"{_ENV}=cpp but the C++ kernel could not be built: {exc}") from exc
    if first:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(
            f"peephole_lstm: C++ kernel unavailable ({line}); using the pure-PyTorch "
            f"fused kernel (slower). Set {_ENV}=python to silence this.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def use_cpp(t: Tensor) -> bool:
    """Whether the C++ kernel runs the op for a tensor like ``t`` (builds it on first use)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        if get_backend() == "cpp" and t.device.type == "cpu":
            raise RuntimeError(f"{_ENV}=cpp supports float32/float64, got {t.dtype}")
        return False
    if get_backend() in ("python", "triton"):
        return False
    if build.tried():  # every call after the first: no lock on the hot path
        return build.built()
    return build_extension()


_TRITON: dict[str, bool] = {}


def triton_available() -> bool:
    """Whether the ``triton`` package is installed (looked up once, not imported)."""
    if "ok" not in _TRITON:
        _TRITON["ok"] = importlib.util.find_spec("triton") is not None
    return _TRITON["ok"]


def use_triton(t: Tensor) -> bool:
    """Whether the Triton kernel runs the op for a tensor like ``t``: CUDA tensors under
    ``"auto"`` when Triton is installed; every tensor under ``"triton"`` (CPU ones need
    ``TRITON_INTERPRET=1``)."""
    if get_backend() == "triton":
        if not triton_available():
            raise RuntimeError(f"{_ENV}=triton but triton is not installed (pip install triton)")
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
            raise RuntimeError(f"{_ENV}=triton on CPU tensors needs Triton's interpreter: TRITON_INTERPRET=1")
        return True
    return get_backend() == "auto" and t.device.type == "cuda" and triton_available()
