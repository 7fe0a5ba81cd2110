"""PeepholeLSTMRegressor: metrics in original units, the naive baseline, the plain network."""

import pytest
import torch

L = pytest.importorskip("lightning")

from peephole_lstm import PeepholeLSTM, PeepholeLSTMRegressor, SeriesDataModule  # noqa: E402
from peephole_lstm.forecast.network import PeepholeLSTMNet  # noqa: E402


@pytest.mark.parametrize("scaling", ["last", "zscore"])
def test_test_metrics_are_in_original_units(scaling):
    dm = SeriesDataModule(dataset="synthetic", window=10, horizon=2, batch_size=50, scaling=scaling)
    model = PeepholeLSTMRegressor(input_size=1, hidden_size=6, num_layers=1, horizon=2)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    logged = trainer.test(model, datamodule=dm, verbose=False)[0]
    model.eval()
    preds, ys, naives = [], [], []
    with torch.no_grad():
        for k in range(len(dm.dataset("test"))):
            item = dm.dataset("test")[k]
            pred = model(item["x"][None])[0]
            preds.append(pred * item["scale"] + item["offset"])
            ys.append(torch.as_tensor(dm.series[item["end"] : item["end"] + 2], dtype=torch.float32))
            naives.append(torch.full((2,), dm.series[item["end"] - 1], dtype=torch.float32))
    pred, y, naive = torch.stack(preds), torch.stack(ys), torch.stack(naives)
    assert logged["test_mse"] == pytest.approx(((pred - y) ** 2).mean().item(), rel=1e-4)
    assert logged["test_mae"] == pytest.approx((pred - y).abs().mean().item(), rel=1e-4)
    assert logged["test_rmse"] == pytest.approx(((pred - y) ** 2).mean().sqrt().item(), rel=1e-4)
    assert logged["test_mape"] == pytest.approx(((pred - y).abs() / y.abs()).mean().item(), rel=1e-4)
    assert logged["test_naive_mse"] == pytest.approx(((naive - y) ** 2).mean().item(), rel=1e-4)


def test_network_is_plain_torch_and_uses_peephole_lstm():
    net = PeepholeLSTMNet(input_size=2, hidden_size=5, num_layers=3, dropout=0.2, horizon=4, bidirectional=True)
    assert isinstance(net.lstm, PeepholeLSTM) and not isinstance(net, L.LightningModule)
    assert net.lstm.dropout == 0.2 and net.lstm.batch_first
    assert net(torch.randn(7, 11, 2)).shape == (7, 4)


def test_hyperparameters_are_saved():
    model = PeepholeLSTMRegressor(hidden_size=7, peephole="none", weight_decay=1e-4)
    assert model.hparams.hidden_size == 7 and model.hparams.peephole == "none"
    assert model.net.lstm.peephole == "none"
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["weight_decay"] == 1e-4


def test_import_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, peephole_lstm; assert 'lightning' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ar_window_adds_a_linear_term_on_the_last_target_values():
    """ar_window: the forecast is the LSTM head's plus a linear map of the last ar_window values
    of channel 0 (checked with a hand-made map against the network with the term removed)."""
    torch.manual_seed(0)
    net = PeepholeLSTMNet(input_size=2, hidden_size=5, num_layers=2, dropout=0.0, horizon=3, ar_window=4)
    x = torch.randn(6, 9, 2)
    assert torch.equal(net(x), net(x))
    base = net.head(net.lstm(x)[1][0][-1])  # the LSTM alone, (6, 3)
    torch.testing.assert_close(net(x), base)  # the term starts at zero
    with torch.no_grad():
        net.ar.weight.copy_(torch.arange(12.0).view(3, 4))
        net.ar.bias.copy_(torch.tensor([1.0, -1.0, 0.5]))
    lags = x[:, -4:, 0]  # (6, 4), oldest first
    expect = base + lags @ torch.arange(12.0).view(3, 4).t() + torch.tensor([1.0, -1.0, 0.5])
    torch.testing.assert_close(net(x), expect)
    with pytest.raises(ValueError, match=r"ar_window \(4\) is longer than the input window \(3 steps\)"):
        net(torch.randn(6, 3, 2))
    with pytest.raises(ValueError, match="ar_window must be a non-negative integer"):
        PeepholeLSTMNet(ar_window=-1)
    assert PeepholeLSTMNet().ar is None  # off by default: the checkpoints of earlier versions load
    model = PeepholeLSTMRegressor(input_size=2, hidden_size=5, num_layers=1, horizon=3, ar_window=4)
    assert model.hparams.ar_window == 4 and model.net.ar.in_features == 4


