"""Speed of PeepholeLSTM next to torch.nn.LSTM: inference and a training step, S1–S4.

    python benchmarks/speed.py                      # CPU, float32, all sizes (several minutes)
    python benchmarks/speed.py --sizes S1 --runs 10 # one size
    python benchmarks/speed.py --device cuda        # on a GPU
    python benchmarks/speed.py --memory             # + peak memory of a training step, one process per variant
    python benchmarks/speed.py --config article     # the article's cell: peephole="full", candidate_peephole=True
    python benchmarks/speed.py --config packed      # PackedSequence, random lengths, unsorted
    python benchmarks/speed.py --config bidir       # bidirectional, 2 layers

Variants: ``nn.LSTM``; ``naive loop`` (PeepholeLSTMCell called in a Python loop, the way
people write custom LSTMs); ``reference`` (our autograd time loop); ``fused/python`` (the
fused op, pure-PyTorch kernel); ``fused/cpp`` (the fused op, C++ kernel; the CPU default);
``fused/triton`` (the fused op, Triton kernel; the CUDA default, ``--device cuda`` only:
CUDA graphs, one launch per layer for small H, else per step one launch up to 64 rows and
cuBLAS + a cell kernel above), ``fused/triton-steps`` (the one-launch kernel off, steps as
``auto`` picks), ``fused/triton-gemm`` / ``fused/triton-fused`` (the one-launch kernel off,
every step's GEMM through cuBLAS / inside the cell kernel), ``fused/triton-eager`` (CUDA
graphs off: every per-step launch from Python);
``scripted`` (``torch.jit.script`` of the module). Times are the median of ``--runs``
interleaved repetitions (each variant once per round), in ms; the ratio is to ``nn.LSTM``
measured in the same rounds. Training = forward + backward of ``out.square().mean()``.
Configurations other than ``default`` compare ``nn.LSTM`` on the same input (same sizes;
packed input for ``packed``) with ``reference``, ``fused/python`` and ``fused/cpp``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import peephole_lstm  # noqa: E402
from peephole_lstm import PeepholeLSTM, PeepholeLSTMCell, tuning  # noqa: E402

# name: (T, B, I, H, layers)
SIZES = {
    "S1": (60, 32, 1, 50, 3),
    "S2": (100, 64, 128, 256, 1),
    "S3": (500, 16, 32, 128, 1),
    "S4": (50, 256, 64, 512, 1),
}
VARIANTS = ["nn.LSTM", "naive loop", "reference", "fused/python", "fused/cpp", "fused/triton", "fused/triton-steps",
            "fused/triton-gemm", "fused/triton-fused", "fused/triton-eager", "scripted"]
# variant: the tuning knobs it runs under (the Triton path's switches); every variant starts
# from the knobs' values in force (the caller's environment)
VARIANT_KNOBS = {
    "fused/triton-steps": {"triton_persistent": "0"},
    "fused/triton-gemm": {"triton_persistent": "0", "triton_step": "gemm"},
    "fused/triton-fused": {"triton_persistent": "0", "triton_step": "fused"},
    "fused/triton-eager": {"cuda_graphs": "0"},
}
# name: (PeepholeLSTM keyword arguments, layers override, packed input)
CONFIGS = {
    "default": ({}, None, False),
    "article": ({"peephole": "full", "candidate_peephole": True}, None, False),
    "packed": ({}, None, True),
    "bidir": ({"bidirectional": True}, 2, False),
}
CONFIG_VARIANTS = ["nn.LSTM", "reference", "fused/python", "fused/cpp"]


def cpu_model() -> str:
    """The CPU's model name, with its family/model numbers where the name alone is vague
    ("AMD EPYC" in a VM: family 25 is Zen 3/4, 26 is Zen 5)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        name = info["model name"]
        if "cpu family" in info:
            name += f", family {info['cpu family']} model {info.get('model', '?')}"
        return name
    except (OSError, KeyError):
        return platform.processor() or platform.machine()


class NaiveLoop(torch.nn.Module):
    """Stacked PeepholeLSTMCells in a Python time loop."""

    def __init__(self, I: int, H: int, layers: int) -> None:
        super().__init__()
        self.cells = torch.nn.ModuleList(PeepholeLSTMCell(I if k == 0 else H, H) for k in range(layers))

    def forward(self, x):
        for cell in self.cells:
            h = c = x.new_zeros(x.size(1), cell.hidden_size)
            outs = []
            for x_t in x:
                h, c = cell(x_t, (h, c))
                outs.append(h)
            x = torch.stack(outs)
        return x, None


