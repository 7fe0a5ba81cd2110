"""Forecast quality several steps ahead: the default config trained with ``--data.horizon H``
against ETS and ARIMA forecasting the same ``H`` steps from the same origins.

benchmarks/quality.py compares one-step forecasts; a forecaster usually needs more. For each
series of that benchmark, ``H`` is the M4 competition's horizon for its frequency (weekly 13,
monthly 18, quarterly 8, yearly 6). Ours: ``peephole-lstm fit --config configs/default.yaml
--data.horizon H`` (one network output per step, the conformal intervals per step), its
backtest over every test window (``forecast.csv``). ETS and ARIMA (statsforecast's AutoETS /
AutoARIMA, seasonal with the series' season): fitted once on the train + validation rows,
then with their parameters fixed, an ``H``-step forecast with 80% intervals from each of the
same origins, from the actual history up to it. Naive: the last value for every step;
seasonal naive: the value one season before each target.

Per series: the MSE over every window and step (original units) of each, ours / the better
classical one with a 90% interval (a moving-block bootstrap over the windows' mean squared
errors, as in quality.py), the ratio at step 1 and at step ``H``, and the 80% coverage.

    pip install -e ".[benchmarks]"
    python benchmarks/horizons.py                 # ~12 minutes on 2 CPU cores
    python benchmarks/horizons.py --series air nile --seeds 42 1
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
sys.path.insert(0, ROOT)

from quality import SERIES, ci, describe, interval, ratio_draws, run_cli  # noqa: E402
from speed import cpu_model  # noqa: E402

from peephole_lstm import SeriesDataModule  # noqa: E402

M4_HORIZON = {52: 13, 12: 18, 4: 8, 1: 6}  # season (weekly, monthly, quarterly, yearly) -> H


def origins(n: int, n_test: int, h: int, window: int) -> np.ndarray:
    """The rows of the first target of every test window (as the data module makes them):
    every target of a window inside the last ``n_test`` rows."""
    return np.arange(max(n - n_test, window), n - h + 1)


def classical_paths(y: np.ndarray, n_fit: int, season: int, starts: np.ndarray, h: int) -> dict:
    """AutoETS and AutoARIMA fitted on ``y[:n_fit]``; with their parameters fixed, the ``h``-step
    forecast and 80% interval from each origin (``y[:e]`` for ``e`` in ``starts``):
    ``{name: (mean, lo, hi)}`` each ``(len(starts), h)``, and ``<name>_desc``."""
    from statsforecast.models import AutoARIMA, AutoETS

    out = {}
    for name, model in (("ets", AutoETS(season_length=season)), ("arima", AutoARIMA(season_length=season))):
        fit = model.fit(y[:n_fit].astype(np.float64))
        paths = [fit.forward(y=y[:e].astype(np.float64), h=h, level=[80]) for e in starts]
        out[name] = tuple(np.stack([p[k] for p in paths]) for k in ("mean", "lo-80", "hi-80"))
        out[f"{name}_desc"] = describe(fit)
    return out


def our_paths(run_dir: str, y: np.ndarray, starts: np.ndarray, h: int) -> tuple[np.ndarray, ...]:
    """Our backtest (``forecast.csv``) as ``(forecast, lo_80, hi_80)``, each ``(windows, h)`` in
    the order of ``starts``; checked against the actual values ``y``."""
    f = pd.read_csv(os.path.join(run_dir, "forecast.csv"))
    f = f[f["kind"] == "backtest"]
    if len(f) != len(starts) * h:
        raise RuntimeError(f"{run_dir}: {len(f)} backtest rows, expected {len(starts)} windows x {h} steps")
    cols = [f[c].to_numpy(np.float64).reshape(len(starts), h) for c in ("forecast", "lo_80", "hi_80", "actual")]
    want = y[starts[:, None] + np.arange(h)]
    if not np.allclose(cols[3], want, rtol=1e-5):
        raise RuntimeError(f"{run_dir}: the backtest's actual values are not the test windows' targets")
    return tuple(cols[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    parser.add_argument("--series", nargs="+", default=list(SERIES), choices=list(SERIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    args = parser.parse_args()
    import yaml

    window = int(yaml.safe_load(open(args.config))["data"]["window"])
    work = tempfile.mkdtemp(prefix="peephole-horizons-")
    rows = []
    for name in args.series:
        frame = SERIES[name][0]()
        csv = os.path.join(work, f"{name}.csv")
        frame.to_csv(csv, index=False)
        dm = SeriesDataModule(csv, window=window)
        n_train, n_val, n_test = dm.split_rows[0]
        y, m = dm.series, dm.season
        h = M4_HORIZON.get(m, 6)
        starts = origins(len(y), n_test, h, window)
        target = y[starts[:, None] + np.arange(h)]  # (windows, h)
        cl = classical_paths(y, n_train + n_val, m, starts, h)
        naive = np.repeat(y[starts - 1][:, None], h, axis=1)
        back = starts[:, None] + np.arange(h) - m * (np.arange(h) // m + 1)  # one season (or more) before
        snaive = y[back]
        for seed in args.seeds:
            run = os.path.join(work, f"{name}-{seed}")
            run_cli(args.config, csv, run, ["--seed_everything", str(seed), "--data.horizon", str(h)])
            ours, lo, hi = our_paths(run, y, starts, h)
            sq = {k: (f - target) ** 2 for k, f in (("ours", ours), ("naive", naive), ("snaive", snaive),
                                                    ("ets", cl["ets"][0]), ("arima", cl["arima"][0]))}
            best = min(("ets", "arima"), key=lambda k: sq[k].mean())
            cover = {"ours": np.mean((lo <= target) & (target <= hi)),
                     **{k: np.mean((cl[k][1] <= target) & (target <= cl[k][2])) for k in ("ets", "arima")}}
            rows.append({"series": name, "seed": seed, "h": h, "windows": len(starts), "sq": sq, "best": best,
                         "cover": cover, "ets_desc": cl["ets_desc"], "arima_desc": cl["arima_desc"],
                         "draws": ratio_draws(sq["ours"].mean(1), sq[best].mean(1))})
            print(f"{name} (H={h}), seed {seed}: ours {sq['ours'].mean():.4g}, ETS {sq['ets'].mean():.4g}, "
                  f"ARIMA {sq['arima'].mean():.4g}", flush=True)
    print(f"\n# {os.path.basename(args.config)} with --data.horizon H (the M4 horizon), every test window and "
          f"step; MSE in the series' units; {cpu_model()}")
    print("| series | seed | H | windows | ours | naive | seasonal naive | ETS | ARIMA "
          "| ours / better classical [90%] | step 1 | step H | 80% coverage: ours / ETS / ARIMA |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios: dict[int, list[float]] = {}
    for r in rows:
        sq, b = r["sq"], r["best"]
        ratio = sq["ours"].mean() / sq[b].mean()
        ratios.setdefault(r["seed"], []).append(ratio)
        first, last = sq["ours"][:, 0].mean() / sq[b][:, 0].mean(), sq["ours"][:, -1].mean() / sq[b][:, -1].mean()
        mark = "**" if ratio < 1 else ""
        c = r["cover"]
        print(f"| {r['series']} | {r['seed']} | {r['h']} | {r['windows']} | {mark}{sq['ours'].mean():.4g}{mark} "
              f"| {sq['naive'].mean():.4g} | {sq['snaive'].mean():.4g} | {sq['ets'].mean():.4g} {r['ets_desc']} "
              f"| {sq['arima'].mean():.4g} {r['arima_desc']} | {ratio:.2f}x {ci(interval(r['draws']))} | {first:.2f}x "
              f"| {last:.2f}x | {c['ours']:.0%} / {c['ets']:.0%} / {c['arima']:.0%} |")
    for seed, v in ratios.items():
        print(f"seed {seed}: ours / the better classical model, geometric mean {math.exp(np.mean(np.log(v))):.2f}x; "
              f"ours better on {sum(x < 1 for x in v)}/{len(v)}")


if __name__ == "__main__":
    main()
