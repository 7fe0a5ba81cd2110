"""Tuning knobs: every ``PEEPHOLE_LSTM_*`` environment variable, in one place.

The environment is read once, when this module is imported; after that a knob's value is
what :func:`get` returns, and :func:`override` changes it in-process for the length of a
``with`` block (tests and benchmarks)::

    from peephole_lstm import tuning

    with tuning.override(gemm="vec", threads="serial"):
        model(x)  # the C++ kernel on its own GEMM, one thread

The C++ kernel holds its knobs in atomics (``kernels/cpu/knobs.h``); this module pushes every
value when the library loads and each change made by :func:`override`. The Triton path reads
its knobs through :func:`get` on every call.

Knobs marked *measuring* exist to compare code paths (benchmarks, tests); the defaults are
what the kernels measure or choose themselves, and a user has no reason to set them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional

__all__ = ["KNOBS", "Knob", "get", "override", "set"]


@dataclass(frozen=True)
class Knob:
    """One knob: its environment variable, default, allowed values (None: any), whether it
    exists only for measuring, which code reads it, and what it does."""

    env: str
    default: str
    choices: Optional[tuple[str, ...]]
    measuring: bool
    reader: str  # "backend", "cpp" or "triton"
    doc: str


KNOBS: dict[str, Knob] = {
    "backend": Knob(
        "PEEPHOLE_LSTM_BACKEND", "auto", ("auto", "cpp", "python", "triton", "reference"), False, "backend",
        "Which kernel runs the fused op (also peephole_lstm.set_backend): auto, cpp, python, triton, reference.",
    ),
    "threads": Knob(
        "PEEPHOLE_LSTM_THREADS", "auto", ("auto", "serial", "parallel"), False, "cpp",
        "Small-step loops: auto (parallel, on one thread for a while after two stalled calls in a row: a busy "
        "machine), serial (always one thread), parallel (never switch).",
    ),
    "serial_flops": Knob(
        "PEEPHOLE_LSTM_SERIAL_FLOPS", str(1 << 23), None, False, "cpp",
        "Per-step FLOPs under which a loop counts as small (the stall switch and the one-region loop apply); 0: none.",
    ),
    "pool_mb": Knob(
        "PEEPHOLE_LSTM_POOL_MB", "1024", None, False, "cpp",
        "MiB of free large buffers the C++ kernel keeps for the next call (0: none; release_buffers() frees them).",
    ),
    "cuda_graphs": Knob(
        "PEEPHOLE_LSTM_CUDA_GRAPHS", "1", ("0", "1"), False, "triton",
        "0: the Triton path launches every step from Python instead of replaying CUDA graphs.",
    ),
    "gemm": Knob(
        "PEEPHOLE_LSTM_GEMM", "auto", ("auto", "packed", "blas", "onednn", "vec"), True, "cpp",
        "Forces the C++ kernel's per-step GEMM path instead of measuring each shape.",
    ),
    "split": Knob(
        "PEEPHOLE_LSTM_SPLIT", "auto", ("auto", "rows", "cols"), True, "cpp",
        "Forces how the one-region loop splits a step between threads.",
    ),
    "fused_loop": Knob(
        "PEEPHOLE_LSTM_FUSED_LOOP", "1", ("0", "1"), True, "cpp",
        "0: never run a small-step loop in one parallel region.",
    ),
    "vec_kc": Knob(
        "PEEPHOLE_LSTM_VEC_KC", "0", None, True, "cpp",
        "The C++ kernel's own GEMM's k block in rows (0: a quarter of one core's L2).",
    ),
    "triton_persistent": Knob(
        "PEEPHOLE_LSTM_TRITON_PERSISTENT", "auto", ("auto", "0"), True, "triton",
        "0: no one-launch (persistent) kernel for small hidden sizes.",
    ),
    "triton_step": Knob(
        "PEEPHOLE_LSTM_TRITON_STEP", "auto", ("auto", "gemm", "fused"), True, "triton",
        "Forces each step's GEMM through cuBLAS (gemm) or inside the cell kernel (fused).",
    ),
    "triton_dot": Knob(
        "PEEPHOLE_LSTM_TRITON_DOT", "", ("", "ieee", "tf32", "tf32x3"), True, "triton",
        "tl.dot's input precision (empty: tf32 when torch allows TF32 matmuls, else ieee).",
    ),
}


def _check(name: str, value: str) -> str:
    if name not in KNOBS:
        raise KeyError(f"no knob named {name!r}; the knobs: {', '.join(KNOBS)}")
    knob = KNOBS[name]
    value = str(value).strip()
    if knob.choices is not None and value.lower() not in knob.choices:
        shown = ", ".join(c or "''" for c in knob.choices)
        raise ValueError(f"{knob.env}={value!r} is not one of {shown}")
    if knob.choices is None:
        try:
            float(value)
        except ValueError:
            raise ValueError(f"{knob.env}={value!r} is not a number") from None
    return value.lower() if knob.choices is not None else value


def _from_env() -> dict[str, str]:
    values = {}
    for name, knob in KNOBS.items():
        raw = os.environ.get(knob.env, "").strip()
        values[name] = _check(name, raw) if raw else knob.default
    return values


_VALUES: dict[str, str] = _from_env()


def get(name: str) -> str:
    """The knob's value in force, as a string (see :data:`KNOBS`)."""
    return _VALUES[name]


def _push(names) -> None:
    """Send C++ knobs to the loaded library (no-op before it loads: load_extension pushes all)."""
    build = sys.modules.get("peephole_lstm.ops.build")
    if build is None or not build.built():
        return
    import torch

    for name in names:
        if KNOBS[name].reader == "cpp":
            torch.ops.peephole_lstm_cpp.set_knob(name, _VALUES[name])


def push_all() -> None:
    """Send every C++ knob to the library: called by the build right after it loads."""
    _push(KNOBS)


def set(name: str, value: str) -> None:  # noqa: A001 (the module's verb, as get)
    """Set a knob for the rest of the process (checked as the environment's value would be)."""
    _VALUES[name] = _check(name, value)
    _push([name])


@contextlib.contextmanager
def override(**values) -> Iterator[None]:
    """Set knobs for the length of the block, then restore them: ``override(gemm="vec")``.
    Values are checked as the environment's would be."""
    new = {name: _check(name, v) for name, v in values.items()}
    old = {name: _VALUES[name] for name in new}
    _VALUES.update(new)
    _push(new)
    try:
        yield
    finally:
        _VALUES.update(old)
        _push(old)
