"""Exactness of the CUDA path (Triton kernels, CUDA graphs) at the benchmark sizes: float32
(TF32 off) against the float64 reference loop on the same GPU, relative error in norm of
the output, the final cell state and the worst gradient (input and every weight).

    python benchmarks/cuda_exactness.py                 # S1-S4, default and article configs

The call measured is each model's third (a CUDA-graph replay; the first runs eagerly, the
second captures). Issue 9's bound: outputs <= 1e-4, gradients <= 1e-3.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import peephole_lstm  # noqa: E402
from benchmarks.speed import CONFIGS, SIZES  # noqa: E402
from peephole_lstm import PeepholeLSTM  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def run(m, x, backend):
    peephole_lstm.set_backend(backend)
    x = x.clone().requires_grad_()
    out, (h, c) = m(x)
    loss = out.square().mean() + c.square().mean()
    return out, c, torch.autograd.grad(loss, [x, *m.parameters()])


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, float32 (TF32 off) vs float64 reference")
    print("| config | size | output | c_n | worst gradient |\n|---|---|---:|---:|---:|")
    for config in ("default", "article"):
        kwargs = CONFIGS[config][0]
        for size, (T, B, I, H, layers) in SIZES.items():
            torch.manual_seed(0)
            m = PeepholeLSTM(I, H, layers, device="cuda", **kwargs)
            m64 = PeepholeLSTM(I, H, layers, device="cuda", dtype=torch.float64, **kwargs)
            m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
            x = torch.randn(T, B, I, device="cuda")
            for _ in range(3):  # eager, capture, replay
                out, c, grads = run(m, x, "auto")
            out_r, c_r, grads_r = run(m64, x.double(), "reference")
            worst = max(rel(g, w) for g, w in zip(grads, grads_r))
            print(f"| {config} | {size} | {rel(out, out_r):.1e} | {rel(c, c_r):.1e} | {worst:.1e} |", flush=True)
    peephole_lstm.set_backend("auto")


if __name__ == "__main__":
    main()
