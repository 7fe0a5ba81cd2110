"""Which kernel runs the fused op, and the C++ kernel's build.

Backend selection (environment variable ``PEEPHOLE_LSTM_BACKEND`` or :func:`set_backend`):

* ``"auto"`` (default): the fused op; the C++ kernel on CPU when it builds, else the Python
  kernel (with a one-line warning when no compiler is found);
* ``"cpp"``: the fused op with the C++ kernel on CPU; raises if it cannot be built;
* ``"python"``: the fused op with the Python kernel (no compiler needed);
* ``"triton"``: the fused op with the Triton kernel (``kernels/triton.py``), which ``"auto"``
  takes for CUDA tensors when Triton is installed; forced, it also runs CPU tensors under
  Triton's interpreter (``TRITON_INTERPRET=1``: tests);
* ``"reference"``: no fused op; the autograd time loop of :mod:`peephole_lstm.functional`.

The C++ kernel (``kernels/cpu.cpp``) is compiled on first use with
``torch.utils.cpp_extension`` (15-30 s on 2 cores, cached across processes in
``TORCH_EXTENSIONS_DIR``), CPU float32/float64.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import warnings

import torch
from torch import Tensor

__all__ = ["BACKENDS", "build_extension", "get_backend", "set_backend", "use_cpp", "use_triton"]

BACKENDS = ("auto", "cpp", "python", "triton", "reference")
_ENV = "PEEPHOLE_LSTM_BACKEND"


def _backend_from_env() -> str:
    value = os.environ.get(_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{_ENV}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


_BACKEND: str = _backend_from_env()


def set_backend(backend: str) -> None:
    """Select the implementation used by :class:`~peephole_lstm.PeepholeLSTM` (see module doc)."""
    global _BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _BACKEND = backend


def get_backend() -> str:
    """The backend in force: ``"auto"``, ``"cpp"``, ``"python"`` or ``"reference"``."""
    return _BACKEND


# --------------------------------------------------------------------------- C++ build
_ext_lock = threading.Lock()
_ext_state: dict[str, object] = {"tried": False, "ok": False, "error": None}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return set()


def _simd_flags() -> tuple[str, list[str]]:
    """The widest at::vec capability this CPU runs (the variants ATen itself is built for)."""
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        return "avx512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma",
                          "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return "avx2", ["-mavx2", "-mfma", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return "", []


def _ext_name() -> str:
    simd = _simd_flags()[0]
    return "peephole_lstm_cpp" + (f"_{simd}" if simd else "")


def _build_dir(name: str) -> str:
    """Where ``torch.utils.cpp_extension.load`` builds ``name`` (its own rule, without
    importing it: that import alone takes ~0.25 s, setuptools included)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        import sys

        import torch._appdirs

        accel = f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else (
            f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        )
        folder = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accel}"
        root = os.path.join(os.path.realpath(torch._appdirs.user_cache_dir(appname="torch_extensions")), folder)
    return os.path.join(root, name)


def _build_key(src: str, flags: list[str]) -> str:
    """What the cached library was built from: the source, the flags, torch, the compiler."""
    import hashlib

    h = hashlib.sha256()
    with open(src, "rb") as f:
        h.update(f.read())
    h.update(repr((flags, torch.__version__, os.environ.get("CXX", "c++"))).encode())
    return h.hexdigest()


_STAMP = "peephole_lstm.stamp"


def _load_cached(name: str, key: str) -> bool:
    """Load the library built earlier for exactly this ``key``, if there is one (~10 ms)."""
    try:
        folder = _build_dir(name)
        with open(os.path.join(folder, _STAMP)) as f:
            if f.read().strip() != key:
                return False
        torch.ops.load_library(os.path.join(folder, name + ".so"))
        return True
    except Exception:  # no stamp / no library / a library that does not load: build
        return False


