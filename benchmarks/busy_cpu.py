"""Training speed on a busy CPU: ours vs ``nn.LSTM`` with other processes keeping cores busy.

A shared laptop or CI runner rarely gives a job every core. When a thread of a parallel region
is descheduled, every other thread waits for it at the region's end, so per-step work split
across threads can turn a seconds-long job into minutes. This script times the training loop
of the default CLI model (2 layers, 32 units, window 52, batch 64, Adam) on an idle machine and
with ``--hogs`` busy-looping processes, for ``nn.LSTM`` and ``PeepholeLSTM``, and prints the
slowdowns side by side.

    python benchmarks/busy_cpu.py                 # ~1 minute on 2 cores
    python benchmarks/busy_cpu.py --hogs 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from speed import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import peephole_lstm  # noqa: E402
from peephole_lstm import PeepholeLSTM  # noqa: E402


def _hog(kind: str) -> None:
    if kind == "spin":  # a pure-Python busy loop: one core
        while True:
            pass
    # another PyTorch training job (2 intra-op threads): an nn.LSTM language-model-sized loop
    rnn = nn.LSTM(200, 200, 2)
    x = torch.randn(35, 20, 200)
    while True:
        rnn(x)[0].sum().backward()


def train_time(make, steps: int, batch: int, window: int, hidden: int, layers: int) -> float:
    torch.manual_seed(0)
    rnn = make(1, hidden, layers)
    head = nn.Linear(hidden, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=1e-3)
    x = torch.randn(batch, window, 1)
    y = torch.randn(batch, 1)

    def step():
        opt.zero_grad()
        _, (h, _) = rnn(x)
        loss = torch.nn.functional.mse_loss(head(h[-1]), y)
        loss.backward()
        opt.step()

    for _ in range(min(5, steps)):  # warm-up: kernel load, GEMM path measurement
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hogs", type=int, nargs="+", default=[1], help="busy processes to start (each run)")
    parser.add_argument("--hog-kinds", nargs="+", default=["spin", "torch"], choices=["spin", "torch"],
                        help="spin: a Python busy loop; torch: a process running multithreaded GEMMs")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--window", type=int, default=52)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    models = {
        "nn.LSTM": lambda i, h, n: nn.LSTM(i, h, n, batch_first=True),
        "PeepholeLSTM": lambda i, h, n: PeepholeLSTM(i, h, n, batch_first=True),
    }
    shape = (args.steps, args.batch, args.window, args.hidden, args.layers)
    print(f"# {cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, backend {peephole_lstm.get_backend()}")
    print(f"# {args.steps} training steps of batch {args.batch} x window {args.window}, "
          f"{args.layers} layers x {args.hidden} units (the default CLI model)")
    idle = {name: train_time(make, *shape) for name, make in models.items()}
    print("| other load | nn.LSTM s | PeepholeLSTM s | nn.LSTM slowdown | PeepholeLSTM slowdown |")
    print("|---|---:|---:|---:|---:|")
    print(f"| none | {idle['nn.LSTM']:.2f} | {idle['PeepholeLSTM']:.2f} | 1.0x | 1.0x |")
    for kind, hogs in [(k, n) for k in args.hog_kinds for n in args.hogs]:
        ctx = mp.get_context("spawn")  # a fresh process (OpenMP does not survive fork)
        procs = [ctx.Process(target=_hog, args=(kind,), daemon=True) for _ in range(hogs)]
        for p in procs:
            p.start()
        try:
            time.sleep(0.5 if kind == "spin" else 4.0)  # the torch job imports torch first
            busy = {name: train_time(make, *shape) for name, make in models.items()}
        finally:
            for p in procs:
                p.terminate()
                p.join()
        what = f"{hogs} x {'Python busy loop' if kind == 'spin' else 'PyTorch nn.LSTM training job (2 threads)'}"
        print(f"| {what} | {busy['nn.LSTM']:.2f} | {busy['PeepholeLSTM']:.2f} | "
              f"{busy['nn.LSTM'] / idle['nn.LSTM']:.1f}x | {busy['PeepholeLSTM'] / idle['PeepholeLSTM']:.1f}x |")


if __name__ == "__main__":
    main()
