"""Forecasting as forecasters use it: many series in long format, the future past the
last row, conformal prediction intervals, the seasonal naive baseline and MASE."""

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

from peephole_lstm import PeepholeLSTMRegressor, SeriesDataModule  # noqa: E402
from peephole_lstm.forecast.conformal import conformal_quantiles  # noqa: E402
from peephole_lstm.forecast.datamodule import SeriesDataError  # noqa: E402
from peephole_lstm.forecast.time_axis import continue_times, infer_season  # noqa: E402


def _panel(tmp_path, shuffle=True):
    """Three daily series of different lengths and start dates, rows interleaved out of order."""
    rng = np.random.default_rng(0)
    frames = []
    for name, n, start, level in (("a", 120, "2020-01-01", 10.0), ("b", 90, "2020-02-15", -5.0),
                                  ("c", 150, "2019-11-01", 100.0)):
        t = np.arange(n)
        value = level + 0.05 * t + np.sin(2 * np.pi * t / 7) + rng.normal(scale=0.2, size=n)
        frames.append(pd.DataFrame({"id": name, "date": pd.date_range(start, periods=n, freq="D").strftime("%Y-%m-%d"),
                                    "temp": rng.normal(size=n), "value": value}))
    frame = pd.concat(frames, ignore_index=True)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=1)
    path = tmp_path / "panel.csv"
    frame.to_csv(path, index=False)
    return str(path), frames


def test_long_format_splits_scales_and_windows_per_series(tmp_path):
    path, frames = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=10, horizon=3, features=["temp"], val_fraction=0.2,
                          test_fraction=0.2)
    assert dm.series_names == ["c", "a", "b"] or sorted(dm.series_names) == ["a", "b", "c"]
    assert dm.season == 7  # daily
    for s, name in enumerate(dm.series_names):
        want = next(f for f in frames if f["id"].iloc[0] == name)  # rows sorted back into time order
        rows = slice(dm.starts[s], dm.starts[s + 1])
        np.testing.assert_allclose(dm.series[rows], want["value"].to_numpy())
        n = len(want)
        n_test, n_val = round(n * 0.2), round(n * 0.2)
        n_train = n - n_val - n_test
        assert dm.split_rows[s] == (n_train, n_val, n_test)
        train = want["value"].to_numpy()[:n_train]
        assert dm.series_diff_scale[s] == pytest.approx(np.diff(train).std())  # per-series scaler, train rows only
        assert dm.series_mase_scale[s] == pytest.approx(np.abs(train[7:] - train[:-7]).mean())
    for split in ("train", "val", "test"):
        ds = dm.dataset(split)
        for k in range(len(ds)):
            e, s = int(ds.ends[k]), int(ds.sids[k])
            n_train, n_val, _ = dm.split_rows[s]
            lo = dm.starts[s] + {"train": 0, "val": n_train, "test": n_train + n_val}[split]
            hi = {"train": dm.starts[s] + n_train, "val": dm.starts[s] + n_train + n_val,
                  "test": dm.starts[s + 1]}[split]
            assert lo <= e and e + 3 <= hi and e - 10 >= dm.starts[s]  # inside its split and its series
    item = dm.dataset("test")[0]
    s = int(item["series"])
    e = int(item["end"])
    assert item["naive"].item() == pytest.approx(dm.series[e - 1])
    assert item["snaive"].tolist() == pytest.approx(dm.series[e - 7 : e - 4].tolist())  # one week before each target
    y = item["y"] * item["scale"] + item["offset"]
    assert y.tolist() == pytest.approx(dm.series[e : e + 3].tolist(), abs=1e-4)
    assert item["scale"].item() == pytest.approx(dm.series_diff_scale[s])


def test_future_windows_and_time_labels(tmp_path):
    path, frames = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=10, horizon=3)
    fut = dm.dataset("future")
    assert len(fut) == 3
    for k in range(3):
        item = fut[k]
        s = int(item["series"])
        assert int(item["end"]) == dm.starts[s + 1]  # right after the last row
        assert torch.isnan(item["y"]).all()
        last = next(f for f in frames if f["id"].iloc[0] == dm.series_names[s])["date"].iloc[-1]
        labels = dm.future_labels(s)
        assert labels[0] == (pd.Timestamp(last) + pd.Timedelta(days=1)).strftime("%Y-%m-%d") and len(labels) == 3


