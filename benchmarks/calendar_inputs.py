"""Do the calendar inputs (``--data.calendar true``) help where the season is longer than the
window? A generated 15-minute series (a day is 96 steps; the default window is 52, 13 hours)
with a morning and an evening peak, lower weekends and AR(1) noise, trained through the
``peephole-lstm`` command with the default config, with and without the calendar inputs, over
seeds and horizons; test MSE and MASE (its season: the day, 96 steps) side by side.

    python benchmarks/calendar_inputs.py                       # ~8 minutes on 2 CPU cores
    python benchmarks/calendar_inputs.py --seeds 42 --horizons 1
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from quality import run_cli  # noqa: E402
from speed import cpu_model  # noqa: E402


def load_series(days: int = 56, seed: int = 0) -> pd.DataFrame:
    """``days`` of 15-minute values from Monday 2024-01-01: peaks at 08:00 and 19:00, 30% lower
    daytime on weekends, AR(1) noise (phi 0.9)."""
    rng = np.random.default_rng(seed)
    n = days * 96
    stamps = pd.date_range("2024-01-01", periods=n, freq="15min")
    hour = np.arange(n) % 96 / 4.0
    weekend = np.asarray(stamps.dayofweek >= 5)
    profile = 10 * np.exp(-0.5 * ((hour - 8) / 1.5) ** 2) + 15 * np.exp(-0.5 * ((hour - 19) / 2.0) ** 2)
    noise = np.zeros(n)
    for t in range(1, n):
        noise[t] = 0.9 * noise[t - 1] + rng.normal()
    value = 50 + profile * np.where(weekend, 0.7, 1.0) + noise
    return pd.DataFrame({"timestamp": stamps.strftime("%Y-%m-%d %H:%M"), "load": value.round(4)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--horizons", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="peephole-calendar-")
    csv = os.path.join(work, "load15.csv")
    load_series().to_csv(csv, index=False)
    rows = []
    for h in args.horizons:
        for seed in args.seeds:
            got = {}
            for cal in ("false", "true"):
                run = os.path.join(work, f"h{h}-s{seed}-{cal}")
                extra = ["--seed_everything", str(seed), "--data.horizon", str(h), "--data.calendar", cal]
                got[cal] = run_cli(args.config, csv, run, extra).iloc[0]
            rows.append((h, seed, got["false"], got["true"]))
            print(f"horizon {h}, seed {seed}: MSE {got['false']['mse']:.4g} -> {got['true']['mse']:.4g}", flush=True)
    print(f"\n# 15-minute generated load (56 days, season 96 > window 52), default config; {cpu_model()}")
    print("| horizon | seed | MSE without | MSE with calendar | with / without | MASE without / with "
          "| naive MSE | seasonal naive MSE | 80% coverage without / with |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for h, seed, off, on in rows:
        print(f"| {h} | {seed} | {off['mse']:.4g} | {on['mse']:.4g} | {on['mse'] / off['mse']:.2f}x "
              f"| {off['mase']:.3f} / {on['mase']:.3f} | {off['naive_mse']:.4g} | {off['snaive_mse']:.4g} "
              f"| {off['coverage_80']:.0%} / {on['coverage_80']:.0%} |")
    for h in args.horizons:
        r = [on["mse"] / off["mse"] for hh, _, off, on in rows if hh == h]
        print(f"horizon {h}: with / without, geometric mean over seeds {math.exp(np.mean(np.log(r))):.2f}x")


if __name__ == "__main__":
    main()
