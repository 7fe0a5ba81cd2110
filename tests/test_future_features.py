"""Inputs known ahead (``--data.future_features``): a covariate's values at the forecast steps
themselves (a promotion, a holiday, a planned price), given for the future as rows after the
last target value, reaching the network's head and its ARX term."""

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

import lightning as L  # noqa: E402

from peephole_lstm import PeepholeLSTMRegressor, SeriesDataModule  # noqa: E402
from peephole_lstm.forecast.cli import main  # noqa: E402
from peephole_lstm.forecast.datamodule import SeriesDataError  # noqa: E402
from peephole_lstm.forecast.network import PeepholeLSTMNet  # noqa: E402

H = 3


def _promo_frame(n=240, ahead=H, seed=0, start="2021-01-04", effect=2.0):
    """Daily sales: a slow random walk plus ``effect`` on promotion days (a coin flip per day,
    known ahead), ``ahead`` rows after the last sale with the promotion plan and no sales."""
    rng = np.random.default_rng(seed)
    promo = (rng.random(n + ahead) < 0.3).astype(float)
    sales = 20 + np.cumsum(rng.normal(scale=0.1, size=n + ahead)) + effect * promo
    frame = pd.DataFrame({
        "date": pd.date_range(start, periods=n + ahead, freq="D").strftime("%Y-%m-%d"),
        "price": rng.normal(size=n + ahead).round(3),
        "promo": promo,
        "sales": sales.round(4),
    })
    frame.loc[n:, "sales"] = np.nan
    frame.loc[n:, "price"] = np.nan  # a past-only feature: unknown ahead, and not needed there
    return frame




def _module(path, **kwargs):
    opts = dict(target="sales", features=["price"], future_features=["promo"], window=10, horizon=H,
                val_fraction=0.2, test_fraction=0.2, batch_size=32)
    opts.update(kwargs)
    return SeriesDataModule(path, **opts)