@pytest.mark.parametrize(
    "times,want",
    [
        (pd.Series(pd.date_range("2000-01-31", periods=5, freq="ME").strftime("%Y-%m-%d")), ["2000-06-30", "2000-07-31"]),
        (pd.Series(["2021-03-01 00:00", "2021-03-01 00:30", "2021-03-01 01:00"]),
         ["2021-03-01 01:30", "2021-03-01 02:00"]),  # in the column's own format
        (pd.Series([1990, 1991, 1992]), ["1993", "1994"]),
        (pd.Series([0, 5, 10]), ["15", "20"]),
    ],
)
def test_time_continued_by_its_step(times, want):
    assert continue_times(times, 2) == want


@pytest.mark.parametrize(
    "freq,season", [("D", 7), ("W-SAT", 52), ("MS", 12), ("QS", 4), ("h", 24), ("30min", 48), ("YS", 1),
                    ("15min", 96), ("5min", 288), ("6h", 4), ("B", 5), ("ME", 12), ("7h", 1)]
)
def test_season_inferred_from_the_time_step(freq, season):
    assert infer_season(pd.Series(pd.date_range("2000-01-01", periods=30, freq=freq).astype(str))) == season
    assert infer_season(pd.Series(range(30))) == 1  # integers: no known season


@pytest.mark.parametrize(
    "kwargs,edit,message",
    [
        (dict(id_column="nope"), None, "unknown id column 'nope'"),
        (dict(id_column="id", window=70), None, "series 'b' too short: 90 rows give the train split 62 rows"),
        (dict(id_column="id"), "dup", "series 'a' has 1 duplicate time stamp\\(s\\) in column 'date', first '2020-01-03'"),
        (dict(id_column="id"), "noid", "id column 'id' is empty at data row"),
        (dict(id_column="id", time_column="when"), None, "unknown time column 'when'"),
        (dict(id_column="id", season=0), None, "season must be at least 1"),
        (dict(id_column="id", predict="later"), None, "predict must be one of both, future, test"),
        (dict(id_column="id"), "nan", "column 'value' of series 'c' has 1 missing value"),
    ],
)
def test_bad_panels_are_one_clear_error(tmp_path, kwargs, edit, message):
    path, _ = _panel(tmp_path, shuffle=False)
    frame = pd.read_csv(path)
    if edit == "dup":
        frame.loc[frame.index[3], "date"] = frame.loc[frame.index[2], "date"]
    elif edit == "noid":
        frame.loc[5, "id"] = np.nan
    elif edit == "nan":
        frame.loc[frame.index[frame["id"] == "c"][4], "value"] = np.nan
    frame.to_csv(path, index=False)
    kwargs.setdefault("window", 10)
    kwargs.setdefault("target", "value")
    with pytest.raises(SeriesDataError, match=message) as err:
        SeriesDataModule(path, **kwargs)
    assert "\n" not in str(err.value)


def test_conformal_quantile_is_the_finite_sample_one():
    r = torch.arange(10.0, 0.0, -1.0).unsqueeze(1)  # 10 residuals 10..1
    q = conformal_quantiles(r)  # the ceil(11 * 0.8) = 9th smallest; ceil(11 * 0.95) = 11 > 10: the largest
    assert q[:, 0].tolist() == [9.0, 10.0]
    assert conformal_quantiles(torch.arange(1.0, 41.0).unsqueeze(1))[:, 0].tolist() == [33.0, 39.0]  # ceil(41 lv)


