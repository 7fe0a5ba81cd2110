"""Forecasting at scale: the CLI's main job on generated panels of 100 to 100,000 series, time
per phase and peak memory, beside neuralforecast's ``LSTM`` on the same panel and machine.

Each panel is long format (``id,date,value``), daily, every series a random walk plus noise
plus a weekly season of its own amplitude and phase, around a level of its own. Ours runs as
a user runs it::

    peephole-lstm fit --config configs/default.yaml --data.csv_path panel.parquet \
        --data.id_column id --data.window 28 --data.horizon 7 --model.ensemble 1 \
        --trainer.max_steps 500

(load, AR fit + 500 optimizer steps with validation, test on every test window, forecast of
the future), in a process of its own, whose peak RSS is read from ``getrusage``. The phases'
times are the lines the CLI prints (``phase load: ...``). neuralforecast's ``LSTM`` gets the
same window (``input_size=28``), horizon, optimizer steps and windows per step (64), its
other settings its defaults, and is timed over ``fit`` plus ``cross_validation`` forecasts of
every test window (``refit=False``, step 1: the windows our test scores); its test MSE is
over the same targets as ours.

    pip install -e ".[benchmarks]" neuralforecast
    python benchmarks/scale.py                       # 100, 1,000, 10,000 series x 365 rows and 1,000 x 5,000
    python benchmarks/scale.py --series 100000 --rows 120 --no-nf
    python benchmarks/scale.py --series 2000 --steps 200 --format csv
    python benchmarks/scale.py --step-time           # one training step at 100 and 100,000 series
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW, HORIZON, BATCH = 28, 7, 64


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def panel(series: int, rows: int, seed: int = 0) -> pd.DataFrame:
    """``series`` daily series of ``rows`` rows each (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    level = rng.uniform(10, 100, series)[:, None]
    phase = rng.integers(0, 7, series)[:, None]
    season = rng.uniform(0.5, 3.0, series)[:, None] * np.sin(2 * np.pi * (t[None] + phase) / 7)
    walk = np.cumsum(rng.normal(0.0, 0.5, (series, rows)), axis=1)
    y = level + season + walk + rng.normal(0.0, 0.3, (series, rows))
    dates = pd.date_range("2010-01-01", periods=rows, freq="D").strftime("%Y-%m-%d")
    width = len(str(series - 1))
    ids = np.array([f"s{i:0{width}d}" for i in range(series)])
    return pd.DataFrame({"id": np.repeat(ids, rows), "date": np.tile(dates, series), "value": y.ravel().round(3)})


def child(cmd: list[str]) -> dict:
    """Runs ``cmd`` in a process of its own; its output, wall time and peak RSS (GB)."""
    helper = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
              "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(json.dumps({'rc': p.returncode, 'out': p.stdout + p.stderr, 'wall': time.perf_counter() - t, "
              "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20}))")
    out = subprocess.run([sys.executable, "-c", helper, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ours(path: str, steps: int, root: str) -> dict:
    cmd = [sys.executable, "-m", "peephole_lstm", "fit", "--config", os.path.join(ROOT, "configs", "default.yaml"),
           "--data.csv_path", path, "--data.id_column", "id", "--data.window", str(WINDOW),
           "--data.horizon", str(HORIZON), "--data.batch_size", str(BATCH), "--model.ensemble", "1",
           "--trainer.max_steps", str(steps), "--trainer.enable_progress_bar", "false",
           "--run_dir", os.path.join(root, "ours")]
    env_cmd = ["env", "PYTHONWARNINGS=ignore", *cmd]
    res = child(env_cmd)
    if res["rc"] != 0:
        raise RuntimeError(f"peephole-lstm failed:\n{res['out'][-3000:]}")
    phases = {m.group(1): float(m.group(2)) for m in re.finditer(r"^phase (\w+): .*?([\d.]+) s$", res["out"], re.M)}
    per = pd.read_csv(os.path.join(root, "ours", "metrics_per_series.csv"))
    mse = float((per["mse"] * per["targets"]).sum() / per["targets"].sum())
    steps_done = re.search(r"^phase fit: (\d+) optimizer steps", res["out"], re.M)
    return {"wall": res["wall"], "rss": res["rss"], "phases": phases, "mse": mse,
            "steps": int(steps_done.group(1)) if steps_done else None}


def nf_job(path: str, steps: int, test_rows: str) -> None:
    """(In a child process) neuralforecast's LSTM: fit + cross-validation forecasts of every
    test window; prints a JSON line."""
    import logging

    logging.disable(logging.WARNING)
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    t0 = time.perf_counter()
    df = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    df = df.rename(columns={"id": "unique_id", "date": "ds", "value": "y"})
    df["ds"] = pd.to_datetime(df["ds"])
    n_test, steps = int(test_rows), int(steps)
    model = LSTM(h=HORIZON, input_size=WINDOW, max_steps=steps, batch_size=BATCH, windows_batch_size=BATCH,
                 inference_windows_batch_size=1024, enable_progress_bar=False, logger=False,
                 enable_model_summary=False, accelerator="cpu", random_seed=42)
    nf = NeuralForecast(models=[model], freq="D")
    load = time.perf_counter() - t0
    cv = nf.cross_validation(df, n_windows=None, test_size=n_test, step_size=1, refit=False)
    total = time.perf_counter() - t0
    mse = float(((cv["LSTM"] - cv["y"]) ** 2).mean())
    print(json.dumps({"load": load, "fit_and_cv": total - load, "mse": mse, "targets": len(cv)}))


def theirs(path: str, steps: int, test_rows: int) -> dict:
    res = child(["env", "PYTHONWARNINGS=ignore", sys.executable, os.path.abspath(__file__), "--nf-job", path,
                 str(steps), str(test_rows)])
    if res["rc"] != 0:
        raise RuntimeError(f"neuralforecast failed:\n{res['out'][-3000:]}")
    line = [ln for ln in res["out"].splitlines() if ln.startswith("{")][-1]
    return {"wall": res["wall"], "rss": res["rss"], **json.loads(line)}


def step_time(series: int, rows: int, steps: int = 150) -> float:
    """Median wall time of one training step (batch, forward, backward, Adam; after 20 warm-up
    steps) of the default model on a panel of ``series`` series, in this process."""
    import lightning as L

    from peephole_lstm import PeepholeLSTMRegressor, SeriesDataModule

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = 0.0

        def on_train_batch_start(self, *args) -> None:
            self.t = time.perf_counter()

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "panel.parquet")
        panel(series, rows).to_parquet(path, index=False)
        dm = SeriesDataModule(path, id_column="id", window=WINDOW, horizon=HORIZON, batch_size=BATCH)
    model = PeepholeLSTMRegressor(input_size=1, hidden_size=32, num_layers=2, dropout=0.1, horizon=HORIZON, lr=0.003,
                                  ar_window="auto", series_embedding=4)
    clock = Clock()
    L.Trainer(max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[clock]).fit(model, datamodule=dm)
    return float(np.median(clock.times[20:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, nargs="*", default=[100, 1000, 10000])
    ap.add_argument("--rows", type=int, default=365)
    ap.add_argument("--long", action=argparse.BooleanOptionalAction, default=True,
                    help="also 1,000 series x 5,000 rows")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--nf", action=argparse.BooleanOptionalAction, default=True, help="run neuralforecast too")
    ap.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    ap.add_argument("--step-time", action="store_true",
                    help="only the training step's time at 100 and 100,000 series (120 rows)")
    ap.add_argument("--nf-job", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nf_job:
        nf_job(*args.nf_job)
        return
    if args.step_time:
        import warnings

        warnings.filterwarnings("ignore")
        print(f"# {cpu_model()}: median training step (batch {BATCH}, window {WINDOW}, horizon {HORIZON})")
        times: dict[int, float] = {}
        for s in (100, 100_000) * 3:  # alternated, the best of three: the machine is shared
            times[s] = min(times.get(s, float("inf")), step_time(s, 120))
        for s, t in times.items():
            print(f"{s:>7} series: {t * 1e3:6.2f} ms")
        print(f"ratio 100,000 / 100: {times[100_000] / times[100]:.2f}")
        return
    import torch

    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, steps {args.steps}, "
          f"window {WINDOW}, horizon {HORIZON}, batch {BATCH}, ensemble 1, {args.format} input")
    cases = [(s, args.rows) for s in args.series] + ([(1000, 5000)] if args.long else [])
    head = (f"{'series':>7} {'rows':>5} {'total rows':>10} | {'load':>6} {'fit':>6} {'test':>6} {'fcst':>6} "
            f"{'wall s':>7} {'RSS GB':>6} {'test MSE':>9} | {'nf wall':>7} {'nf RSS':>6} {'nf MSE':>9} | "
            f"{'nf/ours':>7}")
    print(head)
    print("-" * len(head))
    for series, rows in cases:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, f"panel.{args.format}")
            frame = panel(series, rows)
            frame.to_parquet(path, index=False) if args.format == "parquet" else frame.to_csv(path, index=False)
            del frame
            a = ours(path, args.steps, tmp)
            p = a["phases"]
            line = (f"{series:>7} {rows:>5} {series * rows:>10} | {p.get('load', 0):6.1f} {p.get('fit', 0):6.1f} "
                    f"{p.get('test', 0):6.1f} {p.get('forecast', 0):6.1f} {a['wall']:7.1f} {a['rss']:6.2f} "
                    f"{a['mse']:9.4f} |")
            if args.nf:
                b = theirs(path, args.steps, int(round(rows * 0.15)))
                line += f" {b['wall']:7.1f} {b['rss']:6.2f} {b['mse']:9.4f} | {b['wall'] / a['wall']:7.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
