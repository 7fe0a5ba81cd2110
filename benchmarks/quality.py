"""Forecast quality against classical peers, on real series that installed packages bundle.

For each series the default config (configs/default.yaml: one config, no per-series tuning)
is trained through the ``peephole-lstm`` command exactly as a user runs it, and its one-step
test metrics (original units) are set beside, on the same test targets:

* naive (the last value) and seasonal naive (the value one season earlier);
* ETS and ARIMA (statsforecast's AutoETS / AutoARIMA, seasonal with the series' season),
  fitted on the train + validation rows, then with their parameters fixed, one-step
  forecasts over the test targets (each from the actual history up to its origin);
* the intervals: our 80% and 95% coverage and MSIS (the M4 mean scaled interval score)
  beside those of ETS's and ARIMA's own one-step prediction intervals.

Then one global model on a long-format panel of the same series (``--data.id_column``), its
per-series test MSE next to each series trained alone, and the same ratio on the validation
windows (each run's best checkpoint, the one chosen there).

How much of a ratio is noise: with 15-343 test targets, each MSE ratio carries a 90% interval
from a moving-block bootstrap of the paired per-target squared errors (blocks of ``n^(1/3)``
consecutive targets, circular, so the errors' autocorrelation stays inside a block), and each
80% coverage the range of hits that a calibrated interval would give in 90% of test sets of
that size (binomial: 9-14 of 15, 20-27 of 30).

Series (nothing is downloaded): Mauna Loa CO2 (weekly, embedded here), and from
``statsmodels.datasets``: yearly sunspots (1700-2008), monthly El Niño sea surface
temperature (1950-2010), quarterly US unemployment (macrodata, 1959-2009), the yearly Nile
flow (1871-1970); from statsforecast: monthly air passengers (1949-1960).

    pip install -e ".[benchmarks]"   # statsforecast, statsmodels
    python benchmarks/quality.py                  # ~11 minutes on 2 CPU cores (AutoARIMA on CO2: ~7)
    python benchmarks/quality.py --seeds 42 1 2   # the LSTM over three seeds (classical fits once): ~17
    python benchmarks/quality.py --series co2 sunspots --no-panel
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from peephole_lstm import SeriesDataModule  # noqa: E402
from peephole_lstm.forecast.datamodule import load_builtin  # noqa: E402


def _statsmodels(name: str) -> pd.DataFrame:
    import statsmodels.api as sm

    data = getattr(sm.datasets, name).load_pandas().data
    if name == "sunspots":
        return pd.DataFrame({"date": data["YEAR"].astype(int), "value": data["SUNACTIVITY"]})
    if name == "nile":
        return pd.DataFrame({"date": data["year"].astype(int), "value": data["volume"]})
    if name == "elnino":
        months = data.drop(columns="YEAR").to_numpy().ravel()
        dates = pd.date_range(f"{int(data['YEAR'].iloc[0])}-01-01", periods=len(months), freq="MS")
        return pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "value": months})
    if name == "macrodata":
        dates = pd.PeriodIndex.from_fields(year=data["year"].astype(int), quarter=data["quarter"].astype(int),
                                           freq="Q").to_timestamp()
        return pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "value": data["unemp"]})
    raise KeyError(name)


def _air() -> pd.DataFrame:
    from statsforecast.utils import AirPassengersDF

    d = AirPassengersDF
    return pd.DataFrame({"date": pd.to_datetime(d["ds"]).dt.to_period("M").dt.to_timestamp().dt.strftime("%Y-%m-%d"),
                         "value": d["y"].to_numpy()})


SERIES = {
    # name: (loader, description)
    "co2": (lambda: load_builtin("co2").rename(columns={"co2": "value"}), "weekly, trend + yearly season"),
    "sunspots": (lambda: _statsmodels("sunspots"), "yearly, ~11-year cycle, noisy"),
    "elnino": (lambda: _statsmodels("elnino"), "monthly SST, season + ENSO"),
    "unemployment": (lambda: _statsmodels("macrodata"), "quarterly, business cycle"),
    "air": (_air, "monthly, trend + multiplicative season, short"),
    "nile": (lambda: _statsmodels("nile"), "yearly, level shift, short"),
}


def run_cli(config: str, csv: str, run_dir: str, extra: list[str]) -> pd.DataFrame:
    """``peephole-lstm fit`` on ``csv``; its per-series test metrics."""
    cmd = [sys.executable, "-m", "peephole_lstm", "fit", "--config", config, "--data.csv_path", csv,
           "--run_dir", run_dir, *extra]
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return pd.read_csv(os.path.join(run_dir, "metrics_per_series.csv"))


def ratio_draws(num: np.ndarray, den: np.ndarray, draws: int = 4000, seed: int = 0) -> np.ndarray:
    """``draws`` bootstrap replicates ``(draws,)`` of ``mean(num) / mean(den)``, the per-target
    squared errors ``(n,)`` of two forecasts of the same targets, by a circular moving-block
    bootstrap: each replicate takes ``ceil(n / L)`` blocks of ``L = round(n^(1/3))`` consecutive
    targets from random starts, the same targets for both forecasts (the pairing keeps what the
    two share)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = len(num)
    if n == 0 or len(den) != n:
        raise ValueError(f"ratio_draws: two error arrays of one length > 0, got {len(num)} and {len(den)}")
    L = max(1, round(n ** (1 / 3)))
    starts = np.random.default_rng(seed).integers(0, n, size=(draws, -(-n // L)))  # (draws, blocks)
    idx = ((starts[:, :, None] + np.arange(L)) % n).reshape(draws, -1)[:, :n]  # (draws, n)
    return num[idx].mean(axis=1) / den[idx].mean(axis=1)


def interval(draws: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    a = (1 - level) / 2
    return float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))


def geomean_interval(draws: list[np.ndarray], level: float = 0.9) -> tuple[float, float]:
    """A ``level`` interval of the geometric mean of several series' ratios, from each series'
    replicates ``(draws,)`` (the series' test sets resampled independently)."""
    return interval(np.exp(np.mean(np.log(np.stack(draws)), axis=0)), level)


def calibrated_hits(n: int, coverage: float = 0.8, level: float = 0.9) -> tuple[int, int]:
    """The central ``level`` range of hits ``Binomial(n, coverage)``: how many of ``n`` test
    targets a calibrated ``coverage`` interval covers in all but ``(1 - level) / 2`` of test sets
    on each side (the smallest ``k`` with ``P(X <= k) >= a``, the smallest with ``P(X <= k) >=
    1 - a``)."""
    a = (1 - level) / 2
    cdf, lo, hi = 0.0, None, None
    for k in range(n + 1):
        cdf += math.comb(n, k) * coverage**k * (1 - coverage) ** (n - k)
        if lo is None and cdf >= a - 1e-12:
            lo = k
        if hi is None and cdf >= 1 - a - 1e-12:
            hi = k
    return lo, hi


def backtest_errors(run_dir: str, actual: np.ndarray, series: str | None = None) -> np.ndarray:
    """Squared one-step errors of a run's backtest (its ``forecast.csv``; on a panel the rows of
    ``series``), in the order of ``actual`` (the test targets), which they must match."""
    f = pd.read_csv(os.path.join(run_dir, "forecast.csv"))
    f = f[(f["kind"] == "backtest") & (f["step"] == 1)]
    if series is not None:
        f = f[f["series"].astype(str) == series]
    if len(f) != len(actual) or not np.allclose(f["actual"].to_numpy(), actual, rtol=1e-5):
        raise RuntimeError(f"{run_dir}: the backtest of {series!r} is not the {len(actual)} test targets")
    return (f["forecast"].to_numpy(np.float64) - actual) ** 2


def data_overrides(extra: list[str]) -> dict:
    """The ``--data.<key> <value>`` (or ``--data.<key>=<value>``) options among CLI arguments,
    values read as YAML, as the CLI reads them."""
    out, args = {}, list(extra)
    for i, arg in enumerate(args):
        if arg.startswith("--data."):
            key, eq, value = arg[len("--data."):].partition("=")
            if not eq and i + 1 < len(args):
                value = args[i + 1]
            out[key] = yaml.safe_load(value)
    return out


def split_mse(run_dir: str, csv: str, data: dict, split: str = "val") -> dict[str, float]:
    """Per series, the MSE (original units) of a run's best checkpoint on ``split``'s windows
    (the run's own data options ``data``): how the model that was chosen scores where it was
    chosen."""
    import torch
    from torch.utils.data import DataLoader

    from peephole_lstm import PeepholeLSTMRegressor

    model = PeepholeLSTMRegressor.load_from_checkpoint(os.path.join(run_dir, "checkpoints", "best.ckpt"),
                                                       map_location="cpu").eval()
    dm = SeriesDataModule(csv, **data)
    if model.ar_lags:  # the rows its AR terms read (more than the window, e.g. CO2's 105)
        dm.set_lags(model.ar_lags)
    out = {}
    with torch.no_grad():
        for batch in DataLoader(dm.dataset(split), batch_size=256):
            pred = model(batch["x"], batch["series"], batch.get("future"))
            err = ((pred - batch["y"]) * batch["scale"]).pow(2)[:, 0]  # (N,), step 1
            for s, e in zip(batch["series"].tolist(), err.tolist()):
                out.setdefault(dm.series_names[s], []).append(e)
    return {k: float(np.mean(v)) for k, v in out.items()}


def classical(y: np.ndarray, n_fit: int, season: int) -> dict:
    """AutoETS and AutoARIMA fitted on ``y[:n_fit]``, parameters then fixed: one-step forecasts
    of every later row from the actual history (statsforecast's ``forward(fitted=True)``), with
    the models' own 80% and 95% one-step intervals (``<name>_lo_80``, ...)."""
    from statsforecast.models import AutoARIMA, AutoETS

    out = {}
    for name, model in (("ets", AutoETS(season_length=season)), ("arima", AutoARIMA(season_length=season))):
        fit = model.fit(y[:n_fit].astype(np.float64))
        res = fit.forward(y=y.astype(np.float64), h=1, fitted=True, level=[80, 95])
        out[name] = res["fitted"]
        for pct in (80, 95):
            out[f"{name}_lo_{pct}"], out[f"{name}_hi_{pct}"] = res[f"fitted-lo-{pct}"], res[f"fitted-hi-{pct}"]
        out[f"{name}_desc"] = describe(fit)
    return out


def describe(fit) -> str:
    """A fitted statsforecast AutoETS's method (``ETS(A,Ad,N)``) or AutoARIMA's orders
    (``(2,1,2)(2,1,0)[52]``)."""
    m = fit.model_
    if "arma" not in m:
        return m.get("method", "ETS")
    p, q, P, Q, s, d, D = m["arma"]
    return f"({p},{d},{q})" + (f"({P},{D},{Q})[{s}]" if s > 1 and (P or D or Q) else "")


def interval_scores(lo: np.ndarray, hi: np.ndarray, y: np.ndarray, level: float, scale: float) -> tuple[float, float]:
    """Coverage and the M4 mean scaled interval score (MSIS: width plus 2/alpha times the
    distance outside, over ``scale``, the in-sample seasonal naive MAE) of intervals [lo, hi]."""
    a = 1 - level
    score = (hi - lo) + 2 / a * (lo - y) * (y < lo) + 2 / a * (y - hi) * (y > hi)
    return float(np.mean((lo <= y) & (y <= hi))), float(np.mean(score) / scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    parser.add_argument("--series", nargs="+", default=list(SERIES), choices=list(SERIES))
    parser.add_argument("--no-panel", action="store_true", help="skip the global model on the panel")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="train with each seed (--seed_everything); the first seed's table in full, then every "
                             "seed's ratios")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI arguments for every fit")
    args = parser.parse_args()
    seeds = args.seeds or [None]
    runs = [evaluate(args, seed) for seed in seeds]
    if len(seeds) > 1:
        summarize(seeds, runs)


def evaluate(args, seed) -> dict:
    """One seed: the table of every series, then the panel; returns the numbers."""
    extra = (["--seed_everything", str(seed)] if seed is not None else []) + args.extra
    cfg = yaml.safe_load(open(args.config))
    data = {k: v for k, v in cfg["data"].items() if k != "dataset"}
    data.update(data_overrides(args.extra))  # the runs' own data options (e.g. --data.calendar true)
    work = tempfile.mkdtemp(prefix="peephole-quality-")
    rows, frames = [], []
    if seed is not None:
        print(f"\n## seed {seed}", flush=True)
    for name in args.series:
        frame = SERIES[name][0]()
        csv = os.path.join(work, f"{name}.csv")
        frame.to_csv(csv, index=False)
        frames.append(frame.assign(id=name))
        dm = SeriesDataModule(csv, **data)
        n_train, n_val, n_test = dm.split_rows[0]
        y = dm.series
        test_rows = np.arange(len(y) - n_test, len(y))  # horizon 1: the test targets
        ours = run_cli(args.config, csv, os.path.join(work, name), extra).iloc[0]
        val = next(iter(split_mse(os.path.join(work, name), csv, data).values()))
        assert ours["targets"] == len(test_rows), (name, ours["targets"], len(test_rows))
        target = y[test_rows]
        sq = backtest_errors(os.path.join(work, name), target)
        key = (name, n_train + n_val, dm.season)
        if key not in _CLASSICAL:  # the same fit for every seed
            _CLASSICAL[key] = classical(y, n_train + n_val, dm.season)
        cl = _CLASSICAL[key]
        mse = lambda f, target=target: float(np.mean((f - target) ** 2))  # noqa: E731
        best = min(("ets", "arima"), key=lambda k: mse(cl[k][test_rows]))
        rows.append({
            "series": name, "kind": SERIES[name][1], "rows": len(y), "season": dm.season, "test": len(test_rows),
            "ours": ours["mse"], "mase": ours["mase"], "naive": mse(y[test_rows - 1]),
            "snaive": ours["snaive_mse"], "ets": mse(cl["ets"][test_rows]), "ets_desc": cl["ets_desc"],
            "arima": mse(cl["arima"][test_rows]), "arima_desc": cl["arima_desc"],
            "cov80": ours.get("coverage_80", math.nan), "cov95": ours.get("coverage_95", math.nan),
            "msis80": ours.get("msis_80", math.nan), "msis95": ours.get("msis_95", math.nan),
            **{f"{m}_{what}{pct}": v for m in ("ets", "arima") for pct in (80, 95) for what, v in zip(
                ("cov", "msis"), interval_scores(cl[f"{m}_lo_{pct}"][test_rows], cl[f"{m}_hi_{pct}"][test_rows],
                                                 target, pct / 100, dm.series_mase_scale[0]))},
            "target": target, "val": val, "sq": sq, "draws": ratio_draws(sq, (cl[best][test_rows] - target) ** 2),
        })
        print(f"{name}: ours {ours['mse']:.4g}, ETS {rows[-1]['ets']:.4g}, ARIMA {rows[-1]['arima']:.4g}", flush=True)

    from speed import cpu_model

    cpu = cpu_model()
    print(f"\n# {os.path.basename(args.config)}, one config for every series; one-step test MSE in the "
          f"series' units; {cpu}")
    print("| series | kind | rows | season | test targets | ours MSE | ours MASE | naive | seasonal naive "
          "| ETS | ARIMA | ours / best classical [90% interval] | 80% / 95% coverage | 80% hits (calibrated: 90% range) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {"naive": [], "ets": [], "arima": [], "best": []}
    for r in rows:
        best = min(r["ets"], r["arima"])
        for k, v in (("naive", r["naive"]), ("ets", r["ets"]), ("arima", r["arima"]), ("best", best)):
            ratios[k].append(r["ours"] / v)
        mark = "**" if r["ours"] < best else ""
        print(f"| {r['series']} | {r['kind']} | {r['rows']} | {r['season']} | {r['test']} | {mark}{r['ours']:.4g}{mark} "
              f"| {r['mase']:.3f} | {r['naive']:.4g} | {r['snaive']:.4g} | {r['ets']:.4g} {r['ets_desc']} "
              f"| {r['arima']:.4g} {r['arima_desc']} | {r['ours'] / best:.2f}x {ci(interval(r['draws']))} "
              f"| {r['cov80']:.0%} / {r['cov95']:.0%} | {_hits(r['cov80'], r['test'])} |")
    gm = {k: math.exp(np.mean(np.log(v))) for k, v in ratios.items()}
    wins = {k: sum(x < 1 for x in v) for k, v in ratios.items()}
    n = len(rows)
    print(f"\nours beats naive on {wins['naive']}/{n}, ETS on {wins['ets']}/{n}, ARIMA on {wins['arima']}/{n}, the "
          f"better of the two on {wins['best']}/{n}; geometric mean of MSE ratios: vs naive {gm['naive']:.2f}x, "
          f"vs ETS {gm['ets']:.2f}x, vs ARIMA {gm['arima']:.2f}x, vs the better {gm['best']:.2f}x "
          f"(90% interval {ci(geomean_interval([r['draws'] for r in rows]))})")

    print("\n# prediction intervals on the same test targets: ours (split-conformal, rolling) against ETS's and "
          "ARIMA's own one-step intervals (parameters fitted on train+validation, then fixed); MSIS = the M4 mean "
          "scaled interval score, lower is better")
    print("| series | 80% coverage: ours / ETS / ARIMA | 95% coverage: ours / ETS / ARIMA "
          "| MSIS 80%: ours / ETS / ARIMA | MSIS 95%: ours / ETS / ARIMA |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        cells = [" / ".join(f"{r[k]:{fmt}}" for k in (f"{what}{pct}", f"ets_{what}{pct}", f"arima_{what}{pct}"))
                 for what, fmt in (("cov", ".0%"), ("msis", ".2f")) for pct in (80, 95)]
        print(f"| {r['series']} | " + " | ".join(cells) + " |")
    msis = {k: math.exp(np.mean(np.log([r[k] for r in rows]))) for k in ("msis95", "ets_msis95", "arima_msis95")}
    print(f"\nMSIS 95%, geometric mean over the series: ours {msis['msis95']:.2f}, ETS {msis['ets_msis95']:.2f}, "
          f"ARIMA {msis['arima_msis95']:.2f}")

    result = {"rows": rows, "gm": gm, "panel": {}, "panel_ci": {}, "msis": msis}
    if args.no_panel or len(rows) < 2:
        return result
    panel = pd.concat(frames, ignore_index=True)[["id", "date", "value"]]
    csv = os.path.join(work, "panel.csv")
    panel.to_csv(csv, index=False)
    glob = run_cli(args.config, csv, os.path.join(work, "panel"), ["--data.id_column", "id", *extra])
    print("\n# one global model on the long-format panel of the series above (--data.id_column id)")
    print("| series | alone MSE | global MSE | global / alone [90% interval] | the same on validation "
          "| global 80% coverage |")
    print("|---|---:|---:|---:|---:|---:|")
    alone = {r["series"]: r for r in rows}
    val = split_mse(os.path.join(work, "panel"), csv, {**data, "id_column": "id"})
    draws = []
    for _, g in glob.iterrows():
        r = alone[g["series"]]
        sq = backtest_errors(os.path.join(work, "panel"), r["target"], series=g["series"])
        draws.append(ratio_draws(sq, r["sq"]))
        result["panel_ci"][g["series"]] = interval(draws[-1])
        print(f"| {g['series']} | {r['ours']:.4g} | {g['mse']:.4g} | {g['mse'] / r['ours']:.2f}x "
              f"{ci(result['panel_ci'][g['series']])} "
              f"| {val[g['series']] / r['val']:.2f}x | {_hits(g.get('coverage_80', math.nan), r['test'])} |")
        result["panel"][g["series"]] = g["mse"] / r["ours"]
    gm = math.exp(np.mean(np.log(list(result["panel"].values()))))
    print(f"\nglobal / alone, geometric mean: {gm:.2f}x {ci(geomean_interval(draws))}")
    return result


def ci(lo_hi: tuple[float, float]) -> str:
    """``[0.84, 1.11]``: an interval in a table cell."""
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"


def _hits(coverage: float, n: int) -> str:
    """``82% (281/343; 262-286)``: a coverage, its hits, and the calibrated 90% range of hits."""
    lo, hi = calibrated_hits(n)
    return f"{coverage:.0%} ({round(coverage * n)}/{n}; {lo}-{hi})"


_CLASSICAL: dict = {}  # (series, rows fitted, season) -> the classical forecasts


def summarize(seeds, runs) -> None:
    """Every seed side by side: ours / the better of ETS and ARIMA, 80% coverage, and the
    panel's global / alone, per series; the geometric means."""
    names = [r["series"] for r in runs[0]["rows"]]
    print(f"\n# over seeds {', '.join(map(str, seeds))}: ours / better of ETS and ARIMA (80% coverage) "
          "| global / alone on the panel")
    print("| series | " + " | ".join(f"seed {s}" for s in seeds) + " | " + " | ".join(f"panel, seed {s}" for s in seeds)
          + " |")
    print("|---|" + "---:|" * (2 * len(seeds)))
    for i, name in enumerate(names):
        cells = []
        for run in runs:
            r = run["rows"][i]
            cells.append(f"{r['ours'] / min(r['ets'], r['arima']):.2f}x ({r['cov80']:.0%})")
        cells += [f"{run['panel'][name]:.2f}x {ci(run['panel_ci'][name])}" if name in run["panel"] else ""
                  for run in runs]
        print(f"| {name} | " + " | ".join(cells) + " |")
    cov = [[run["rows"][i]["cov80"] for run in runs] for i in range(len(names))]
    mean_cov = [float(np.mean(c)) for c in cov]
    print("| **geometric mean** | " + " | ".join(f"**{run['gm']['best']:.2f}x**" for run in runs) + " | "
          + " | ".join(f"{math.exp(np.mean(np.log(list(run['panel'].values())))):.2f}x" if run["panel"] else ""
                       for run in runs) + " |")
    print("\nmean 80% coverage over the seeds: " + ", ".join(f"{n} {c:.0%}" for n, c in zip(names, mean_cov))
          + f"; in 75-85%: {sum(0.75 <= c <= 0.85 for c in mean_cov)}/{len(names)}; mean |coverage - 80%| "
          f"{np.mean([abs(c - 0.8) for c in mean_cov]) * 100:.1f} points")
    print("MSIS 95% (geometric mean over the series; lower is better): ours "
          + " / ".join(f"{run['msis']['msis95']:.2f}" for run in runs)
          + f" (seeds {', '.join(map(str, seeds))}), ETS {runs[0]['msis']['ets_msis95']:.2f}, "
          f"ARIMA {runs[0]['msis']['arima_msis95']:.2f}")
    wins = [sum(v <= 1.0 for v in run["panel"].values()) for run in runs if run["panel"]]
    if wins:
        print(f"panel: global no worse than alone on {', '.join(f'{w}/{len(names)}' for w in wins)} series "
              f"(seeds {', '.join(map(str, seeds))})")


if __name__ == "__main__":
    main()