@pytest.mark.parametrize("batch", [1, 7, 60])
@pytest.mark.parametrize("by_series", [False, True])
def test_rolling_calibration_pools_validation_and_earlier_residuals_of_the_series(by_series, batch):
    """Each window's half-widths against a brute-force pool: the validation residuals (with
    their series known: the series' own where they are enough for every level, 19 for 95%,
    else all) and, of the same series, the residuals of targets before the window's first
    target; the 95% interval is never narrower than the 80% one. The windows come one at a
    time or in batches that hold several windows of a series (each sees the earlier ones)."""
    from peephole_lstm.forecast.conformal import RollingCalibration

    rng = np.random.default_rng(0)
    h, levels = 3, (0.8, 0.95)
    # validation residuals per series around the bound: 19 (its own pool), 18, 4 and 3 (all)
    val_series = np.repeat(np.arange(4), (19, 18, 4, 3))
    val = rng.exponential(size=(len(val_series), h)) * (1.0 + val_series[:, None])  # different noise
    roll = RollingCalibration(torch.tensor(val), levels, series=torch.tensor(val_series) if by_series else None)
    origins = {0: 100, 1: 500, 2: 900, 3: 1300}
    windows = []  # (series, first target row, residuals), each series' windows in time order
    for _ in range(60):
        s = int(rng.integers(4))
        windows.append((s, origins[s], rng.exponential(size=h)))
        origins[s] += int(rng.integers(1, 3))  # overlapping targets
        windows[-1][2][rng.random(h) < 0.2] = np.nan  # some targets unknown
    got = torch.cat([roll(torch.tensor([w[0] for w in part]), torch.tensor([w[1] for w in part]),
                          torch.tensor(np.stack([w[2] for w in part])))
                     for part in (windows[a : a + batch] for a in range(0, len(windows), batch))]).numpy()
    seen = []  # (series, target row, step, residual)
    for i, (s, e, res) in enumerate(windows):
        for k in range(h):
            earlier = [r for (s2, row, k2, r) in seen if s2 == s and k2 == k and row < e]
            mine = val[val_series == s, k]
            base = mine if by_series and len(mine) >= 19 else val[:, k]
            pool = np.sort(np.r_[base, earlier])
            assert got[i, 1, k] >= got[i, 0, k]
            for j, lv in enumerate(levels):
                want = pool[min(len(pool), int(np.ceil((len(pool) + 1) * lv))) - 1]
                assert got[i, j, k] == pytest.approx(want), (i, k, lv)
        seen += [(s, e + k, k, res[k]) for k in range(h) if not np.isnan(res[k])]
    assert len(seen) > 50


@pytest.mark.parametrize("n,bits", [(1, 1), (2, 1), (37, 6), (300, 9)])
def test_wavelet_matrix_selects_the_kth_smallest_of_any_range(n, bits):
    """Every range of a random array (ties included), every k: the k-th smallest by sorting."""
    from peephole_lstm.forecast.conformal import _WaveletMatrix

    rng = np.random.default_rng(n)
    values = rng.integers(0, 2**bits, size=n)
    wm = _WaveletMatrix(torch.tensor(values), bits)
    lo, hi = np.triu_indices(n + 1, k=1)  # every non-empty range
    if len(lo) > 3000:
        pick = rng.choice(len(lo), 3000, replace=False)
        lo, hi = lo[pick], hi[pick]
    k = (rng.random(len(lo)) * (hi - lo)).astype(np.int64)
    got = wm.select(torch.tensor(lo), torch.tensor(hi), torch.tensor(k)).numpy()
    want = [np.sort(values[a:b])[j] for a, b, j in zip(lo, hi, k)]
    assert got.tolist() == want


def test_rolling_calibration_refuses_windows_out_of_time_order():
    from peephole_lstm.forecast.conformal import RollingCalibration

    roll = RollingCalibration(torch.ones(20, 2))
    roll(torch.tensor([0, 0]), torch.tensor([10, 11]), torch.ones(2, 2))
    with pytest.raises(ValueError, match="windows of a series must come in time order"):
        roll(torch.tensor([0]), torch.tensor([5]), torch.ones(1, 2))


def test_rolling_calibration_keeps_room_for_each_series_own_windows():
    """A ragged panel (one series of 5,000 windows, 2,000 of 3) takes room for about its
    windows, not the longest series' length times the number of series."""
    from peephole_lstm.forecast.conformal import RollingCalibration

    roll = RollingCalibration(torch.rand(40, 2))
    s = torch.cat([torch.zeros(5000, dtype=torch.long), torch.arange(1, 2001).repeat_interleave(3)])
    e = torch.cat([torch.arange(5000), torch.arange(3).repeat(2000)])
    for a in range(0, len(s), 4096):
        roll(s[a:a + 4096], e[a:a + 4096], torch.rand(len(s[a:a + 4096]), 2))
    assert roll.count.tolist() == [5000] + [3] * 2000
    assert len(roll.res) <= 4 * (2 * 5000 + 2000 * 8)  # powers of two, each series moved at most log times


