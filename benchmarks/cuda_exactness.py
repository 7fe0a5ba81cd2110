"""Exactness of the CUDA path (Triton kernels, CUDA graphs) at the benchmark sizes: float32
(TF32 off) against the float64 reference loop on the same GPU, relative error in norm of
the output, the final cell state and the worst gradient (input and every weight).

    python benchmarks/cuda_exactness.py                 # S1-S4, every config of speed.py
    python benchmarks/cuda_exactness.py --configs default article

The call measured is each model's third (a CUDA-graph replay; the first runs eagerly, the
second captures). The bound: outputs <= 1e-4, gradients <= 1e-3.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peephole_lstm  # noqa: E402
from benchmarks.speed import CONFIGS, SIZES  # noqa: E402
from peephole_lstm import PeepholeLSTM  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(m, x, backend, lengths=None):
    peephole_lstm.set_backend(backend)
    x = x.clone().requires_grad_()
    if lengths is None:
        out, (h, c) = m(x)
    else:  # packed: random lengths, unsorted; the output's data (sum of lengths, P)
        out, (h, c) = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
        out = out.data
    loss = out.square().mean() + c.square().mean()
    return out, c, torch.autograd.grad(loss, [x, *m.parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--device", default="cuda", help="cpu checks the script itself (the C++ kernel)")
    args = ap.parse_args()
    dev = args.device
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else "CPU"
    print(f"# {name}, torch {torch.__version__}, float32 (TF32 off) vs float64 reference")
    print("| config | size | output | c_n | worst gradient |\n|---|---|---:|---:|---:|")
    for config in args.configs:
        kwargs, layers_override, packed = CONFIGS[config]
        for size in args.sizes:
            T, B, I, H, layers = SIZES[size]
            layers = layers_override or layers
            torch.manual_seed(0)
            m = PeepholeLSTM(I, H, layers, device=dev, **kwargs)
            m64 = PeepholeLSTM(I, H, layers, device=dev, dtype=torch.float64, **kwargs)
            m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
            x = torch.randn(T, B, I, device=dev)
            lengths = None
            if packed:  # lengths in [T/4, T], the longest T, in no order
                lengths = torch.randint(max(1, T // 4), T + 1, (B,))
                lengths[B // 2] = T
            for _ in range(3):  # eager, capture, replay
                out, c, grads = run(m, x, "auto", lengths)
            out_r, c_r, grads_r = run(m64, x.double(), "reference", lengths)
            worst = max(rel(g, w) for g, w in zip(grads, grads_r))
            print(f"| {config} | {size} | {rel(out, out_r):.1e} | {rel(c, c_r):.1e} | {worst:.1e} |", flush=True)
    peephole_lstm.set_backend("auto")


if __name__ == "__main__":
    main()