def build(variant: str, size: str, device: str, config: str = "default"):
    T, B, I, H, layers = SIZES[size]
    kwargs, layers_override, packed = CONFIGS[config]
    layers = layers_override or layers
    bidirectional = kwargs.get("bidirectional", False)
    if variant == "nn.LSTM":
        model = torch.nn.LSTM(I, H, layers, bidirectional=bidirectional)
    elif variant == "naive loop":
        model = NaiveLoop(I, H, layers)
    else:
        model = PeepholeLSTM(I, H, layers, **kwargs)
    model = model.to(device)
    if variant == "scripted":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.script(model)
    backend = {"reference": "reference", "fused/python": "python", "fused/cpp": "cpp", "fused/triton": "triton",
               "fused/triton-steps": "triton", "fused/triton-gemm": "triton", "fused/triton-fused": "triton",
               "fused/triton-eager": "triton", "scripted": "reference"}
    if packed:  # random lengths in [T/4, T], the longest T, in no order
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=g)
        lengths[B // 2] = T
        x = pack_sequence([torch.randn(int(n), I, device=device) for n in lengths], enforce_sorted=False)
    else:
        x = torch.randn(T, B, I, device=device)
    return model, x, backend.get(variant, "auto"), VARIANT_KNOBS.get(variant, {})


AUTOCAST: dict = {}  # --autocast: torch.autocast keyword arguments around every step


def step(model, x, backend: str, knobs: dict, train: bool) -> None:
    peephole_lstm.set_backend(backend)
    with tuning.override(**knobs), torch.autocast(**AUTOCAST) if AUTOCAST else contextlib.nullcontext():
        if train:
            out = model(x)[0]
            out = out.data if isinstance(out, PackedSequence) else out
            out.float().square().mean().backward()
        else:
            with torch.inference_mode():
                model(x)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_all(sizes, variants, runs: int, device: str, config: str = "default") -> list[dict]:
    rows = []
    for size in sizes:
        built = {v: build(v, size, device, config) for v in variants}
        for train in (False, True):
            times: dict[str, list[float]] = {v: [] for v in variants}
            for v in variants:  # warm-up: the C++ build, TorchScript's profiling runs
                for _ in range(2):
                    step(*built[v], train)
                sync(device)
            for _ in range(runs):
                for v in variants:
                    sync(device)
                    t0 = time.perf_counter()
                    step(*built[v], train)
                    sync(device)
                    times[v].append(time.perf_counter() - t0)
            base = statistics.median(times["nn.LSTM"])
            for v in variants:
                med = statistics.median(times[v])
                rows.append(dict(size=size, mode="training" if train else "inference", variant=v,
                                 ms=med * 1e3, ratio=med / base, config=config))
            for m in built.values():
                m[0].zero_grad(set_to_none=True)
    return rows


def peak_memory(variant: str, size: str, device: str, config: str = "default") -> float:
    """Peak memory (MiB) of building the model and input and running one training step,
    over a fresh process that has imported torch and loaded the C++ kernel (CPU: growth
    of the peak RSS, VmHWM; CUDA: the allocator's peak)."""
    code = (
        f"import sys, json, torch; sys.path.insert(0, {ROOT!r}); "
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (big) parent.
        "hwm = lambda: int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]); "
        "import peephole_lstm; peephole_lstm.build_extension(); "
        "from benchmarks.speed import build, step; "
        f"torch.cuda.init() if {device!r}.startswith('cuda') else None; "
        "base = hwm(); "
        f"m, x, b, e = build({variant!r}, {size!r}, {device!r}, {config!r}); step(m, x, b, e, True); "
        f"peak = (torch.cuda.max_memory_allocated() / 2**20) if {device!r}.startswith('cuda') else "
        "(hwm() - base) / 1024; print(json.dumps(peak))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--variants", nargs="+", default=None, choices=VARIANTS,
                        help="default: all for --config default, else " + ", ".join(CONFIG_VARIANTS))
    parser.add_argument("--config", default="default", choices=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="also peak memory of a training step")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], help="run every step under torch.autocast")
    parser.add_argument("--tf32", choices=["on", "off"], help="CUDA: set torch.backends.cudnn.allow_tf32 (cuDNN) and "
                        "torch.backends.cuda.matmul.allow_tf32 (cuBLAS, our Triton dots) both (default: as PyTorch)")
    args = parser.parse_args()
    if args.tf32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
    if args.autocast:
        AUTOCAST.update(device_type=args.device.split(":")[0], dtype=getattr(torch, args.autocast))
    chosen = args.variants or (VARIANTS if args.config == "default" else CONFIG_VARIANTS)
    variants = list(dict.fromkeys(["nn.LSTM", *chosen]))
    if args.device != "cpu":
        variants = [v for v in variants if v != "fused/cpp"]  # the C++ kernel is CPU-only
    else:
        variants = [v for v in variants if not v.startswith("fused/triton")]  # GPU (CPU: interpreter only)
    if "fused/cpp" in variants:
        peephole_lstm.set_backend("cpp")
        peephole_lstm.build_extension()

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_model()
    prec = f"autocast {args.autocast}" if args.autocast else "float32"
    if args.device.startswith("cuda"):
        prec += (f" (TF32: cuDNN {torch.backends.cudnn.allow_tf32}, cuBLAS/Triton "
                 f"{torch.backends.cuda.matmul.allow_tf32})")
        try:
            import triton

            prec += f", triton {triton.__version__}"
        except ImportError:
            pass
    print(f"# torch {torch.__version__}, {args.device} ({dev}), {torch.get_num_threads()} threads, {prec}, "
          f"config {args.config} {CONFIGS[args.config]}, median of {args.runs} interleaved runs")
    rows = time_all(args.sizes, variants, args.runs, args.device, args.config)
    print("\n| size | mode | " + " | ".join(variants) + " |")
    print("|---|---|" + "---:|" * len(variants))
    for size in args.sizes:
        for mode in ("training", "inference"):
            cells = []
            for v in variants:
                r = next(r for r in rows if r["size"] == size and r["mode"] == mode and r["variant"] == v)
                cells.append(f"{r['ms']:.1f} ms" if v == "nn.LSTM" else f"{r['ms']:.1f} ms ({r['ratio']:.2f}×)")
            print(f"| {size} {SIZES[size]} | {mode} | " + " | ".join(cells) + " |")
    if "fused/cpp" in variants:
        print(f"\nC++ kernel GEMM paths (measured per shape m x n x k): {torch.ops.peephole_lstm_cpp.blas_info()}")
    if args.memory:
        print("\nPeak memory added by one training step (MiB" + (", CUDA allocator)" if args.device != "cpu" else
                                                                   ", max RSS growth)"))
        print("| size | " + " | ".join(variants) + " |")
        print("|---|" + "---:|" * len(variants))
        for size in args.sizes:
            print(f"| {size} | " + " | ".join(f"{peak_memory(v, size, args.device, args.config):.1f}" for v in variants)
                  + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
