"""Precise timing: do peepholes help an LSTM fire at exactly the right step?

In the spirit of Gers, Schraudolph & Schmidhuber (JMLR 2002, "Learning Precise Timing with
LSTM Recurrent Networks"): a cue spike arrives at a random step in the first ``jitter``
steps; the network must output a spike exactly ``delay`` steps after the cue and nothing
elsewhere ("generating timed spikes"). A sequence counts as solved when the output is above
0.5 at the target step and below 0.5 everywhere else after the cue. The same small network
(one layer of ``hidden`` units and a linear read-out) is trained with ``peephole="diagonal"``,
``"none"`` and ``"full"``, over several seeds, at the same budget (Adam, same steps, same
data order per seed).

    python benchmarks/timing.py            # the full run (about ten minutes on 2 CPU cores)
    python benchmarks/timing.py --quick    # a smoke test (seconds), run in CI

Prints a table (success rate over seeds, final error, steps to solve) and saves a plot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from peephole_lstm import PeepholeLSTM  # noqa: E402

MODES = ("diagonal", "none", "full")


def make_batch(n: int, delay: int, jitter: int, length: int, gen: torch.Generator):
    """Inputs (L, n, 1) with one cue spike; targets (L, n, 1) with one spike `delay` later."""
    cue = torch.randint(0, jitter, (n,), generator=gen)
    x = torch.zeros(length, n, 1)
    y = torch.zeros(length, n, 1)
    x[cue, torch.arange(n), 0] = 1.0
    y[cue + delay, torch.arange(n), 0] = 1.0
    return x, y, cue


class Timer(nn.Module):
    def __init__(self, hidden: int, peephole: str) -> None:
        super().__init__()
        self.lstm = PeepholeLSTM(1, hidden, peephole=peephole)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.lstm(x)[0])  # logits (L, n, 1)


def solved(logits: torch.Tensor, y: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
    """Per sequence: spike above 0.5 at the target step, below 0.5 at every other step after the cue."""
    p = torch.sigmoid(logits[..., 0])  # (L, n)
    t = torch.arange(p.size(0)).unsqueeze(1)
    after = t >= cue.unsqueeze(0)
    target = y[..., 0] > 0.5
    hit = (p > 0.5) & target
    false = (p > 0.5) & ~target & after
    return hit.any(0) & ~false.any(0)


def run(mode: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    model = Timer(args.hidden, mode)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    # The spike is 1 step in `length`: weight it up so the network cannot ignore it.
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(args.pos_weight))
    data = torch.Generator().manual_seed(1000 + seed)
    val = make_batch(512, args.delay, args.jitter, args.length, torch.Generator().manual_seed(7))
    steps_to_solve = None
    curve = []
    for step in range(1, args.steps + 1):
        x, y, _ = make_batch(args.batch, args.delay, args.jitter, args.length, data)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                logits = model(val[0])
                rate = solved(logits, val[1], val[2]).float().mean().item()
                err = ((torch.sigmoid(logits) - val[1]) ** 2).mean().item()
            curve.append((step, rate))
            if steps_to_solve is None and rate >= args.solve_rate:
                steps_to_solve = step
    return {"mode": mode, "seed": seed, "rate": rate, "mse": err, "steps": steps_to_solve, "curve": curve,
            "model": model, "val": val}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds: smoke test")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2500, help="Adam updates per run")
    parser.add_argument("--delay", type=int, default=50, help="steps from cue to the spike to emit")
    parser.add_argument("--jitter", type=int, default=10, help="the cue comes in the first `jitter` steps")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--pos_weight", type=float, default=4.0, help="BCE weight of the spike step")
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--solve_rate", type=float, default=0.95, help="solved: this share of sequences right")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--plot", default=os.path.join(ROOT, "benchmarks", "results", "timing.png"))
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.delay, args.eval_every = 1, 60, 12, 20
        args.plot = os.path.join("runs", "timing_quick.png")
    args.length = args.delay + args.jitter + 5

    t0 = time.time()
    results = {m: [run(m, s, args) for s in range(args.seeds)] for m in args.modes}
    print(f"\nTimed-spike task: emit a spike exactly {args.delay} steps after a cue (cue in the first "
          f"{args.jitter} steps), PeepholeLSTM(1, {args.hidden}) + Linear, Adam lr {args.lr}, "
          f"{args.steps} updates of batch {args.batch}, {args.seeds} seeds ({time.time() - t0:.0f} s)")
    print(f"solved: at least {args.solve_rate:.0%} of 512 validation sequences exactly right at an evaluation "
          f"(every {args.eval_every} updates); 'at the end': after the last update\n")
    print("| peephole | seeds that solved it | sequences right at the end (mean over seeds) | final MSE (mean) "
          "| updates to solve (median of solved) |")
    print("|---|---:|---:|---:|---:|")
    for mode, rs in results.items():
        ok = [r["steps"] for r in rs if r["steps"] is not None]
        med = f"{statistics.median(ok):.0f}" if ok else "–"
        print(f"| {mode} | {len(ok)}/{len(rs)} | {statistics.mean(r['rate'] for r in rs):.1%} | "
              f"{statistics.mean(r['mse'] for r in rs):.5f} | {med} |")
    plot(results, args)
    print(f"\nplot: {args.plot}")


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    colors = {"diagonal": "tab:blue", "none": "tab:orange", "full": "tab:green"}
    for mode, rs in results.items():
        for k, r in enumerate(rs):
            steps, rates = zip(*r["curve"])
            ax1.plot(steps, rates, color=colors[mode], alpha=0.6, label=mode if k == 0 else None)
        best = max(rs, key=lambda r: r["rate"])
        x, y, cue = best["val"]
        with torch.no_grad():
            p = torch.sigmoid(best["model"](x[:, :1]))[:, 0, 0]
        ax2.plot(p.numpy(), color=colors[mode], label=f"{mode} (best seed)")
    ax2.plot(y[:, 0, 0].numpy(), color="black", linestyle=":", label="target")
    ax2.axvline(int(cue[0]), color="grey", linewidth=0.8)
    ax1.set(xlabel="Adam updates", ylabel="validation sequences exactly right", title="Learning curves (each seed)")
    ax2.set(xlabel="time step", ylabel="output", title="One validation sequence (cue at the grey line)")
    ax1.legend()
    ax2.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
