"""The panel machinery that keeps a batch's cost independent of the number of series, each
against the per-series computation it replaces: the vectorised read of a long-format file,
the batched ridge fits of the AR terms, the gathered AR term, the validation sample, the
forecast file's rounding and Parquet input and output."""

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

from peephole_lstm import SeriesDataModule  # noqa: E402
from peephole_lstm.forecast.network import PeepholeLSTMNet, ridge_ar, ridge_ar_groups  # noqa: E402
from peephole_lstm.forecast.reading import PanelReader  # noqa: E402


def _long(path, n_series=5, seed=0, fmt="csv"):
    """Daily series of different lengths and start dates, rows shuffled."""
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_series):
        n = 60 + 17 * s
        t = np.arange(n)
        frames.append(pd.DataFrame({
            "id": f"k{(7 * s) % n_series}",
            "date": pd.date_range(f"2020-0{1 + s % 9}-03", periods=n, freq="D").strftime("%Y-%m-%d"),
            "temp": rng.normal(size=n).round(2),
            "value": (10 * s + 0.1 * t + np.sin(2 * np.pi * t / 7) + rng.normal(scale=0.3, size=n)).round(3),
        }))
    frame = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed)
    frame.to_parquet(path, index=False) if fmt == "parquet" else frame.to_csv(path, index=False)
    return frame


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_clean_long_file_is_read_whole_as_the_series_by_series_path_reads_it(tmp_path, monkeypatch, fmt):
    path = str(tmp_path / f"p.{fmt}")
    _long(path, fmt=fmt)
    kw = dict(id_column="id", features=["temp"], window=10, horizon=3)
    fast = SeriesDataModule(path, **kw)
    assert fast.reader.vectorised
    monkeypatch.setattr(PanelReader, "_read_whole", lambda self, frame: False)
    slow = SeriesDataModule(path, **kw)
    assert not slow.reader.vectorised
    assert fast.series_names == slow.series_names and fast.index == slow.index
    np.testing.assert_array_equal(fast.inputs, slow.inputs)
    np.testing.assert_array_equal(fast.starts, slow.starts)
    assert fast.series_season == slow.series_season == [7] * 5
    for split in ("train", "val", "test", "future"):
        np.testing.assert_array_equal(fast.ends[split], slow.ends[split])
    for s in range(5):
        assert fast.future_labels(s) == slow.future_labels(s)
    for key in ("series_mean", "series_std", "series_diff_scale", "series_mase_scale"):
        np.testing.assert_allclose(getattr(fast, key), getattr(slow, key), rtol=1e-12)


def test_a_file_that_needs_cleaning_goes_series_by_series(tmp_path):
    path = tmp_path / "gap.csv"
    frame = _long(path)
    frame.drop(index=frame.index[frame["id"] == "k0"][5]).to_csv(path, index=False)  # a gap in one series
    with pytest.warns(UserWarning, match="time stamps missing"):
        dm = SeriesDataModule(str(path), id_column="id", window=10, horizon=3)
    assert not dm.reader.vectorised


def test_scalers_per_series_are_numpy_s_statistics_of_the_training_rows(tmp_path):
    path = str(tmp_path / "p.csv")
    _long(path)
    dm = SeriesDataModule(path, id_column="id", features=["temp"], window=10, horizon=3)
    for s in range(len(dm.series_names)):
        train = dm.inputs[dm.starts[s] : dm.starts[s] + dm.split_rows[s][0]]
        np.testing.assert_allclose(dm.series_mean[s], train.mean(0), rtol=1e-12)
        np.testing.assert_allclose(dm.series_std[s], train.std(0), rtol=1e-12)
        np.testing.assert_allclose(dm.series_diff_scale[s], np.diff(train[:, 0]).std(), rtol=1e-12)
        np.testing.assert_allclose(dm.series_mase_scale[s], np.abs(train[7:, 0] - train[:-7, 0]).mean(), rtol=1e-12)