def test_items_carry_the_known_ahead_values_of_every_target_step(tmp_path, write_csv):
    frame = _promo_frame()
    dm = _module(write_csv(frame, "promo.csv"))
    assert dm.input_columns == ["sales", "price", "promo"] and dm.future_channels == [2]
    assert dm.input_size == 3 and dm.future_size == 1
    promo = frame["promo"].to_numpy()
    mean, std = promo[: dm.split_rows[0][0]].mean(), promo[: dm.split_rows[0][0]].std()
    for split in ("train", "test"):
        ds = dm.dataset(split)
        for k in (0, len(ds) - 1):
            item, e = ds[k], int(ds.ends[k])
            want = (promo[e : e + H] - mean) / std  # the values at the targets' own rows
            np.testing.assert_allclose(item["future"][:, 0].numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(item["x"][:, 2].numpy(), (promo[e - 10 : e] - mean) / std, atol=1e-6)
    fut = dm.dataset("future")[0]
    assert int(fut["end"]) == 240 and torch.isnan(fut["y"]).all()
    np.testing.assert_allclose(fut["future"][:, 0].numpy(), (promo[240:] - mean) / std, atol=1e-6)
    assert dm.future_labels(0) == frame["date"].iloc[240:].tolist()
    assert len(dm.series) == 240  # the plan rows are no part of the series
    assert dm.state_dict()["future_channels"] == ["promo"]
    cal = _module(write_csv(frame, "promo.csv"), calendar=True)  # the known-ahead channels stay the last
    assert cal.input_columns[:2] == ["sales", "price"] and cal.input_columns[-1] == "promo"
    assert cal.input_size == 7 and cal.future_channels == [6]
    item = cal.dataset("test")[0]
    np.testing.assert_allclose(item["x"][:, 6].numpy(), (promo[int(item["end"]) - 10 : int(item["end"])] - mean) / std,
                               atol=1e-6)


def test_rows_further_ahead_than_the_horizon_are_not_used(tmp_path, write_csv):
    dm = _module(write_csv(_promo_frame(ahead=10), "promo.csv"))
    assert len(dm.series) == 240 and len(dm.future_labels(0)) == H


def test_a_panel_takes_each_series_own_rows_after_its_own_last_value(tmp_path, write_csv):
    a, b = _promo_frame(seed=1), _promo_frame(n=200, seed=2, start="2021-03-01")
    frame = pd.concat([a.assign(store="a"), b.assign(store="b")], ignore_index=True).sample(frac=1, random_state=0)
    dm = _module(write_csv(frame, "promo.csv"), id_column="store")
    assert sorted(dm.series_names) == ["a", "b"]
    for name, want in (("a", a), ("b", b)):
        s = dm.series_names.index(name)
        n = len(want) - H
        assert dm.starts[s + 1] - dm.starts[s] == n
        assert dm.future_labels(s) == want["date"].iloc[n:].tolist()
        np.testing.assert_allclose(dm.future_values(s)[:, 0], want["promo"].iloc[n:].to_numpy())


@pytest.mark.parametrize(
    "change,kwargs,match",
    [
        (None, dict(future_features=["plan"]), "unknown column 'plan'"),
        (None, dict(features=["promo"]), "'promo' in both features and future_features"),
        (None, dict(future_features=["promo", "promo"]), "future_features names 'promo' more than once"),
        (None, dict(future_features=["sales"]), "the target 'sales' is always input 0; do not list it in future_features"),
        ("short", {}, r"needs the values of future_features \['promo'\] at the 3 step\(s\) after its last value "
                      r"\(2021-08-31\), as rows with the target empty; there are 1: .*--data.predict test"),
        ("hole", {}, r"future feature 'promo' has no numeric value at 2021-09-02 \(forecast step 2 of 3"),
        ("gap", {}, r"give future_features for 2021-09-01, 2021-09-03, 2021-09-04, but the forecast steps are "
                    r"2021-09-01, 2021-09-02, 2021-09-03"),
    ],
)
def test_bad_known_ahead_inputs_are_one_clear_error(tmp_path, change, kwargs, match, write_csv):
    frame = _promo_frame(ahead=4)
    if change == "short":
        frame = frame.iloc[:241]
    elif change == "hole":
        frame.loc[241, "promo"] = np.nan
    elif change == "gap":
        frame = frame.drop(index=241)
    with pytest.raises(SeriesDataError, match=match):
        _module(write_csv(frame, "promo.csv"), **kwargs)


def test_without_plan_rows_the_test_split_still_forecasts(tmp_path, write_csv):
    dm = _module(write_csv(_promo_frame(ahead=0), "promo.csv"), predict="test")
    assert len(dm.dataset("test")) > 0
    with pytest.raises(SeriesDataError, match="no rows after its last value giving future_features"):
        dm.dataset("future")[0]


def test_the_arx_term_is_the_least_squares_fit_on_lags_and_known_inputs():
    """fit_ar with known-ahead inputs: on data that an ARX model explains exactly (the target's
    lags, the known channels' lags and their values at the forecast steps), the closed form
    recovers its coefficients (checked against numpy's least squares), and forward applies them
    to the right channels of the window."""
    g = torch.Generator().manual_seed(0)
    n, p, h, f = 400, 4, 2, 2
    lags = torch.randn(n, p, 1 + f, generator=g, dtype=torch.float64)  # channel 0, then the known ones
    future = torch.randn(n, h, f, generator=g, dtype=torch.float64)
    X = np.concatenate([lags.transpose(1, 2).flatten(1).numpy(), future.flatten(1).numpy(), np.ones((n, 1))], 1)
    coef = np.random.default_rng(0).normal(size=(X.shape[1], h))
    target = torch.from_numpy(X @ coef + 1e-6 * np.random.default_rng(1).normal(size=(n, h)))
    net = PeepholeLSTMNet(input_size=2 + f, hidden_size=3, num_layers=1, horizon=h, ar_window=p,
                          future_size=f).double()
    net.fit_ar(lags, target, future=future)
    want = np.linalg.lstsq(X, target.numpy(), rcond=None)[0]  # (p * (1 + f) + h * f + 1, h)
    np.testing.assert_allclose(net.ar.weight.detach().numpy(), want[:-1].T, atol=2e-3)
    np.testing.assert_allclose(net.ar.bias.detach().numpy(), want[-1], atol=2e-3)
    # forward: channel 0 and the last f channels feed the AR term (channel 1, a plain feature, does not)
    x = torch.randn(5, 6, 2 + f, generator=g, dtype=torch.float64)
    x[:, -p:, 0], x[:, -p:, 2:] = lags[:5, :, 0], lags[:5, :, 1:]
    net.eval()
    with torch.no_grad():
        out = net(x, future=future[:5])
        _, (h_n, _) = net.lstm(x)
        z = torch.cat([h_n[-1], future[:5].flatten(1)], 1)  # the last state and the known inputs
        head = net.head(torch.cat([z, net.future_net(z)], 1))
    np.testing.assert_allclose(out.numpy(), (head + torch.from_numpy(X[:5] @ want)).numpy(), atol=1e-2)
    # per-series lag counts: a series on fewer lags gets zero weight on the older ones of every channel
    net2 = PeepholeLSTMNet(input_size=2 + f, hidden_size=3, num_layers=1, horizon=h, ar_window=p, future_size=f)
    net2.set_ar_window(p, series=2)
    net2.double().fit_ar(lags, target, series=torch.arange(n) % 2, lags_per_series=[p, 2], future=future)
    w = net2.ar.weight.detach()[h:]  # series 1: lags 2 of each channel
    for c in range(1 + f):
        assert (w[:, c * p : c * p + p - 2] == 0).all() and (w[:, c * p + p - 2 : (c + 1) * p] != 0).all()
    assert (w[:, p * (1 + f) :] != 0).all()


def test_the_network_checks_its_known_ahead_inputs():
    net = PeepholeLSTMNet(hidden_size=3, num_layers=1, horizon=2, future_size=2)
    x = torch.zeros(4, 5, 1)
    with pytest.raises(ValueError, match=r"future \(N, horizon, future_size\) = \(4, 2, 2\); got none"):
        net(x)
    with pytest.raises(ValueError, match=r"= \(4, 2, 2\); got \(4, 2, 1\)"):
        net(x, future=torch.zeros(4, 2, 1))
    with pytest.raises(ValueError, match="takes no known-ahead inputs"):
        PeepholeLSTMNet(hidden_size=3, num_layers=1)(x, future=torch.zeros(4, 1, 1))
    with pytest.raises(ValueError, match="future_size must be a non-negative integer"):
        PeepholeLSTMNet(future_size=-1)
    assert net.head.in_features == 3 + 2 * 2 + 3  # the last state, the known inputs, the hidden layer
    assert net.future_net[0].in_features == 3 + 2 * 2
    # gradients reach the head's weights of the known inputs and the hidden layer
    net(x, future=torch.randn(4, 2, 2)).sum().backward()
    assert net.head.weight.grad[:, 3:].abs().sum() > 0 and net.future_net[0].weight.grad[:, 3:].abs().sum() > 0


def _fit(dm, future_size, steps=150, seed=0):
    L.seed_everything(seed, verbose=False)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, future_size=future_size, hidden_size=16, num_layers=1,
                                  dropout=0.0, horizon=H, lr=0.01, ar_window="auto")
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, dm)
    return model, trainer, trainer.test(model, dm, verbose=False)[0]