def build_extension(verbose: bool = False) -> bool:
    """Compile (or load from the cache) the C++ kernel. Returns whether it is available.

    Called on first use of the ``"auto"``/``"cpp"`` backends on CPU; call it yourself to
    pay the one-off compile time up front (e.g. in a Docker build step). A library already
    built from the same source, flags and torch loads directly, without the build check.
    """
    with _ext_lock:
        if _ext_state["tried"]:
            return bool(_ext_state["ok"])
        _ext_state["tried"] = True
        try:
            src = os.path.join(os.path.dirname(__file__), "kernels", "cpu.cpp")
            # No -ffast-math, and no FMA contraction of our own arithmetic: results must
            # match the reference path. AVX2/AVX512 let at::vec use SLEEF's exp, as ATen does.
            flags = ["-O3", "-ffp-contract=off", "-fopenmp"]  # OpenMP: at::parallel_for
            simd, simd_flags = _simd_flags()
            name = _ext_name()
            flags += simd_flags
            key = _build_key(src, flags)
            if not _load_cached(name, key):
                from torch.utils import cpp_extension

                cxx = os.environ.get("CXX", "c++")
                if shutil.which(cxx) is None:
                    raise RuntimeError(f"no C++ compiler ({cxx!r} not on PATH)")
                if not cpp_extension.is_ninja_available():
                    raise RuntimeError("ninja is not installed (pip install ninja)")
                cpp_extension.load(
                    name=name,
                    sources=[src],
                    extra_cflags=flags,
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=verbose,
                )
                try:
                    with open(os.path.join(_build_dir(name), _STAMP), "w") as f:
                        f.write(key)
                except OSError:  # a read-only cache: the next process runs the build check again
                    pass
            _ext_state["ok"] = True
        except Exception as exc:  # any build failure falls back, with one warning
            _ext_state["error"] = exc
            if _BACKEND == "cpp":
                raise RuntimeError(
                    f"{_ENV}=cpp but the C++ kernel could not be built: {exc}"
                ) from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            warnings.warn(
                f"peephole_lstm: C++ kernel unavailable ({first}); using the pure-PyTorch "
                f"fused kernel (slower). Set {_ENV}=python to silence this.",
                RuntimeWarning,
                stacklevel=3,
            )
        return bool(_ext_state["ok"])


def use_cpp(t: Tensor) -> bool:
    """Whether the C++ kernel runs the op for a tensor like ``t`` (builds it on first use)."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        if _BACKEND == "cpp" and t.device.type == "cpu":
            raise RuntimeError(f"{_ENV}=cpp supports float32/float64, got {t.dtype}")
        return False
    if _BACKEND in ("python", "triton"):
        return False
    if _ext_state["tried"]:  # every call after the first: no lock on the hot path
        return bool(_ext_state["ok"])
    return build_extension()


_TRITON: dict[str, bool] = {}


def _triton_available() -> bool:
    if "ok" not in _TRITON:
        import importlib.util

        _TRITON["ok"] = importlib.util.find_spec("triton") is not None
    return _TRITON["ok"]


def use_triton(t: Tensor) -> bool:
    """Whether the Triton kernel runs the op for a tensor like ``t``: CUDA tensors under
    ``"auto"`` when Triton is installed; every tensor under ``"triton"`` (CPU ones need
    ``TRITON_INTERPRET=1``)."""
    if _BACKEND == "triton":
        if not _triton_available():
            raise RuntimeError(f"{_ENV}=triton but triton is not installed (pip install triton)")
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
            raise RuntimeError(f"{_ENV}=triton on CPU tensors needs Triton's interpreter: TRITON_INTERPRET=1")
        return True
    return _BACKEND == "auto" and t.device.type == "cuda" and _triton_available()


# ------------------------------------------------------------- input projection
_PROJ_CHOICE: dict[tuple[int, int, int], bool] = {}


def _proj_key(rows: int, in_features: int, out_features: int) -> tuple[int, int, int]:
    # rows by power of two: variable-length inference does not re-measure for every length
    return rows.bit_length(), in_features, out_features


def _onednn_linear(x2: Tensor, w: Tensor) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x2, w, None, "none", [], "")


def _onednn_wins(x2: Tensor, w: Tensor) -> bool:
    """Whether oneDNN's matmul beats ``F.linear`` (MKL) for this shape here: measured once per
    shape and process (MKL's sgemm took 2-3x oneDNN's time on an AMD EPYC; on Intel the two
    are close), best of three calls each."""
    key = _proj_key(x2.size(0), x2.size(1), w.size(0))
    if key not in _PROJ_CHOICE:
        import time

        best = {}
        for name, fn in (("mkl", lambda: torch.nn.functional.linear(x2, w)), ("onednn", lambda: _onednn_linear(x2, w))):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        _PROJ_CHOICE[key] = best["onednn"] < best["mkl"]
    return _PROJ_CHOICE[key]


def _onednn_eligible(x: Tensor, w: Tensor) -> bool:
    """Eager CPU float32, large enough, not traced: where oneDNN's matmul may take the product."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
        return False
    if x.numel() < (1 << 16) or type(x) is not torch.Tensor or type(w) not in (torch.Tensor, torch.nn.Parameter):
        return False  # small: call overheads dominate; fake tensors and subclasses go through F.linear
    if _BACKEND == "python" or not torch.backends.mkldnn.is_available():
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing())