def test_ridge_ar_matches_the_normal_equations_and_brute_force_leave_one_out():
    """ridge_ar against an independent numpy reference: the penalised normal equations with an
    unpenalised intercept column, and the leave-one-out error by refitting without each row
    (ridge_ar uses the hat-matrix shortcut, no refits)."""
    import numpy as np

    from peephole_lstm.forecast.network import ridge_ar

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3))
    Y = X @ np.array([[0.5, -1.0], [0.2, 0.3], [-0.7, 0.1]]) + 0.3 + rng.normal(scale=0.8, size=(30, 2))
    X[:, 2] += 2.0 * X[:, 0]  # correlated lags: the penalty matters

    def fit(A, B, lam):
        A1 = np.c_[A, np.ones(len(A))]
        pen = lam * np.eye(A1.shape[1])
        pen[-1, -1] = 0.0  # the intercept is not penalised
        return np.linalg.solve(A1.T @ A1 + pen, A1.T @ B)

    ridges = tuple(10.0 ** np.linspace(-2, 3, 41))  # fine: a biased leave-one-out error moves the choice
    loo = [np.mean([(np.r_[X[i], 1.0] @ fit(np.delete(X, i, 0), np.delete(Y, i, 0), lam) - Y[i]) ** 2
                    for i in range(len(X))]) for lam in ridges]
    k = int(np.argmin(loo))
    assert 0 < k < len(ridges) - 1 and min(loo[k - 1], loo[k + 1]) / loo[k] > 1 + 1e-6  # an interior, strict minimum
    lam = ridges[k]
    ref = fit(X, Y, lam)
    for chosen in (lam, 300.0):  # the choice by leave-one-out, and a given penalty
        W, b, got = ridge_ar(torch.tensor(X), torch.tensor(Y), ridges if chosen == lam else (chosen,))
        assert got == chosen
        ref = fit(X, Y, chosen)
        torch.testing.assert_close(W, torch.tensor(ref[:3].T), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(b, torch.tensor(ref[3]), rtol=1e-9, atol=1e-12)
    # rows with a NaN are left out; too few rows and wrong shapes are errors
    Xn, Yn = np.r_[X, [[np.nan, 0, 0]]], np.r_[Y, [[1.0, 1.0]]]
    W, b, _ = ridge_ar(torch.tensor(Xn), torch.tensor(Yn), (3.0,))
    torch.testing.assert_close(W, torch.tensor(fit(X, Y, 3.0)[:3].T), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 3 complete training windows, got 2"):
        ridge_ar(torch.randn(2, 3), torch.randn(2, 1))
    with pytest.raises(ValueError, match=r"ridge_ar expects lags \(N, p\) and target \(N, horizon\)"):
        ridge_ar(torch.randn(5, 3), torch.randn(4, 1))
    net = PeepholeLSTMNet(ar_window=3, horizon=2)
    with pytest.raises(ValueError, match=r"fit_ar expects lags \(N, ar_window=3\)"):
        net.fit_ar(torch.randn(5, 4), torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"fit_ar expects target \(N, horizon=2\)"):
        net.fit_ar(torch.randn(5, 3), torch.randn(5, 1))


@pytest.mark.parametrize("with_datamodule", [True, False])
def test_ar_term_is_the_ridge_fit_on_the_training_windows_and_stays_fixed(with_datamodule):
    """Training starts from the AR term's closed-form fit on every training window and keeps
    it; the LSTM trains. With plain data loaders (no data module) the same fit happens when
    training starts."""
    from peephole_lstm.forecast.network import ridge_ar

    dm = SeriesDataModule(dataset="synthetic", window=12, horizon=2, batch_size=32)
    torch.manual_seed(0)
    model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, horizon=2, ar_window=5)
    lstm_before = [p.detach().clone() for p in model.net.lstm.parameters()]
    trainer = L.Trainer(max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0)
    if with_datamodule:
        trainer.fit(model, datamodule=dm)
    else:
        trainer.fit(model, train_dataloaders=dm.train_dataloader(), val_dataloaders=dm.val_dataloader())
    ds = dm.dataset("train")
    items = [ds[k] for k in range(len(ds))]
    W, b, lam = ridge_ar(torch.stack([it["x"][-5:, 0] for it in items]), torch.stack([it["y"] for it in items]))
    torch.testing.assert_close(model.net.ar.weight, W.float())
    torch.testing.assert_close(model.net.ar.bias, b.float())
    assert model.ar_penalty == [lam]
    assert any(not torch.equal(a, p) for a, p in zip(lstm_before, model.net.lstm.parameters()))
    # a second fit continues from the trained model: no refit
    with torch.no_grad():
        model.net.ar.bias.add_(1.0)
    L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0).fit(model, datamodule=dm)
    torch.testing.assert_close(model.net.ar.bias, b.float() + 1.0)