def test_global_model_on_a_panel_logs_intervals_mase_and_per_series_metrics(tmp_path):
    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2, lr=0.01)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert not torch.isnan(model.interval_q).any() and (model.interval_q[1] >= model.interval_q[0]).all()
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    for key in ("test_mse", "test_naive_mse", "test_snaive_mse", "test_mase", "test_coverage_80",
                "test_coverage_95", "test_width_80", "test_width_95"):
        assert key in res, key
    assert 0 <= res["test_coverage_80"] <= res["test_coverage_95"] <= 1
    per = model.test_per_series
    assert sorted(per["series"]) == ["a", "b", "c"]
    # the per-series table adds up to the overall metrics (weights: targets per series)
    w = per["targets"] / per["targets"].sum()
    assert (w * per["mse"]).sum() == pytest.approx(res["test_mse"], rel=1e-4)
    assert (w * per["mase"]).sum() == pytest.approx(res["test_mase"], rel=1e-4)
    assert (w * per["coverage_80"]).sum() == pytest.approx(res["test_coverage_80"], rel=1e-4)
    preds = trainer.predict(model, datamodule=dm)
    cat = {k: torch.cat([p[k] for p in preds]) for k in preds[0]}
    future = torch.isnan(cat["actual"]).all(1)
    assert int(future.sum()) == 3  # one future window per series
    assert (cat["lo_95"] <= cat["lo_80"]).all() and (cat["hi_80"] <= cat["hi_95"]).all()


def test_interval_score_and_smape_are_the_m4_measures_of_the_backtest(tmp_path):
    """test_msis_80/95 and test_smape, overall and per series, equal the M4 competition's MSIS
    and sMAPE computed with numpy from predict's backtest (original units) and each series'
    in-sample seasonal naive MAE taken from its training rows of the file."""
    path, frames = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", target="value", window=14, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2, lr=0.01)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    res = trainer.test(model, datamodule=dm, verbose=False)[0]
    per = model.test_per_series.set_index("series")
    preds = trainer.predict(model, datamodule=dm)
    cat = {k: torch.cat([p[k] for p in preds]).double().numpy() for k in preds[0]}
    back = ~np.isnan(cat["actual"]).any(1)  # the backtest windows (the future has no actuals)
    total = {80: 0.0, 95: 0.0, "smape": 0.0}
    for s, name in enumerate(dm.series_names):
        y_file = next(f for f in frames if f["id"].iloc[0] == name)["value"].to_numpy()
        train = y_file[: dm.split_rows[s][0]]
        scale = np.abs(train[7:] - train[:-7]).mean()  # daily: season 7
        rows = back & (cat["series"] == s)
        y = cat["actual"][rows]
        for pct in (80, 95):
            a = 1 - pct / 100
            lo, hi = cat[f"lo_{pct}"][rows], cat[f"hi_{pct}"][rows]
            score = (hi - lo) + 2 / a * (lo - y) * (y < lo) + 2 / a * (y - hi) * (y > hi)
            assert per.loc[name, f"msis_{pct}"] == pytest.approx(score.mean() / scale, rel=1e-4)
            total[pct] += score.sum() / scale
        assert per.loc[name, "targets"] == y.size
        sape = 2 * np.abs(cat["forecast"][rows] - y) / (np.abs(cat["forecast"][rows]) + np.abs(y))
        assert per.loc[name, "smape"] == pytest.approx(sape.mean(), rel=1e-4)
        total["smape"] += sape.sum()
    assert res["test_smape"] == pytest.approx(total["smape"] / per["targets"].sum(), rel=1e-4)
    for pct in (80, 95):
        assert res[f"test_msis_{pct}"] == pytest.approx(total[pct] / per["targets"].sum(), rel=1e-4)
        assert 0 < res[f"test_msis_{pct}"] < np.inf


def test_balanced_sampling_weighs_every_series_the_same(tmp_path):
    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", target="value", window=10, balance=True)
    loader = dm.train_dataloader()
    idx = list(loader.sampler)
    sids = dm.dataset("train").sids[idx]
    share = np.bincount(sids, minlength=3) / len(sids)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.06)  # series of 90-150 rows, drawn alike
    plain = np.bincount(dm.dataset("train").sids, minlength=3) / len(dm.dataset("train"))
    assert plain.max() - plain.min() > 0.1  # without balance: in proportion to length
    assert list(loader.sampler) == idx  # same epoch, same draw


