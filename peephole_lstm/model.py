"""PeepholeLSTMRegressor: the LightningModule; PeepholeLSTMNet: the plain network it wraps."""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError, MetricCollection

from .lstm import PeepholeLSTM

__all__ = ["PeepholeLSTMNet", "PeepholeLSTMRegressor"]


class PeepholeLSTMNet(nn.Module):
    """Stacked peephole LSTM → dropout → linear head. A plain ``nn.Module`` (no Lightning).

    Input ``(N, L, input_size)`` (batch first), output ``(N, horizon)``.
    """

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 50,
        num_layers: int = 3,
        dropout: float = 0.2,
        horizon: int = 1,
        peephole: str = "diagonal",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.lstm = PeepholeLSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,  # between layers
            bidirectional=bidirectional,
            peephole=peephole,
        )
        self.dropout = nn.Dropout(dropout)  # after the last layer
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), horizon)

    def forward(self, x: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(x)  # h_n: (num_layers * D, N, H)
        D = 2 if self.lstm.bidirectional else 1
        last = torch.cat(list(h_n[-D:]), dim=-1)  # (N, D*H): the top layer, each direction's end
        return self.head(self.dropout(last))  # (N, horizon)


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "mse": MeanSquaredError(),
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mape": MeanAbsolutePercentageError(),
        },
        prefix=prefix,
    )


class PeepholeLSTMRegressor(L.LightningModule):
    """Forecast the next ``horizon`` values of a series with a peephole LSTM.

    Trains on MSE of the scaled targets with Adam; reports ``{val,test}_{mse,mae,rmse,mape}``
    in the series' original units, and ``{val,test}_naive_mse``: the persistence forecast
    (the last observed value) on the same targets, so every run shows whether it beats it.

    Args:
        input_size: input channels (the CLI links it to the data: target + features).
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM layers.
        dropout: dropout between the layers and after the last one.
        horizon: steps forecast at once (the CLI links it to the data's).
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2).
        peephole: ``"diagonal"``, ``"full"`` or ``"none"`` (a plain LSTM, for ablations).
        bidirectional: run each layer both ways over the input window.
    """

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 50,
        num_layers: int = 3,
        dropout: float = 0.2,
        horizon: int = 1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        peephole: str = "diagonal",
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = PeepholeLSTMNet(input_size, hidden_size, num_layers, dropout, horizon, peephole, bidirectional)
        self.val_metrics = _metrics("val_")
        self.test_metrics = _metrics("test_")
        self.val_naive_mse = MeanSquaredError()
        self.test_naive_mse = MeanSquaredError()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Dropout draws from the global RNG, which other code (a DataLoader iterator's base
        # seed, drawn at a point that differs on resume) also consumes: seed it per step so
        # that a run resumed from a checkpoint continues exactly as the uninterrupted one.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed((seed * 1_000_003 + self.global_step) * 64 + self.global_rank)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.mse_loss(self(batch["x"]), batch["y"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["x"]))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        pred = self(batch["x"])
        n = len(batch["x"])
        self.log(f"{stage}_loss", F.mse_loss(pred, batch["y"]), prog_bar=True, sync_dist=True, batch_size=n)
        pred_o, y_o = self.to_original(pred, batch), self.to_original(batch["y"], batch)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        naive = self.val_naive_mse if stage == "val" else self.test_naive_mse
        metrics.update(pred_o, y_o)
        naive.update(batch["naive"].expand_as(y_o).contiguous(), y_o)
        self.log_dict(metrics, batch_size=n)
        self.log(f"{stage}_naive_mse", naive, batch_size=n)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Forecasts in original units, with the actual values, the naive forecast and the
        row of the first forecast step."""
        return {
            "forecast": self.to_original(self(batch["x"]), batch),
            "actual": self.to_original(batch["y"], batch),
            "naive": batch["naive"].expand_as(batch["y"]).contiguous(),
            "end": batch["end"],
        }

    @staticmethod
    def to_original(scaled: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return scaled * batch["scale"] + batch["offset"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
