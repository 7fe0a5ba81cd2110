"""Where the CUDA path's time goes: torch.profiler over a few training (or inference) steps of
PeepholeLSTM at a benchmark size, the kernels by total GPU time.

    python benchmarks/cuda_profile.py --sizes S1 S3 [--inference] [--config article]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.speed import CONFIGS, build, step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["S1", "S3"])
    parser.add_argument("--config", default="default", choices=list(CONFIGS))
    parser.add_argument("--inference", action="store_true")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    for size in args.sizes:
        model, x, backend, env = build("fused/triton", size, "cuda", args.config)
        for _ in range(3):  # eager, capture, replay
            step(model, x, backend, env, not args.inference)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                step(model, x, backend, env, not args.inference)
            torch.cuda.synchronize()
        mode = "inference" if args.inference else "training"
        print(f"## {size} {args.config} {mode}, {args.steps} steps")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