def test_panel_validation_loss_counts_each_series_once(tmp_path):
    """On a panel, val_loss (what early stopping and the checkpoint watch) is the mean of the
    series' validation MSEs in scaled units, not the mean over windows, which the longest
    series would dominate; for one series the two are the same."""
    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=16)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    got = trainer.validate(model, datamodule=dm, verbose=False)[0]["val_loss"]
    se, sid = [], []
    model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            se.append((model(batch["x"], batch["series"]) - batch["y"]).square().mean(1))
            sid.append(batch["series"])
    se, sid = torch.cat(se).double(), torch.cat(sid)
    per_series = [se[sid == s].mean() for s in sid.unique()]
    assert len(per_series) == 3 and sid.bincount().unique().numel() > 1  # unequal window counts
    assert got == pytest.approx(float(torch.stack(per_series).mean()), rel=1e-5)
    assert abs(got - float(se.mean())) > 1e-3 * got  # the window mean would be another number
    one = tmp_path / "one.csv"
    pd.read_csv(path).query("id == 'a'").drop(columns="id").to_csv(one, index=False)
    dm1 = SeriesDataModule(str(one), window=14, horizon=2, batch_size=16)
    got1 = trainer.validate(model, datamodule=dm1, verbose=False)[0]["val_loss"]
    with torch.no_grad():
        want1 = torch.cat([(model(b["x"]) - b["y"]).square().mean(1) for b in dm1.val_dataloader()]).mean()
    assert got1 == pytest.approx(float(want1), rel=1e-5)


def test_panel_gets_one_ar_term_per_series_fitted_on_its_own_windows(tmp_path):
    """A panel's AR terms: each series' the ridge fit on its own training windows; forward picks
    each window's; a checkpoint restores them and refuses data with other series."""
    from peephole_lstm.forecast.network import PeepholeLSTMNet, ridge_ar

    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2, ar_window=5)
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    ds = dm.dataset("train")
    items = [ds[k] for k in range(len(ds))]
    sid = torch.stack([it["series"] for it in items])
    lags, y = torch.stack([it["x"][-5:, 0] for it in items]), torch.stack([it["y"] for it in items])
    w = model.net.ar.weight.view(3, 2, 5)
    assert model.net.ar_series == 3 and len(model.ar_penalty) == 3
    for s in range(3):
        W, b, _ = ridge_ar(lags[sid == s], y[sid == s])
        torch.testing.assert_close(w[s], W.float())
        torch.testing.assert_close(model.net.ar.bias.view(3, 2)[s], b.float())
    # forward: the LSTM's forecast plus each window's own series' term
    x = torch.stack([it["x"] for it in items[:40]])
    s = sid[:40]
    model.eval()
    with torch.no_grad():
        lstm = model.net.head(model.net.lstm(x)[1][0][-1])  # (40, 2)
        own = torch.einsum("nk,nhk->nh", x[:, -5:, 0], w[s]) + model.net.ar.bias.view(3, 2)[s]
        torch.testing.assert_close(model(x, s), lstm + own)
        with pytest.raises(ValueError, match="per-series parts for 3 series: forward needs each window's series"):
            model(x)
    # a checkpoint restores three terms; data with other series is refused by name
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.net.ar_series == 3 and torch.equal(loaded.net.ar.weight, model.net.ar.weight)
    frame = pd.read_csv(path)
    frame.loc[frame["id"] == "c", "id"] = "z"
    frame.to_csv(tmp_path / "other.csv", index=False)
    other = SeriesDataModule(str(tmp_path / "other.csv"), id_column="id", window=14, horizon=2)
    want = r"per-series parts for the series \['c', 'a', 'b'\] \(in this order\).*\['z', 'a', 'b'\]"
    with pytest.raises(ValueError, match=want):
        L.Trainer(logger=False, enable_progress_bar=False).predict(loaded, datamodule=other)
    # per-series lag counts (older lags weigh 0); a series with under 3 windows gets the pooled fit
    net = PeepholeLSTMNet(hidden_size=3, num_layers=1, horizon=1)
    net.set_ar_window(4, series=3)
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(22, 4, generator=g), torch.randn(22, 1, generator=g)
    ids = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    net.fit_ar(X, Y, ids, lags_per_series=[2, 4, 4])
    W0, _, _ = ridge_ar(X[:10, -2:], Y[:10])
    torch.testing.assert_close(net.ar.weight[0], torch.cat([torch.zeros(2), W0[0].float()]))
    Wp, bp, _ = ridge_ar(X, Y)
    torch.testing.assert_close(net.ar.weight[2], Wp[0].float())
    torch.testing.assert_close(net.ar.bias[2], bp[0].float())
    net.fit_ar(X, Y, ids, lags_per_series=[2, 4, 3])  # the pooled fit on that series' own 3 lags
    W3, b3, _ = ridge_ar(X[:, -3:], Y)
    torch.testing.assert_close(net.ar.weight[2], torch.cat([torch.zeros(1), W3[0].float()]))
    torch.testing.assert_close(net.ar.bias[2], b3[0].float())
    with pytest.raises(ValueError, match="fit_ar needs series"):
        net.fit_ar(X, Y)


