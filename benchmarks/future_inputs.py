"""Inputs known ahead (``--data.future_features``) against the same column known only up to the
forecast origin (``--data.features``), and against the classical peer that uses it the same
way: ARIMA with the covariate as a regressor (regression with ARIMA errors, statsforecast's
AutoARIMA with ``X``), beside plain AutoARIMA.

Every fit is the default config (configs/default.yaml, horizon 1) through the ``peephole-lstm``
command; the classical models are fitted on the train + validation rows, then with their
parameters fixed forecast each test target one step ahead from the actual history (as in
benchmarks/quality.py), with the covariate's value at the target for ARIMAX.

Series (nothing is downloaded):

* ``promo``: generated daily sales over two years: a slow random walk, a weekly pattern, and
  +3 on promotion days (a coin flip, 30%, planned ahead): the additive effect ARIMAX assumes.
* ``heat``: generated daily electricity demand over three years: weekly pattern, AR(1) noise,
  and a U-shaped effect of the day's temperature (heating below 16 °C, cooling above 22 °C),
  the temperature a seasonal cycle plus weather noise, known ahead as a forecast would give it
  (here exact): an effect no linear regressor captures.
* ``consumption``: real quarterly US data (statsmodels' macrodata, 1959-2009): the growth of
  real personal consumption, with the growth of real disposable income of the same quarter
  known, as in a scenario forecast (Hyndman & Athanasopoulos, FPP3 §10.2, fits the same
  regression with ARIMA errors to the same two series).

    pip install -e ".[benchmarks]"
    python benchmarks/future_inputs.py                 # ~6 minutes on 2 CPU cores
    python benchmarks/future_inputs.py --seeds 42 1 2
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

from quality import backtest_errors, ci, describe, interval, ratio_draws, run_cli  # noqa: E402
from speed import cpu_model  # noqa: E402

from peephole_lstm import SeriesDataModule  # noqa: E402


def promo(seed: int = 0) -> tuple[pd.DataFrame, str, int]:
    rng = np.random.default_rng(seed)
    n = 730
    days = pd.date_range("2023-01-02", periods=n, freq="D")
    plan = (rng.random(n) < 0.3).astype(float)
    weekly = np.array([0.0, -0.5, -0.3, 0.2, 1.0, 2.0, 1.5])[np.asarray(days.dayofweek)]
    sales = 50 + np.cumsum(rng.normal(scale=0.3, size=n)) + weekly + 3.0 * plan + rng.normal(scale=0.3, size=n)
    return pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "promo": plan, "sales": sales.round(3)}), "promo", 7


def heat(seed: int = 0) -> tuple[pd.DataFrame, str, int]:
    rng = np.random.default_rng(seed)
    n = 1095
    days = pd.date_range("2022-01-03", periods=n, freq="D")
    t = np.arange(n)
    temp = 14 - 10 * np.cos(2 * np.pi * t / 365.25) + rng.normal(scale=3.0, size=n)
    weekly = np.where(np.asarray(days.dayofweek) >= 5, -8.0, 0.0)
    noise = np.zeros(n)
    for k in range(1, n):
        noise[k] = 0.8 * noise[k - 1] + rng.normal(scale=1.5)
    demand = 100 + 2.5 * np.clip(16 - temp, 0, None) + 3.0 * np.clip(temp - 22, 0, None) + weekly + noise
    return pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "temp": temp.round(2), "demand": demand.round(3)}), \
        "temp", 7


def consumption(seed: int = 0) -> tuple[pd.DataFrame, str, int]:
    import statsmodels.api as sm

    d = sm.datasets.macrodata.load_pandas().data
    dates = pd.PeriodIndex.from_fields(year=d["year"].astype(int), quarter=d["quarter"].astype(int),
                                       freq="Q").to_timestamp()
    growth = lambda col: 100 * np.diff(np.log(d[col].to_numpy()))  # noqa: E731  (% per quarter)
    return pd.DataFrame({"date": dates[1:].strftime("%Y-%m-%d"), "income": growth("realdpi").round(4),
                         "consumption": growth("realcons").round(4)}), "income", 4


CASES = {"promo": promo, "heat": heat, "consumption": consumption}


def with_next_step(frame: pd.DataFrame, x_col: str, season: int) -> pd.DataFrame:
    """``frame`` with one more row: the step after its last (a day, or a quarter for season 4),
    the known-ahead column ``x_col`` given (its last value: only the forecast past the data
    reads it), the target empty."""
    last = pd.Timestamp(frame["date"].iloc[-1])
    nxt = last + (pd.DateOffset(months=3) if season == 4 else pd.Timedelta(days=1))
    return pd.concat([frame, pd.DataFrame({"date": [nxt.strftime("%Y-%m-%d")], x_col: [frame[x_col].iloc[-1]]})],
                     ignore_index=True)


def arima(y: np.ndarray, x: np.ndarray | None, n_fit: int, season: int) -> tuple[np.ndarray, str]:
    """AutoARIMA (with regressor ``x`` (n,) when given) fitted on the first ``n_fit`` rows, then
    one-step forecasts of every row with the parameters fixed."""
    from statsforecast.models import AutoARIMA

    X = None if x is None else x.reshape(-1, 1).astype(np.float64)
    fit = AutoARIMA(season_length=season).fit(y[:n_fit].astype(np.float64), None if X is None else X[:n_fit])
    res = fit.forward(y=y.astype(np.float64), h=1, X=X, X_future=None if X is None else X[-1:], fitted=True)
    desc = describe(fit)
    if X is not None:
        coef = fit.model_["coef"]
        desc += f", x coef {float(coef.get('ex_1', np.nan)):.3g}" if isinstance(coef, dict) else ""
    return res["fitted"], desc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="peephole-future-")
    rows = []
    for case in args.cases:
        frame, x_col, season = CASES[case]()
        target = frame.columns[-1]
        past = os.path.join(work, f"{case}.csv")
        frame.to_csv(past, index=False)
        dm = SeriesDataModule(past, target=target, features=[x_col], window=52)
        n_train, n_val, n_test = dm.split_rows[0]
        y, x = frame[target].to_numpy(np.float64), frame[x_col].to_numpy(np.float64)
        actual = y[-n_test:]
        plain, plain_desc = arima(y, None, n_train + n_val, season)
        arimax, arimax_desc = arima(y, x, n_train + n_val, season)
        classical = {"ARIMA": ((plain[-n_test:] - actual) ** 2, plain_desc),
                     "ARIMAX": ((arimax[-n_test:] - actual) ** 2, arimax_desc)}
        naive = ((y[-n_test - 1 : -1] - actual) ** 2).mean()
        # known ahead: the covariate of the step after the last row is given, the target empty
        ahead = os.path.join(work, f"{case}-ahead.csv")
        with_next_step(frame, x_col, season).to_csv(ahead, index=False)
        for seed in args.seeds:
            got = {}
            for name, csv, option in (("past", past, "--data.features"), ("ahead", ahead, "--data.future_features")):
                run = os.path.join(work, f"{case}-{seed}-{name}")
                metrics = run_cli(args.config, csv, run, ["--seed_everything", str(seed), option, f"[{x_col}]",
                                                          "--data.target", target]).iloc[0]
                got[name] = (backtest_errors(run, actual), metrics)
            rows.append((case, seed, n_test, naive, got, classical))
            print(f"{case}, seed {seed}: ours past-only {got['past'][0].mean():.4g}, known ahead "
                  f"{got['ahead'][0].mean():.4g}; ARIMA {classical['ARIMA'][0].mean():.4g}, ARIMAX "
                  f"{classical['ARIMAX'][0].mean():.4g}", flush=True)
    print(f"\n# one-step test MSE, default config; inputs known ahead vs past only; {cpu_model()}")
    print("| series | seed | test targets | naive | ours, past only | ours, known ahead | ARIMA | ARIMAX "
          "| known ahead / past only [90%] | known ahead / ARIMAX [90%] | 80% coverage (known ahead) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for case, seed, n_test, naive, got, classical in rows:
        ahead, past = got["ahead"][0], got["past"][0]
        ax = classical["ARIMAX"][0]
        r1, r2 = ratio_draws(ahead, past), ratio_draws(ahead, ax)
        ratios.append(ahead.mean() / ax.mean())
        print(f"| {case} | {seed} | {n_test} | {naive:.4g} | {past.mean():.4g} | {ahead.mean():.4g} "
              f"| {classical['ARIMA'][0].mean():.4g} {classical['ARIMA'][1]} | {ax.mean():.4g} {classical['ARIMAX'][1]} "
              f"| {ahead.mean() / past.mean():.2f}x {ci(interval(r1))} | {ahead.mean() / ax.mean():.2f}x {ci(interval(r2))} "
              f"| {got['ahead'][1]['coverage_80']:.0%} |")
    print(f"\nknown ahead / ARIMAX, geometric mean: {math.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
