"""The C++ kernel's build: compile ``kernels/cpu/`` on first use, or load the library built
earlier from the same sources.

``torch.utils.cpp_extension`` compiles ``kernels/cpu/ops.cpp`` (which includes the folder's
headers: one translation unit) in 15-30 s on 2 cores. The library is cached across processes
in ``TORCH_EXTENSIONS_DIR`` beside a stamp: a hash of every source file in the folder, the
compiler flags, torch's version and the compiler. A library whose stamp matches loads
directly (~10 ms), without the build check.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from typing import Optional

import torch

from .. import tuning

__all__ = ["SOURCE_DIR", "build_error", "built", "load_extension", "sources", "tried"]

SOURCE_DIR = os.path.join(os.path.dirname(__file__), "kernels", "cpu")
_MAIN = "ops.cpp"  # the translation unit; the headers beside it are included by it
_STAMP = "peephole_lstm.stamp"

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "ok": False, "error": None}


def tried() -> bool:
    """Whether this process has tried to build or load the library."""
    return bool(_state["tried"])


def built() -> bool:
    """Whether the library is loaded (``torch.ops.peephole_lstm_cpp`` exists)."""
    return bool(_state["ok"])


def build_error() -> Optional[BaseException]:
    """Why the build failed, or None."""
    return _state["error"]  # type: ignore[return-value]


def sources() -> list[str]:
    """Every source file of the kernel (the stamp covers them all), sorted."""
    return sorted(
        os.path.join(SOURCE_DIR, f) for f in os.listdir(SOURCE_DIR) if f.endswith((".cpp", ".h"))
    )


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
        import torch._appdirs

        accel = f"rocm{torch.version.hip.replace('.', '')}" if torch.version.hip else (
            f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        )
        folder = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}_{accel}"
        root = os.path.join(os.path.realpath(torch._appdirs.user_cache_dir(appname="torch_extensions")), folder)
    return os.path.join(root, name)


def build_key(files: list[str], flags: list[str]) -> str:
    """What the cached library was built from: every source file (name and bytes), the flags,
    torch, the compiler."""
    h = hashlib.sha256()
    for path in files:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    h.update(repr((flags, torch.__version__, os.environ.get("CXX", "c++"))).encode())
    return h.hexdigest()


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


def load_extension(verbose: bool = False) -> bool:
    """Compile (or load from the cache) the C++ kernel, once per process. Returns whether it
    is available; a failure is kept in :func:`build_error` (the caller decides whether it
    warns or raises)."""
    with _lock:
        if _state["tried"]:
            return bool(_state["ok"])
        _state["tried"] = True
        try:
            # No -ffast-math, and no FMA contraction of our own arithmetic: results must
            # match the reference path. AVX2/AVX512 let at::vec use SLEEF's exp, as ATen does.
            flags = ["-O3", "-ffp-contract=off", "-fopenmp"]  # OpenMP: at::parallel_for
            flags += _simd_flags()[1]
            name = _ext_name()
            key = build_key(sources(), flags)
            if not _load_cached(name, key):
                from torch.utils import cpp_extension

                cxx = os.environ.get("CXX", "c++")
                if shutil.which(cxx) is None:
                    raise RuntimeError(f"no C++ compiler ({cxx!r} not on PATH)")
                if not cpp_extension.is_ninja_available():
                    raise RuntimeError("ninja is not installed (pip install ninja)")
                cpp_extension.load(
                    name=name,
                    sources=[os.path.join(SOURCE_DIR, _MAIN)],
                    extra_cflags=flags,
                    extra_include_paths=[SOURCE_DIR],
                    extra_ldflags=["-fopenmp"],
                    is_python_module=False,
                    verbose=verbose,
                )
                try:
                    if build_key(sources(), flags) == key:  # not edited while it compiled
                        with open(os.path.join(_build_dir(name), _STAMP), "w") as f:
                            f.write(key)
                except OSError:  # a read-only cache: the next process runs the build check again
                    pass
            _state["ok"] = True
            tuning.push_all()  # the knobs' values into the library's atomics
        except Exception as exc:  # any build failure: the caller falls back or raises
            _state["error"] = exc
        return bool(_state["ok"])