class _OneDnnProjection(torch.autograd.Function):
    """``x2 W^T`` with autograd, for training: forward and ``dx = g W`` by oneDNN's matmul, the
    weight gradient ``g^T x2`` by the C++ kernel's A^T B GEMM (each measured per shape against
    MKL, which ran these products at half oneDNN's speed on an AMD EPYC). First derivatives
    only, like the recurrence op it feeds. With ``scratch`` the product goes into this thread's
    scratch buffer (see ``input_projection``): the recurrence consumes it at once and neither
    backward reads it."""

    @staticmethod
    def forward(ctx, x2: Tensor, w: Tensor, scratch: bool = False) -> Tensor:
        ctx.save_for_backward(x2, w)
        if scratch:
            return _onednn_into(x2, w, _scratch_buffer(x2.size(0) * w.size(0)).view(x2.size(0), w.size(0)))
        return _onednn_linear(x2, w)  # (N, 4H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: Tensor):
        x2, w = ctx.saved_tensors
        g = g.contiguous()  # (N, 4H)
        dx = _onednn_linear(g, w.t().contiguous()) if ctx.needs_input_grad[0] else None  # (N, I)
        dw = torch.ops.peephole_lstm_cpp.mm_tn(g, x2) if ctx.needs_input_grad[1] else None  # (4H, I)
        return dx, dw, None


_BLOCK_BYTES = 8 << 20  # oneDNN's fresh row blocks: small enough for reused heap memory


