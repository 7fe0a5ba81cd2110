"""Smoke tests of the benchmark scripts (their numbers live in the READMEs, not in tests)."""

import os

import numpy as np
import pandas as pd
import pytest

from .helpers import ROOT, run_python  # noqa: E402


def test_timing_quick(tmp_path):
    res = run_python([os.path.join(ROOT, "benchmarks", "timing.py"), "--quick"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for mode in ("diagonal", "none", "full"):
        assert f"| {mode} |" in res.stdout
    assert (tmp_path / "runs" / "timing_quick.png").stat().st_size > 10_000


def test_speed_table(tmp_path):
    res = run_python([os.path.join(ROOT, "benchmarks", "speed.py"), "--sizes", "S1", "--runs", "1", "--variants",
                "fused/python", "fused/cpp"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| S1")]
    assert len(rows) == 2 and all(line.count("×") == 2 for line in rows)


def test_speed_table_every_config(tmp_path):
    for config in ("article", "packed", "bidir"):
        res = run_python([os.path.join(ROOT, "benchmarks", "speed.py"), "--sizes", "S1", "--runs", "1", "--variants",
                    "fused/cpp", "--config", config], tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        rows = [line for line in res.stdout.splitlines() if line.startswith("| S1")]
        assert len(rows) == 2 and all(line.count("×") == 1 for line in rows), res.stdout
        assert "GEMM paths" in res.stdout


def test_busy_cpu_table(tmp_path):
    res = run_python([os.path.join(ROOT, "benchmarks", "busy_cpu.py"), "--steps", "3", "--hogs", "1", "--hog-kinds", "spin"],
               tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| none |") or line.startswith("| 1 x")]
    assert len(rows) == 2 and rows[1].count("x |") == 2, res.stdout


def test_stateful_lm_tiny(tmp_path):
    res = run_python([os.path.join(ROOT, "benchmarks", "stateful_lm.py"), "--cells", "lstm", "clip10", "--tokens", "4000",
                "--vocab", "200", "--nhid", "16", "--epochs", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| nn.LSTM") or line.startswith("| Peep")]
    assert len(rows) == 2 and "1.00x" in rows[0], res.stdout
    assert "| 10 |" in rows[1]  # the clip bounds max |c|


def test_startup_table(tmp_path):
    res = run_python([os.path.join(ROOT, "benchmarks", "startup.py"), "--repeat", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| PeepholeLSTM |" in res.stdout and "| nn.LSTM |" in res.stdout


def _quality():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality", os.path.join(ROOT, "benchmarks", "quality.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("n", [1, 15, 30, 343])
def test_quality_calibrated_hits_against_sampling(n):
    """The binomial range of an 80% interval's hits against the quantiles of 400k draws."""
    lo, hi = _quality().calibrated_hits(n)
    draws = np.random.default_rng(0).binomial(n, 0.8, size=400_000)
    assert (lo, hi) == (int(np.quantile(draws, 0.05, method="inverted_cdf")),
                        int(np.quantile(draws, 0.95, method="inverted_cdf")))


def test_quality_interval_scores_by_hand():
    """Coverage and MSIS of [0, 1] at 80% for targets 0.5 (inside: the width, 1) and 2 (outside by
    1: 1 + 2/0.2 x 1 = 11), over a scale of 2: (1 + 11) / 2 / 2."""
    cov, msis = _quality().interval_scores(np.zeros(2), np.ones(2), np.array([0.5, 2.0]), 0.8, 2.0)
    assert cov == 0.5 and msis == pytest.approx(3.0)
    cov, msis = _quality().interval_scores(np.zeros(1), np.ones(1), np.array([-0.5]), 0.95, 1.0)
    assert cov == 0.0 and msis == pytest.approx(1 + 40 * 0.5)


def test_quality_reads_the_runs_data_options():
    got = _quality().data_overrides(["--seed_everything", "1", "--data.calendar", "true", "--data.window=30",
                                     "--model.ensemble", "1", "--data.features", "[a, b]"])
    assert got == {"calendar": True, "window": 30, "features": ["a", "b"]}


def test_quality_ratio_interval():
    """The bootstrap interval of an MSE ratio: it holds the ratio, is a point for identical
    errors, narrows with more targets, and widens when the errors come in long runs (blocks)."""
    q = _quality()
    rng = np.random.default_rng(1)
    a, b = rng.exponential(1.0, 30), rng.exponential(1.2, 30)
    lo, hi = q.interval(q.ratio_draws(a, b))
    assert lo < a.mean() / b.mean() < hi
    assert q.interval(q.ratio_draws(a, a)) == (1.0, 1.0)
    big_a, big_b = rng.exponential(1.0, 3000), rng.exponential(1.2, 3000)
    blo, bhi = q.interval(q.ratio_draws(big_a, big_b))
    assert bhi - blo < (hi - lo) / 4 and blo < 1 / 1.2 < bhi
    # the same 343 errors, shuffled or in runs of 7 equal values: the blocks see the runs
    runs = np.repeat(rng.exponential(1.0, 49), 7)
    wide = q.interval(q.ratio_draws(runs, np.ones(343)))
    narrow = q.interval(q.ratio_draws(rng.permutation(runs), np.ones(343)))
    assert wide[1] - wide[0] > 1.5 * (narrow[1] - narrow[0])
    with pytest.raises(ValueError, match="one length"):
        q.interval(q.ratio_draws(a, b[:-1]))


def test_quality_geomean_interval():
    """The geometric mean's interval from per-series replicates: equal series give the single
    series' interval; averaging independent series narrows it."""
    q = _quality()
    rng = np.random.default_rng(2)
    a, b = rng.exponential(1.0, 30), rng.exponential(1.0, 30)
    one = q.ratio_draws(a, b)
    assert q.geomean_interval([one, one]) == pytest.approx(q.interval(one))
    many = [q.ratio_draws(rng.exponential(1.0, 30), rng.exponential(1.0, 30), seed=s) for s in range(6)]
    lo, hi = q.geomean_interval(many)
    widths = [np.subtract(*q.interval(d)[::-1]) for d in many]
    assert hi - lo < 0.6 * np.mean(widths)


def test_quality_split_mse_is_the_logged_validation_mse(tmp_path):
    """split_mse scores a run's best checkpoint on the validation windows: on one series it is
    the val_mse that the run logged at its lowest val_loss; on a panel one number per series."""
    q = _quality()
    rng = np.random.default_rng(3)
    t = np.arange(160)
    frames = [pd.DataFrame({"id": k, "date": pd.date_range("2020-01-01", periods=len(t), freq="D"),
                            "value": a * (np.sin(2 * np.pi * t / 7) + rng.normal(scale=0.3, size=len(t)))})
              for k, a in (("a", 1.0), ("b", 3.0))]
    data = {"window": 14, "horizon": 1, "batch_size": 16, "scaling": "last"}
    fast = ["--data.window", "14", "--trainer.max_steps", "40", "--trainer.val_check_interval", "10",
            "--model.ensemble", "2", "--model.hidden_size", "8"]
    one = tmp_path / "one.csv"
    frames[0].drop(columns="id").to_csv(one, index=False)
    q.run_cli(os.path.join(ROOT, "configs", "default.yaml"), str(one), str(tmp_path / "one"), fast)
    logged = pd.read_csv(tmp_path / "one" / "metrics.csv").dropna(subset=["val_loss"])
    got = q.split_mse(str(tmp_path / "one"), str(one), data)
    assert list(got) == ["value"]
    assert got["value"] == pytest.approx(logged.loc[logged["val_loss"].idxmin(), "val_mse"], rel=1e-4)
    panel = tmp_path / "panel.csv"
    pd.concat(frames).to_csv(panel, index=False)
    q.run_cli(os.path.join(ROOT, "configs", "default.yaml"), str(panel), str(tmp_path / "panel"),
              [*fast, "--data.id_column", "id"])
    got = q.split_mse(str(tmp_path / "panel"), str(panel), {**data, "id_column": "id"})
    assert sorted(got) == ["a", "b"] and got["b"] > got["a"] > 0  # b is a times 3


@pytest.mark.parametrize("case", ["promo", "heat"])
def test_future_inputs_cases_give_the_known_step_ahead(case, tmp_path):
    """benchmarks/future_inputs.py's generated series with their next step: the data module
    reads the known-ahead column there, and the target responds to it as documented."""
    import importlib.util

    pytest.importorskip("lightning")
    from peephole_lstm import SeriesDataModule

    spec = importlib.util.spec_from_file_location("future_inputs", os.path.join(ROOT, "benchmarks", "future_inputs.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frame, x_col, season = mod.CASES[case]()
    path = tmp_path / "ahead.csv"
    mod.with_next_step(frame, x_col, season).to_csv(path, index=False)
    dm = SeriesDataModule(str(path), target=frame.columns[-1], future_features=[x_col], window=20)
    assert len(dm.series) == len(frame) and dm.season == season
    assert dm.future_values(0)[0, 0] == frame[x_col].iloc[-1]
    assert dm.future_labels(0) == [str((pd.Timestamp(frame["date"].iloc[-1]) + pd.Timedelta(days=1)).date())]
    y, x = frame.iloc[:, -1].to_numpy(), frame[x_col].to_numpy()
    if case == "promo":  # +3 on promotion days
        assert 2.5 < np.mean(y[x == 1]) - np.mean(y[x == 0]) < 3.5
    else:  # heating below 16 degrees, cooling above 22: higher demand at both ends
        mid = y[(x > 16) & (x < 22)].mean()
        assert y[x < 6].mean() > mid + 15 and y[x > 26].mean() > mid