@pytest.mark.parametrize("horizon", [1, 3])
def test_batched_ridge_fits_equal_one_fit_per_group(horizon):
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([40, 7, 25, 3])
    X = torch.randn(4, 40, 5, generator=g, dtype=torch.float64)
    X[:, :, 4] = X[:, :, 3] + 1e-3 * X[:, :, 4]  # collinear columns, as lags of a random walk are
    X[1, :, :2] = 0.0  # a group without its two oldest columns
    Y = X @ torch.randn(5, horizon, generator=g, dtype=torch.float64) + 0.1 * torch.randn(4, 40, horizon, generator=g,
                                                                                           dtype=torch.float64)
    keep = torch.arange(40)[None] < n[:, None]
    W, b, lam = ridge_ar_groups(X, Y, keep)
    for k in range(4):
        cols = slice(2, 5) if k == 1 else slice(0, 5)
        Wk, bk, lk = ridge_ar(X[k, : n[k], cols], Y[k, : n[k]])
        assert lam[k].item() == lk
        torch.testing.assert_close(W[k][:, cols], Wk, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(b[k], bk, rtol=1e-8, atol=1e-10)
    assert (W[1][:, :2] == 0).all()


def test_per_series_ar_fit_and_forward_equal_the_series_one_at_a_time():
    """fit_ar on a panel (one batched fit) against ridge_ar per series; forward's gathered AR
    term against every series' term computed in full and picked."""
    g = torch.Generator().manual_seed(1)
    S, h, A = 6, 2, 4
    net = PeepholeLSTMNet(hidden_size=4, num_layers=1, horizon=h).double().eval()
    net.set_ar_window(A, series=S)
    ids = torch.randint(0, S, (300,), generator=g)
    X = torch.randn(300, A, generator=g, dtype=torch.float64)
    Y = X[:, -2:] @ torch.randn(2, h, generator=g, dtype=torch.float64) + ids[:, None] * 0.1
    lags = [4, 2, 3, 4, 1, 4]
    net.fit_ar(X, Y, ids, lags_per_series=lags)
    for s in range(S):
        W, b, _ = ridge_ar(X[ids == s][:, -lags[s]:], Y[ids == s])
        torch.testing.assert_close(net.ar.weight[s * h : (s + 1) * h, A - lags[s] :], W, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(net.ar.bias[s * h : (s + 1) * h], b, rtol=1e-8, atol=1e-10)
    x = torch.randn(50, 8, 1, generator=g, dtype=torch.float64)
    series = torch.randint(0, S, (50,), generator=g)
    with torch.no_grad():
        got = net(x, series)
        full = net.ar(x[:, -A:, 0]).view(50, S, h)[torch.arange(50), series]  # every series' term, then picked
        net.ar = None
        lstm_only = net(x, series)
    torch.testing.assert_close(got, lstm_only + full, rtol=1e-10, atol=1e-12)


def test_validation_scores_a_fixed_sample_and_the_intervals_calibrate_on_every_window(tmp_path):
    import lightning as L

    from peephole_lstm import PeepholeLSTMRegressor

    path = str(tmp_path / "p.csv")
    _long(path)
    dm = SeriesDataModule(path, id_column="id", window=10, horizon=2, val_windows=12, batch_size=16)
    n_val = len(dm.ends["val"])
    first = dm.val_dataloader().dataset.windows
    assert len(first) == 12 < n_val and dm.series_info().val_sampled
    np.testing.assert_array_equal(first.ends, dm.val_dataloader().dataset.windows.ends)  # the same every check
    assert set(first.ends) <= set(dm.ends["val"])
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, horizon=2, ar_window=3)
    trainer = L.Trainer(max_steps=6, val_check_interval=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert len(model._calibration) == 12  # the checks: the sample
    trainer.test(model, datamodule=dm, verbose=False)
    assert len(model._calibration) == n_val  # the intervals: every validation window
    whole = SeriesDataModule(path, id_column="id", window=10, horizon=2, val_windows=None)
    assert len(whole.val_dataloader().dataset) == n_val and not whole.series_info().val_sampled


def test_forecast_numbers_carry_one_decimal_past_the_data():
    from peephole_lstm.forecast.cli import _sig7, decimals

    assert decimals(np.array([1.0, 2.0, 30.0])) == 0
    assert decimals(np.array([1.25, 2.5, 3.125])) == 3
    assert decimals(np.array([np.pi, 1.0])) is None
    np.testing.assert_array_equal(_sig7(np.array([np.pi * 1e5, -np.e, 0.0, np.nan])),
                                  [314159.3, -2.718282, 0.0, np.nan])


def test_parquet_in_parquet_out_and_one_line_per_phase(tmp_path, monkeypatch, capsys):
    from peephole_lstm.forecast import cli

    path = str(tmp_path / "p.parquet")
    _long(path, fmt="parquet")
    ticks = iter(range(100))
    monkeypatch.setattr(cli.PeepholeLSTMCLI, "clock", staticmethod(lambda: float(next(ticks))))
    monkeypatch.chdir(tmp_path)
    cli.main(["fit", "--data.csv_path", path, "--data.id_column", "id", "--data.window", "10", "--data.horizon", "2",
              "--model.hidden_size", "4", "--model.num_layers", "1", "--trainer.max_steps", "4",
              "--trainer.enable_progress_bar", "false", "--run_dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    phases = [line for line in out.splitlines() if line.startswith("phase ")]
    assert [p.split(":")[0] for p in phases] == ["phase load", "phase fit", "phase test", "phase forecast"]
    assert phases[0] == "phase load: 5 series, 470 rows, 1.0 s" and all(p.endswith(" 1.0 s") for p in phases)
    frame = pd.read_parquet(tmp_path / "run" / "forecast.parquet")
    assert set(frame["kind"]) == {"backtest", "future"} and (frame["step"].max() == 2)
    assert (tmp_path / "run" / "metrics_per_series.png").exists()
    back = frame[frame["kind"] == "backtest"]
    assert np.allclose(back["forecast"] * 1e4, (back["forecast"] * 1e4).round(), rtol=0, atol=1e-6)  # 3 decimals: 4
    assert not np.allclose(back["forecast"] * 1e3, (back["forecast"] * 1e3).round(), rtol=0, atol=1e-6)