def test_ar_lags_beyond_the_window_reach_the_ar_term_and_not_the_lstm(tmp_path):
    """The AR term may read further back than the LSTM: with ``lstm_window`` the network's
    forecast is the head on the LSTM over the last ``lstm_window`` steps plus the AR map of the
    last ``ar_window`` (checked against the parts called directly); ``ar_window="auto"`` on a
    season of 10 with a window of 5 takes 21 lags, and they are what forecasts a season that 5
    lags cannot."""
    import numpy as np
    import pandas as pd

    torch.manual_seed(0)
    net = PeepholeLSTMNet(input_size=2, hidden_size=5, num_layers=1, dropout=0.0, horizon=2, ar_window=8)
    net.lstm_window = 3
    with torch.no_grad():
        net.ar.weight.normal_()
    x = torch.randn(4, 8, 2)
    expect = net.head(net.lstm(x[:, -3:])[1][0][-1]) + net.ar(x[:, :, 0])
    torch.testing.assert_close(net(x), expect)
    assert not torch.allclose(net(x), net.head(net.lstm(x)[1][0][-1]) + net.ar(x[:, :, 0]))

    pattern = np.random.default_rng(0).normal(size=10)  # a season of 10 that no short AR reproduces
    csv = tmp_path / "season.csv"
    pd.DataFrame({"value": np.tile(pattern, 30)}).to_csv(csv, index=False)
    errors = {}
    for ar_window in ("auto", 5):
        dm = SeriesDataModule(str(csv), window=5, season=10, batch_size=64)
        model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, ar_window=ar_window)
        L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  enable_checkpointing=False, num_sanity_val_steps=0).fit(model, dm)
        batch = next(iter(dm.test_dataloader()))
        p = model.net.ar_window
        ar = model.net.ar(batch["x"][:, -p:, 0])  # the AR term alone, (N, 1)
        errors[ar_window] = (ar - batch["y"]).pow(2).mean().item()
        if ar_window == "auto":
            assert p == 21 and model.net.lstm_window == 5 and batch["x"].shape[1] == 21
    assert errors["auto"] < 1e-3 < 0.1 < errors[5], errors


def test_a_panel_series_with_fewer_lags_does_not_read_the_padded_rows(tmp_path):
    """On a panel whose series want different lags (daily: 15, monthly: 25, window 10) the
    items carry 25 rows; the daily series' forecast does not change when its 10 oldest rows
    (padding or not, beyond its lags and the LSTM's window) do."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.concat([
        pd.DataFrame({"id": "daily", "date": pd.date_range("2020-01-01", periods=200, freq="D"),
                      "v": rng.normal(size=200)}),
        pd.DataFrame({"id": "monthly", "date": pd.date_range("2000-01-01", periods=200, freq="MS"),
                      "v": rng.normal(size=200)}),
    ])
    csv = tmp_path / "mixed.csv"
    frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d")).to_csv(csv, index=False)
    dm = SeriesDataModule(str(csv), id_column="id", window=10, batch_size=64)
    model = PeepholeLSTMRegressor(hidden_size=4, num_layers=1, ar_window="auto", series_embedding=2)
    L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, num_sanity_val_steps=0).fit(model, dm)
    assert model._ar_lags == [15, 25] and dm.context == 25 and model.net.lstm_window == 10
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    daily = batch["series"] == 0
    x = batch["x"].clone()
    x[daily, :10] = 1e3  # beyond the daily series' 15 lags
    with torch.no_grad():
        before = model(batch["x"], batch["series"])
        after = model(x, batch["series"])
    assert daily.any() and (~daily).any()
    torch.testing.assert_close(after[daily], before[daily])
    x[~daily, :10] = 1e3  # the monthly series reads them
    with torch.no_grad():
        assert not torch.allclose(model(x, batch["series"])[~daily], before[~daily])


@pytest.mark.parametrize(
    ("season", "window", "n_train", "horizon", "lags"),
    [
        (52, 52, 1599, 1, 105),  # CO2: two seasons + 1, past the window
        (52, 52, 140, 1, 70),  # a short weekly series: half its training rows
        (52, 120, 140, 1, 105),  # ... unless the window holds them
        (12, 52, 512, 1, 25),
        (12, 52, 512, 18, 37),  # El Nino at 18 months: two seasons before the farthest step's phase
        (4, 52, 142, 8, 13),  # unemployment at 8 quarters
        (12, 52, 100, 18, 25),  # air at 18 months: 31 training windows cannot carry 37 lags
        (52, 52, 1599, 13, 105),  # a horizon within the season changes nothing
        (1, 52, 216, 6, 3),  # no season: 3
        (1, 2, 4, 1, 2),  # ... at most half the training rows unless the window holds them
    ],
)
def test_auto_lags(season, window, n_train, horizon, lags):
    """ar_window="auto", per series: the rule of its docstring, case by case."""
    from peephole_lstm.forecast.network import auto_lags

    assert auto_lags(season, window, n_train, horizon) == lags
