"""PeepholeLSTMRegressor: metrics in original units, the naive baseline, the plain network."""

import pytest
import torch

L = pytest.importorskip("lightning")

from peephole_lstm import PeepholeLSTM, PeepholeLSTMRegressor, SeriesDataModule  # noqa: E402
from peephole_lstm.model import PeepholeLSTMNet  # noqa: E402


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