@pytest.mark.parametrize("mode", ["both", "future"])
def test_future_intervals_are_calibrated_on_validation_and_every_backtest_residual(tmp_path, mode):
    """After the backtest, a series' future half-widths are the conformal quantiles of its own
    validation residuals (everyone's where they are too few for 95%: under 19) plus
    all of that series' test residuals (computed here from the model's own predictions),
    whether the backtest is output ("both") or not ("future"); the checkpoint carries the
    validation residuals and their series."""
    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=16, predict=mode)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2, lr=0.01)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    ckpt = trainer.checkpoint_callback.best_model_path
    model = PeepholeLSTMRegressor.load_from_checkpoint(ckpt).eval()
    saved = torch.load(ckpt, weights_only=False)
    cal, cal_series = saved["calibration_residuals"], saved["calibration_series"]
    assert cal.shape == (len(dm.dataset("val")), 2) and cal_series.shape == (len(cal),)
    counts = cal_series.bincount()
    assert (counts >= 4).all() and (counts < 19).any() and (counts >= 19).any()  # both cases at 95%
    test = dm.dataset("test")
    batch = torch.utils.data.default_collate([test[k] for k in range(len(test))])
    with torch.no_grad():
        res = (model(batch["x"], batch["series"]) - batch["y"]).abs()  # (n, 2); NaN: target past the data
    preds = L.Trainer(logger=False, enable_progress_bar=False).predict(model, datamodule=dm)
    cat = {k: torch.cat([p[k] for p in preds]) for k in preds[0]}
    future = torch.isnan(cat["actual"]).all(1)
    assert int(future.sum()) == 3 and (mode == "future") == bool(future.all())
    for i in torch.nonzero(future).flatten().tolist():
        s = int(cat["series"][i])
        own = res[batch["series"] == s]
        for k in range(2):
            test_res = own[:, k][~torch.isnan(own[:, k])]
            mine = cal[cal_series == s, k]
            base = mine if len(mine) >= 19 else cal[:, k]
            q = conformal_quantiles(torch.cat([base, test_res])[:, None].double())[:, 0]  # (levels,)
            scale = (cat["hi_80"][i, k] - cat["forecast"][i, k]) / q[0]
            half95 = cat["hi_95"][i, k] - cat["forecast"][i, k]
            assert float(half95) == pytest.approx(float(q[1] * scale), rel=1e-4)
            assert float(scale) == pytest.approx(float(test[int(torch.nonzero(batch["series"] == s)[0])]["scale"]),
                                                 rel=1e-4)


def test_series_embedding_feeds_each_window_its_series_vector(tmp_path):
    """series_embedding: on a panel the LSTM reads each step's inputs followed by its series'
    learned vector (checked by hand against the network's parts); it trains, survives a
    checkpoint, and is absent for one series."""
    from peephole_lstm.forecast.network import PeepholeLSTMNet

    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=8, num_layers=1, horizon=2,
                                  series_embedding=3)
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    net = model.net.eval()
    assert net.emb.weight.shape == (3, 3) and net.lstm.input_size == dm.input_size + 3
    ds = dm.dataset("test")
    b = torch.utils.data.default_collate([ds[k] for k in range(0, len(ds), 7)])
    with torch.no_grad():
        x_in = torch.cat([b["x"], net.emb.weight[b["series"]][:, None].expand(-1, b["x"].size(1), -1)], dim=-1)
        want = net.head(net.lstm(x_in)[1][0][-1])
        torch.testing.assert_close(model(b["x"], b["series"]), want)
        # another series' vector gives another forecast: the vector is used
        assert not torch.allclose(model(b["x"], (b["series"] + 1) % 3), want)
        with pytest.raises(ValueError, match="per-series parts for 3 series: forward needs each window's series"):
            model(b["x"])
    trainer.save_checkpoint(tmp_path / "e.ckpt")
    loaded = PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "e.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(b["x"], b["series"]), want)
    # one series: no embedding, the LSTM reads the inputs alone
    one = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, series_embedding=3)
    L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, enable_model_summary=False).fit(
        one, SeriesDataModule(dataset="synthetic", window=10, batch_size=16))
    assert one.net.emb is None and one.net.lstm.input_size == 1
    with pytest.raises(ValueError, match="series_embedding must be a non-negative integer"):
        PeepholeLSTMRegressor(series_embedding=-1)
    with pytest.raises(ValueError, match="dim must be a non-negative integer"):
        PeepholeLSTMNet().set_series_embedding(2, 1.5)


