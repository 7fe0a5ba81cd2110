"""A/B of the Triton path's tuning constants on a GPU, one process, alternating rounds:
the backward prologue's K block (kernels/triton.py BK_BWD) and the one-launch kernel's dot
precision under TF32 off (exact ieee FMA vs tf32x3's three tensor-core products). Median ms of a training step and of
inference with CUDA events, S1 and S3, float32.

    python benchmarks/cuda_tune.py
"""

from __future__ import annotations

import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.speed import build, step  # noqa: E402
from peephole_lstm import tuning  # noqa: E402
from peephole_lstm.ops.kernels import triton as tr  # noqa: E402

VARIANTS = {  # name: (BK_BWD, PEEPHOLE_LSTM_TRITON_DOT)
    "BK_BWD=128, ieee": (128, "ieee"),
    "BK_BWD=32, ieee": (32, "ieee"),
    "BK_BWD=128, tf32x3": (128, "tf32x3"),
}


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    print(f"# {torch.cuda.get_device_name()}, TF32 off, median of 15 alternating rounds (ms)")
    print("| size | mode | nn.LSTM | " + " | ".join(VARIANTS) + " |\n|---|---|" + "---:|" * (len(VARIANTS) + 1))
    for size in ("S1", "S3"):
        ours = build("fused/triton", size, "cuda")
        ref = build("nn.LSTM", size, "cuda")
        for train in (True, False):
            times: dict[str, list[float]] = {v: [] for v in ["nn.LSTM", *VARIANTS]}
            for r in range(17):
                for name in times:
                    if name == "nn.LSTM":
                        args = ref
                    else:
                        tr.BK_BWD, dot = VARIANTS[name]
                        tuning.set("triton_dot", dot)
                        tr.release_graphs()  # BK_BWD is not in the graph key
                        for _ in range(2):  # eager, capture
                            step(*ours, train)
                        args = ours
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    torch.cuda.synchronize()
                    a.record()
                    step(*args, train)
                    b.record()
                    torch.cuda.synchronize()
                    if r >= 2:
                        times[name].append(a.elapsed_time(b))
            med = {k: statistics.median(v) for k, v in times.items()}
            cells = [f"{med['nn.LSTM']:.2f}"] + [f"{med[v]:.2f} ({med[v] / med['nn.LSTM']:.2f}×)" for v in VARIANTS]
            print(f"| {size} | {'training' if train else 'inference'} | " + " | ".join(cells) + " |", flush=True)
    tuning.set("triton_dot", "")
    tr.BK_BWD = 128


if __name__ == "__main__":
    main()