def _onednn_into(x2: Tensor, w: Tensor, out: Tensor) -> Tensor:
    """``out = x2 W^T`` by oneDNN, which writes only fresh tensors: row blocks of at most
    ``_BLOCK_BYTES`` (reused heap memory, no page faults) copied in."""
    rows = max(1, _BLOCK_BYTES // (4 * w.size(0)))
    for r0 in range(0, x2.size(0), rows):
        out[r0 : r0 + rows].copy_(_onednn_linear(x2[r0 : r0 + rows], w))
    return out


# Inference scratch for the input projection: a (T, B, 4H) product over 32 MiB is served by
# fresh mmap'd pages on every call (glibc maps allocations that large), and faulting them in
# took a quarter of the time of a whole S4 forward (measured: 105 MB, ~25 ms of ~100 ms on an
# AMD EPYC); oneDNN's fused RNN keeps its scratchpad. One buffer per thread, the largest
# projection seen (up to _SCRATCH_MAX_BYTES), reused by every later call (training too: the
# recurrence op consumes the projection at once and saves its gates, not its input).
_SCRATCH_MIN_BYTES = 32 << 20
_SCRATCH_MAX_BYTES = 1 << 30
_scratch = threading.local()


def _scratch_buffer(numel: int) -> Tensor:
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.numel() < numel:
        _scratch.buf = None  # free the old one first
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            buf = _scratch.buf = torch.empty(numel, dtype=torch.float32)
    return buf[:numel]


def release_scratch() -> None:
    """Free this thread's inference scratch buffer (see ``input_projection``)."""
    _scratch.buf = None


def release_buffers() -> int:
    """Free the memory the kernels keep for their next calls: this thread's inference
    scratch, the C++ kernel's pool of free large buffers (saved gates, gate gradients; at
    most ``PEEPHOLE_LSTM_POOL_MB``, default 1024, kept so that the next training step does not
    fault fresh pages in) and, on CUDA, the Triton path's cached CUDA graphs with their
    buffers. Returns the CPU pool's bytes freed. Nothing in use is touched."""
    release_scratch()
    tr = sys.modules.get("peephole_lstm.kernels.triton")  # loaded only if it ever ran
    if tr is not None:
        tr._GRAPHS.clear()
        tr._SEEN.clear()
    if _ext_state["ok"]:
        return int(torch.ops.peephole_lstm_cpp.release_pool())
    return 0


_LARGE_STEP_FLOPS = 1 << 23  # the C++ kernel's one-region bound (serial_step_flops in cpu.cpp)


def projects_in_kernel(x: Tensor, w_ih: Tensor, h0: Tensor) -> bool:
    """Whether an inference layer call should hand the C++ kernel ``x`` and ``W_ih`` instead of
    ``xw = x W_ih^T`` (``torch.ops.peephole_lstm_cpp.forward_x``): where ``input_projection``
    would write a large product (``_SCRATCH_MIN_BYTES`` and more) for a loop of large steps
    (``h W_hh^T`` alone at least 2^23 FLOPs, beyond the kernel's one-region bound). The kernel
    then writes each step's ``x_t W_ih^T`` into the step's gate rows just before the step's GEMM
    adds ``h_{t-1} W_hh^T``: the (T, B, 4H) product never goes through memory. Callers check
    that no gradient is needed."""
    rows = x.numel() // max(1, x.size(-1))  # T*B, or N packed
    batch, p = h0.shape  # (B, P)
    if 4 * rows * w_ih.size(0) < _SCRATCH_MIN_BYTES or 2 * batch * p * w_ih.size(0) < _LARGE_STEP_FLOPS:
        return False  # the shapes first: small calls skip the checks below
    return _onednn_eligible(x, w_ih) and use_cpp(x)


def input_projection(x: Tensor, w_ih: Tensor, scratch: bool = False) -> Tensor:
    """``x W_ih^T`` for every step at once, ``(*, I) -> (*, 4H)``. In eager CPU float32 (not
    traced, not autocast) with the C++ kernel it takes oneDNN's matmul where that measures
    faster than ``F.linear`` (MKL), in training too (``_OneDnnProjection``). With ``scratch``
    (the caller consumes the result before its next call on this thread and keeps no
    reference; no backward reads it) a large product, in inference or training, is written
    into a reused per-thread buffer."""
    if _onednn_eligible(x, w_ih) and use_cpp(x):
        x2 = x.reshape(-1, x.size(-1)).contiguous()  # (T*B, I)
        numel = x2.size(0) * w_ih.size(0)
        grad = torch.is_grad_enabled() and (x.requires_grad or w_ih.requires_grad)
        big = scratch and _SCRATCH_MIN_BYTES <= 4 * numel <= _SCRATCH_MAX_BYTES
        if grad:
            if _onednn_wins(x2.detach(), w_ih.detach()):
                return _OneDnnProjection.apply(x2, w_ih, big).view(*x.shape[:-1], w_ih.size(0))
        elif big:
            out = _scratch_buffer(numel).view(x2.size(0), w_ih.size(0))  # (T*B, 4H)
            if _onednn_wins(x2, w_ih):
                _onednn_into(x2, w_ih, out)  # ~half MKL's time on a wide input (AMD)
            else:
                torch.mm(x2, w_ih.t(), out=out)
            return out.view(*x.shape[:-1], w_ih.size(0))
        elif _onednn_wins(x2, w_ih):
            return _onednn_linear(x2, w_ih).view(*x.shape[:-1], w_ih.size(0))
    return torch.nn.functional.linear(x, w_ih)