def test_ensemble_trains_members_on_their_own_losses_and_forecasts_their_mean(tmp_path):
    """ensemble=K: K networks from different initial weights, each with its own series vectors
    and the one fitted AR term; the training loss gives each member the gradient of its own
    MSE (over K); the forecast is the members' mean, also after a checkpoint; one network
    keeps the checkpoint keys it always had."""
    import torch.nn.functional as F

    path, _ = _panel(tmp_path)
    dm = SeriesDataModule(path, id_column="id", window=14, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, hidden_size=6, num_layers=1, horizon=2,
                                  series_embedding=2, ar_window="auto", ensemble=3)
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    nets = model.nets
    assert len(nets) == 3 and nets[0] is model.net
    for other in nets[1:]:  # own LSTM and series vectors, the same fixed AR term
        assert not torch.allclose(other.lstm.weight_hh_l0, nets[0].lstm.weight_hh_l0)
        assert not torch.allclose(other.emb.weight, nets[0].emb.weight)
        torch.testing.assert_close(other.ar.weight, nets[0].ar.weight)
        assert not other.ar.weight.requires_grad
    b = next(iter(dm.train_dataloader()))
    model.train()
    model.trainer = None  # training_step outside the loop (its self.log then does nothing)
    torch.manual_seed(1)  # dropout: the same draws for both computations
    with pytest.warns(UserWarning, match="self.log"):
        loss = model.training_step(b, 0)
    for k, net in enumerate(nets):
        params = [p for p in net.parameters() if p.requires_grad]
        got = torch.autograd.grad(loss, params, retain_graph=True)
        torch.manual_seed(1)
        for earlier in nets[:k]:  # replay the dropout draws of the members before it
            earlier(b["x"], b["series"])
        want = torch.autograd.grad(F.mse_loss(net(b["x"], b["series"]), b["y"]) / 3, params)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
    model.eval()
    with torch.no_grad():
        mean = torch.stack([net(b["x"], b["series"]) for net in nets]).mean(0)
        torch.testing.assert_close(model(b["x"], b["series"]), mean)
    trainer.save_checkpoint(tmp_path / "k.ckpt")
    loaded = PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "k.ckpt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(b["x"], b["series"]), mean)
    assert not any(k.startswith("ensemble_nets") for k in PeepholeLSTMRegressor().state_dict())
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="ensemble must be a positive integer"):
            PeepholeLSTMRegressor(ensemble=bad)


def test_a_checkpoint_forecasts_its_series_extended_in_its_training_units(tmp_path):
    """Retrained on nothing, a checkpoint forecasts a longer CSV of its series with the scalers
    of its training rows (the new file's training rows give another scale); another series
    under the same column name keeps its own."""
    rng = np.random.default_rng(3)
    values = np.cumsum(rng.normal(size=400) * np.linspace(1, 4, 400))  # volatility grows: scalers move
    frame = pd.DataFrame({"date": pd.date_range("2000-01-03", periods=400, freq="W").strftime("%Y-%m-%d"),
                          "value": values})
    frame.iloc[:300].to_csv(tmp_path / "old.csv", index=False)
    frame.to_csv(tmp_path / "new.csv", index=False)
    frame.assign(value=values[::-1] * 10).to_csv(tmp_path / "other.csv", index=False)
    kw = dict(window=12, batch_size=32)
    old = SeriesDataModule(str(tmp_path / "old.csv"), **kw)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, ar_window=3)
    trainer = L.Trainer(max_steps=6, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), val_check_interval=3, check_val_every_n_epoch=None)
    trainer.fit(model, datamodule=old)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    scale = old.series_diff_scale[0]

    for how in ("ckpt_path", "load_from_checkpoint"):
        new = SeriesDataModule(str(tmp_path / "new.csv"), **kw)
        assert new.series_diff_scale[0] != pytest.approx(scale, rel=0.05)  # the premise
        predictor = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
        if how == "ckpt_path":
            preds = predictor.predict(PeepholeLSTMRegressor(hidden_size=4, num_layers=1, ar_window=3),
                                      datamodule=new, ckpt_path=str(tmp_path / "m.ckpt"))
        else:
            preds = predictor.predict(PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "m.ckpt"), datamodule=new)
        assert new.restored == ["value"] and new.series_diff_scale[0] == scale
        future = torch.cat([p["forecast"] for p in preds])[-1]
        # by hand: the last 12 values relative to the last one, in the old scale
        x = torch.tensor((values[-12:] - values[-1]) / scale, dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            want = model.eval()(x)[0, 0] * scale + values[-1]
        torch.testing.assert_close(future.double().reshape(()), want.double(), rtol=1e-5, atol=1e-4)

    other = SeriesDataModule(str(tmp_path / "other.csv"), **kw)
    own = other.series_diff_scale[0]
    L.Trainer(logger=False, enable_progress_bar=False).predict(
        PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "m.ckpt"), datamodule=other)
    assert other.restored == [] and other.series_diff_scale[0] == own
    frame.assign(temp=1.0 + np.arange(400) % 3).to_csv(tmp_path / "features.csv", index=False)
    with pytest.raises(SeriesDataError, match="trained on the input columns \\['value'\\] .* gives \\['value', 'temp'\\]"):
        SeriesDataModule(str(tmp_path / "features.csv"), features=["temp"], **kw).load_state_dict(old.state_dict())


