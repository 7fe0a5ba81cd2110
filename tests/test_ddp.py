"""Training on a panel with Lightning's DDP on CPU (two processes, gloo): the training windows
are sharded, every process scores every validation, test and forecast window, and one
process writes the forecast and the per-series metrics, which match a one-process run's
structure and quality."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightning")

from .helpers import ROOT  # noqa: E402


def _panel(path, series=6, rows=160):
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    frames = []
    for s in range(series):
        y = 20 + 3 * np.sin(2 * np.pi * (t + s) / 7) + np.cumsum(rng.normal(0, 0.3, rows))
        frames.append(pd.DataFrame({"id": f"s{s}", "date": pd.date_range("2021-01-01", periods=rows).strftime("%Y-%m-%d"),
                                    "value": y.round(3)}))
    pd.concat(frames).to_csv(path, index=False)


def _fit(tmp_path, csv, name, *extra):
    cmd = [sys.executable, "-m", "peephole_lstm", "fit", "--config", os.path.join(ROOT, "configs", "default.yaml"),
           "--data.csv_path", str(csv), "--data.id_column", "id", "--data.window", "14", "--data.horizon", "3",
           "--model.ensemble", "1", "--model.hidden_size", "8", "--trainer.max_steps", "40",
           "--trainer.val_check_interval", "20", "--trainer.enable_progress_bar", "false",
           "--run_dir", str(tmp_path / name), *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("LOCAL_RANK", None)
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout + out.stderr


def test_ddp_on_two_cpu_processes_writes_the_forecast_once_and_matches_one_process(tmp_path):
    csv = tmp_path / "panel.csv"
    _panel(csv)
    _fit(tmp_path, csv, "one")
    two = _fit(tmp_path, csv, "two", "--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert "GLOBAL_RANK: 1" in two or "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in two
    assert two.count("wrote ") == 1 and two.count("per-series test metrics:") == 1  # rank 0 only
    assert sorted(os.listdir(tmp_path)) == ["one", "panel.csv", "two"]  # both processes wrote into one run
    f1, f2 = pd.read_csv(tmp_path / "one" / "forecast.csv"), pd.read_csv(tmp_path / "two" / "forecast.csv")
    # every window of every series, once: the same rows, keys and actuals as one process
    key = ["series", "kind", "time", "origin", "step"]
    pd.testing.assert_frame_equal(f1[key + ["actual"]], f2[key + ["actual"]])
    p1 = pd.read_csv(tmp_path / "one" / "metrics_per_series.csv")
    p2 = pd.read_csv(tmp_path / "two" / "metrics_per_series.csv")
    assert p1["series"].tolist() == p2["series"].tolist() and p1["targets"].tolist() == p2["targets"].tolist()
    # two processes train on twice the windows per step: not the same numbers, the same quality
    # (both well below the seasonal naive forecast on this panel, within 50% of each other)
    m1, m2 = (float((p["mse"] * p["targets"]).sum() / p["targets"].sum()) for p in (p1, p2))
    naive = float((p1["snaive_mse"] * p1["targets"]).sum() / p1["targets"].sum())
    assert m1 < naive and m2 < naive and 2 / 3 < m2 / m1 < 1.5, (m1, m2, naive)