def test_knowing_the_promotions_ahead_beats_knowing_only_the_past(tmp_path, write_csv):
    """The same column as a past-only feature cannot tell whether the target day has a
    promotion (an error of about effect² · p(1-p) = 0.84 remains); known ahead it can."""
    frame = _promo_frame(n=400)
    _, _, known = _fit(_module(write_csv(frame, "promo.csv")), 1)
    past = _module(write_csv(frame.iloc[:400], "past.csv"), features=["price", "promo"], future_features=None)
    _, _, unknown = _fit(past, 0)
    assert unknown["test_mse"] > 0.5
    assert known["test_mse"] < 0.2 * unknown["test_mse"]
    assert known["test_mse"] < 0.2 * known["test_naive_mse"]


def test_the_model_and_the_data_must_agree_on_the_known_inputs(tmp_path, write_csv):
    dm = _module(write_csv(_promo_frame(), "promo.csv"))
    model = PeepholeLSTMRegressor(input_size=dm.input_size, horizon=H, hidden_size=4, num_layers=1)
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"the data gives 1 known-ahead input\(s\) \(future_features \['promo'\]\) "
                                         "but the model takes 0: build it with future_size=1"):
        trainer.fit(model, dm)


def test_future_features_through_the_cli(tmp_path, monkeypatch, capsys, write_csv):
    """fit forecasts the plan rows' dates; predict with the checkpoint gives the same forecast;
    a checkpoint fitted with known-ahead inputs names the option when they are missing."""
    monkeypatch.chdir(tmp_path)
    frame = _promo_frame()
    write_csv(frame, "promo.csv")
    common = ["--data.csv_path", "promo.csv", "--data.target", "sales", "--data.features", "[price]",
              "--data.window", "10", "--data.horizon", str(H), "--model.hidden_size", "8", "--model.ensemble", "1",
              "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--data.future_features", "[promo]", "--trainer.max_steps", "6",
          "--trainer.val_check_interval", "3", "--trainer.logger", "false"])
    run = tmp_path / "runs" / "promo" / "version_1"
    forecast = pd.read_csv(run / "forecast.csv")
    future = forecast[forecast["kind"] == "future"]
    assert future["time"].tolist() == frame["date"].iloc[240:].tolist() and future["step"].tolist() == [1, 2, 3]
    assert future["actual"].isna().all() and np.isfinite(future[["forecast", "lo_80", "hi_95"]].to_numpy()).all()
    ckpt = str(next((run / "checkpoints").glob("*.ckpt")))
    main(["predict", *common, "--data.future_features", "[promo]", "--ckpt_path", ckpt])
    again = pd.read_csv(run / "forecast.csv")
    np.testing.assert_allclose(again["forecast"], forecast["forecast"], rtol=1e-5)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # the plan rows, but not named: the target's missing end
        main(["predict", *common, "--data.features", "[price, promo]", "--ckpt_path", ckpt])
    assert "'sales' has no value in its last 3 row(s), from data row 241: if they give inputs known ahead" in (
        capsys.readouterr().err)
    frame.iloc[:240].to_csv(tmp_path / "past.csv", index=False)
    past = [("past.csv" if a == "promo.csv" else a) for a in common]
    with pytest.raises(SystemExit) as exc:
        main(["predict", *past, "--data.features", "[price, promo]", "--ckpt_path", ckpt])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "known ahead ['promo']" in err and "--data.future_features [promo]" in err


def test_without_a_time_column_the_steps_are_row_numbers(tmp_path, write_csv):
    frame = _promo_frame().drop(columns="date")
    dm = _module(write_csv(frame, "promo.csv"))
    assert dm.time_name is None and dm.future_labels(0) == ["240", "241", "242"]
    frame.loc[241, "promo"] = np.nan
    with pytest.raises(SeriesDataError, match=r"no numeric value at 241 \(forecast step 2 of 3"):
        _module(write_csv(frame, "promo.csv"))