def test_a_model_that_never_validated_forecasts_without_intervals(tmp_path):
    """No validation residuals in the checkpoint (no validation ran): forecasts, and NaN
    interval bounds instead of intervals calibrated on nothing."""
    dm = SeriesDataModule(dataset="synthetic", window=10, horizon=2, batch_size=32)
    L.seed_everything(0)
    model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, horizon=2, ar_window=3)
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    assert "calibration_residuals" not in torch.load(tmp_path / "m.ckpt", weights_only=False)
    loaded = PeepholeLSTMRegressor.load_from_checkpoint(tmp_path / "m.ckpt")
    preds = L.Trainer(logger=False, enable_progress_bar=False).predict(loaded, datamodule=dm)
    assert torch.isnan(torch.cat([p["lo_80"] for p in preds])).all()
    assert torch.isfinite(torch.cat([p["forecast"] for p in preds])).all()


def test_interval_levels_check():
    from peephole_lstm.forecast.conformal import check_levels, level_name

    assert check_levels([0.95, 0.5]) == (0.5, 0.95) and [level_name(v) for v in (0.8, 0.975, 0.5)] == ["80", "97.5", "50"]
    for bad in ([], [0.0], [1.0], [0.8, 0.8], [1.5], ["x"], None):
        with pytest.raises(ValueError, match="interval_levels must be"):
            check_levels(bad)
    with pytest.raises(ValueError, match="interval_levels must be"):
        PeepholeLSTMRegressor(interval_levels=[0.9, 0.9])


def test_other_interval_levels_through_fit_and_predict(tmp_path, monkeypatch):
    """--model.interval_levels [0.5, 0.9] names the forecast's columns and the metrics; predict
    with that checkpoint at more levels recomputes them from the residuals it keeps: the fit's
    levels come out the same (no level above 90%, so each series draws on the same pool), and
    the intervals nest (50% inside 80% inside 90%)."""
    from peephole_lstm.forecast.cli import main

    monkeypatch.chdir(tmp_path)
    path, _ = _panel(tmp_path)
    common = ["--data.csv_path", path, "--data.id_column", "id", "--data.target", "value", "--data.window", "10",
              "--model.hidden_size", "4", "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--model.interval_levels", "[0.9, 0.5]", "--trainer.max_steps", "4",
          "--trainer.val_check_interval", "2", "--trainer.logger", "false"])
    run = tmp_path / "runs" / "panel" / "version_1"
    fit = pd.read_csv(run / "forecast.csv")
    assert {"lo_50", "hi_50", "lo_90", "hi_90"} <= set(fit.columns) and "lo_80" not in fit.columns
    per = pd.read_csv(run / "metrics_per_series.csv")
    assert {"coverage_50", "coverage_90", "msis_50", "msis_90"} <= set(per.columns)
    assert (per["coverage_50"] <= per["coverage_90"]).all()
    main(["predict", *common, "--model.interval_levels", "[0.5, 0.8, 0.9]",
          "--ckpt_path", str(next((run / "checkpoints").glob("*.ckpt")))])
    again = pd.read_csv(run / "forecast.csv")
    for col in ("forecast", "lo_50", "hi_50", "lo_90", "hi_90"):
        np.testing.assert_allclose(again[col], fit[col], rtol=1e-6, err_msg=col)
    for a, b in (("90", "80"), ("80", "50")):
        assert (again[f"lo_{a}"] <= again[f"lo_{b}"]).all() and (again[f"hi_{b}"] <= again[f"hi_{a}"]).all()
    assert (again["lo_80"] < again["lo_50"]).any()  # a real 80% interval, not a copy
