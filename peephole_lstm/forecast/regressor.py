"""PeepholeLSTMRegressor: the LightningModule that trains a PeepholeLSTMNet (forecast.network) on a SeriesDataModule."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from typing import Literal, Optional, Union

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanMetric,
    MeanSquaredError,
    MetricCollection,
    SymmetricMeanAbsolutePercentageError,
)

from .conformal import LEVELS, RollingCalibration, check_levels, conformal_quantiles, level_name
from .datamodule import SeriesInfo, series_info
from .network import PeepholeLSTMNet, auto_lags
from .optim import PanelAdam

__all__ = ["PeepholeLSTMRegressor"]


def _cat_freeing(parts: list[Tensor]) -> Optional[Tensor]:
    """``torch.cat(parts)`` (None for no parts) that lets each part go once copied, so the
    peak is the result plus one part, not twice the result; ``parts`` ends empty."""
    if not parts:
        return None
    out = parts[0].new_empty((sum(len(t) for t in parts), *parts[0].shape[1:]))
    at = 0
    parts.reverse()
    while parts:
        t = parts.pop()
        out[at: at + len(t)] = t
        at += len(t)
    return out


def _metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {
            "mse": MeanSquaredError(),
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mape": MeanAbsolutePercentageError(),
            "smape": SymmetricMeanAbsolutePercentageError(),
        },
        prefix=prefix,
    )


class PeepholeLSTMRegressor(L.LightningModule):
    """Forecast the next ``horizon`` values of one or many series with a peephole LSTM, with
    prediction intervals.

    Trains on MSE of the scaled targets with Adam. Reports ``{val,test}_{mse,mae,rmse,mape,smape}``
    in the series' original units (``mape`` a fraction, which explodes for targets near zero;
    ``smape`` the symmetric one of the M4 competition, 2|y - ŷ| / (|y| + |ŷ|), within [0, 2],
    also per series); the classical baselines on the same targets:
    ``{val,test}_naive_mse`` (the last observed value) and ``{val,test}_snaive_mse`` (the
    value one season earlier); ``{val,test}_mase``, the MAE over the in-sample seasonal naive
    MAE of each target's series (the M4 convention, comparable across series); and the
    central prediction intervals' (``interval_levels``, 80% and 95% by default) empirical
    coverage and mean width (``{val,test}_coverage_80``, ``..._width_80``, ...), and on test
    their mean scaled interval score (``test_msis_80``, ...: the M4 competition's MSIS, width plus
    2/α times the distance of each target outside, over the in-sample seasonal naive MAE;
    lower is better, and it rewards narrow intervals only where they still cover). After
    ``test``, ``test_per_series``
    holds the metrics of every series (a DataFrame; the CLI writes it to
    ``metrics_per_series.csv``). ``val_loss`` (what early stopping and checkpoints watch) is
    the MSE in scaled units; on a panel the mean of the series' MSEs, each series once.

    Intervals are split-conformal: a forecast's interval is ``forecast ± q × scale``, ``q``
    per horizon step the conformal quantile of absolute residuals in scaled units (each
    window's scale is its own series', so one pool serves every series). The pool: the last
    validation's residuals (kept in the checkpoint), and in a backtest (``test``,
    ``predict``) each series' residuals of targets before the window's first one, as a
    forecaster who recalibrates when actuals arrive would have them; the future forecast is
    so calibrated on everything up to the end of the data (``peephole_lstm.conformal``).
    Calibrated by construction on exchangeable data, no change to the loss or the point
    forecast, any network. The validation coverage is in-sample (near the level by
    construction); the test coverage is the honest check. Without a validation split there
    are no intervals.

    Args:
        input_size: input channels (the CLI links it to the data: target + features).
        hidden_size: LSTM units per layer.
        num_layers: stacked LSTM layers.
        dropout: dropout between the layers and after the last one.
        horizon: steps forecast at once (the CLI links it to the data's).
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2; on a panel the series embeddings' rows only when
            their series is in the batch: :class:`~peephole_lstm.forecast.optim.PanelAdam`).
        peephole: ``"diagonal"``, ``"full"`` or ``"none"`` (a plain LSTM, for ablations).
        bidirectional: run each layer both ways over the input window.
        cell_clip: clip the cell state to ``[-cell_clip, cell_clip]`` (``None``: no clip).
        ar_window: add a linear autoregressive term on the last ``ar_window`` (scaled) target
            values to the LSTM's forecast (LSTNet's highway; 0: the LSTM alone). More lags than
            the data's ``window`` are read from further back (a :class:`SeriesDataModule`'s
            items then carry them, and the LSTM still reads the last ``window`` steps). Before
            training it is fitted to the training windows in closed
            form (ridge regression, the penalty chosen by leave-one-out error; a panel gets one
            term per series, each fitted on its own windows) and then kept fixed: the LSTM
            learns what the linear model leaves (Zhang 2003's hybrid), which measured better
            than training both from a zero start (``benchmarks/quality.py``). ``"auto"``:
            ``2 season + 1`` lags (a seasonal ARIMA's reach; 3 without a season; on a panel
            each series its own), but no more than half a series' training rows unless the
            window holds them, and more for a ``horizon`` longer than the season
            (:func:`auto_lags`), resolved from the data module when
            training or evaluation starts (``setup``) and saved as that number (the most
            lags of any series) in checkpoints.
        series_embedding: on a panel (several series), a learned vector of this many numbers
            per series that enters the LSTM with every input step, so the global model can
            tell the series apart (DeepAR's categorical embedding; 0: none; one series: none).
            Measured on benchmarks/quality.py's six-series panel: 4 numbers brought the
            geometric mean of global / alone test MSE from 1.04-1.10x to 0.93-1.00x.
        ensemble: train this many networks side by side, from different initial weights, each
            on its own loss over the same batches, and forecast their mean (a deep ensemble,
            Lakshminarayanan et al. 2017; N-BEATS forecast M4 with ensembles). The mean's error
            is at most the members' average error and varies less from seed to seed; the cost is
            ``ensemble`` times the training and forecasting arithmetic. Validation (early
            stopping, checkpoints) and the intervals see the mean. The members share the fixed
            AR term (it is fitted once).
        future_size: inputs known ahead at each forecast step (the CLI links it to the data's
            ``future_features``, the last input channels): their values at the forecast steps
            enter the head beside the LSTM's last state, directly and through a hidden ReLU
            layer, and the AR term becomes an ARX regression on them and on their lags (see
            :class:`PeepholeLSTMNet`); 0: none.
        interval_levels: the central prediction intervals every forecast carries, e.g.
            ``[0.5, 0.9]`` (columns ``lo_50``, ``hi_50``, ...; metrics ``test_coverage_50``,
            ...). They come from the conformal residuals a checkpoint keeps, so ``predict`` with
            a checkpoint can ask for other levels than it was trained with.
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
        cell_clip: Optional[float] = None,
        ar_window: Union[int, Literal["auto"]] = 0,
        series_embedding: int = 0,
        ensemble: int = 1,
        interval_levels: tuple[float, ...] = LEVELS,
        future_size: int = 0,
    ) -> None:
        super().__init__()
        self.levels = check_levels(interval_levels)
        self.level_names = [level_name(lv) for lv in self.levels]  # "80", "95": columns and metrics
        if isinstance(series_embedding, bool) or not isinstance(series_embedding, int) or series_embedding < 0:
            raise ValueError(f"series_embedding must be a non-negative integer, got {series_embedding!r}")
        if isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1:
            raise ValueError(f"ensemble must be a positive integer, got {ensemble!r}")
        if ar_window != "auto" and (isinstance(ar_window, bool) or not isinstance(ar_window, int) or ar_window < 0):
            raise ValueError(f"ar_window must be a non-negative integer or 'auto', got {ar_window!r}")
        self.save_hyperparameters()

        def network() -> PeepholeLSTMNet:
            return PeepholeLSTMNet(
                input_size, hidden_size, num_layers, dropout, horizon, peephole, bidirectional, cell_clip,
                0 if ar_window == "auto" else ar_window, future_size,
            )

        self.net = network()
        # members 2 .. ensemble (None for one network, whose checkpoints keep their keys)
        self.ensemble_nets = nn.ModuleList([network() for _ in range(ensemble - 1)]) if ensemble > 1 else None
        self.val_metrics = _metrics("val_")
        self.test_metrics = _metrics("test_")
        self.baselines = nn.ModuleDict(
            {
                f"{stage}_{name}": metric()
                for stage in ("val", "test")
                for name, metric in (("naive_mse", MeanSquaredError), ("snaive_mse", MeanSquaredError),
                                     ("mase", MeanMetric))
            }
        )
        # (levels, horizon): the conformal half-widths in scaled units; NaN until validated.
        self.register_buffer("interval_q", torch.full((len(self.levels), horizon), float("nan")))
        self._val_residuals: list[Tensor] = []
        self._val_series: list[Tensor] = []  # the series of each validation window
        self._calibration: Optional[Tensor] = None  # (n, horizon): the last validation's residuals
        self._calibration_series: Optional[Tensor] = None  # (n,): their series
        self._rolling: Optional[RollingCalibration] = None  # during test / predict
        # (weights' digest, residuals, series): every validation window's residual (val_sampled)
        self._full_calibration: Optional[tuple[str, Tensor, Tensor]] = None
        self._tested: Optional[tuple[str, RollingCalibration]] = None  # the pool after a test, and its weights
        self._prepared = False  # the data-dependent parts are built (and the AR term fitted)
        self._data_state = None  # a loaded checkpoint's data-module state (its scalers)
        self._ar_lags: Optional[list[int]] = None  # per series: its AR term's lags (resolved in setup)
        self._series_names: list[str] = []  # the series of the per-series parts, in order
        self._info: Optional[SeriesInfo] = None  # what the trainer's data declares (read in setup)
        self.ar_penalty: Optional[list[float]] = None  # the ridge penalty of each AR term
        self._test_sums: dict[str, Tensor] = {}
        self.test_per_series = None  # pandas.DataFrame after test

    @property
    def nets(self) -> list[PeepholeLSTMNet]:
        """The networks: ``net`` and, with ``ensemble > 1``, the other members."""
        return [self.net, *(self.ensemble_nets or [])]

    @property
    def ar_lags(self) -> Optional[list[int]]:
        """Each series' AR lags, as resolved from the data (``None`` before, or without an AR
        term): the rows of input a window needs. ``trainer.test``/``predict`` give a data module
        them; to call the model on a data module's windows yourself, pass them first
        (``dm.set_lags(model.ar_lags)``)."""
        return list(self._ar_lags) if self._ar_lags else None

    def forward(self, x: Tensor, series: Optional[Tensor] = None, future: Optional[Tensor] = None) -> Tensor:
        if self.ensemble_nets is None:
            return self.net(x, series, future)
        return torch.stack([net(x, series, future) for net in self.nets]).mean(0)  # (K, N, horizon) -> (N, horizon)

    def setup(self, stage: str) -> None:
        """The parts that depend on the data, once, from the data module: the series embedding
        (a panel), ``ar_window="auto"`` resolved (:func:`auto_lags` per series; the data module's
        items then carry that many rows when it is more than the window),
        one AR term per series of a panel, and before training the AR fit on its training
        windows. A trained or loaded model keeps them and must meet the same series; a model
        loaded from a checkpoint gives the data module the scalers it was trained with
        (:meth:`SeriesDataModule.load_state_dict`)."""
        dm = self._datamodule()
        info = self._info = series_info(dm)  # once per stage: the hooks below read it
        names = list(info.series_names) if info is not None else []
        if self._data_state is not None and info is not None and hasattr(dm, "load_state_dict"):
            dm.load_state_dict(self._data_state)  # load_from_checkpoint, then a data module: its scalers
        if info is not None and info.future_size != self.hparams.future_size:
            raise ValueError(
                f"the data gives {info.future_size} known-ahead input(s) (future_features {list(info.future_names)}) but "
                f"the model takes {self.hparams.future_size}: build it with future_size={info.future_size} (the CLI "
                "links them)"
            )
        if self._prepared:
            if self.net.per_series and names and names != self._series_names:
                raise ValueError(f"this model has per-series parts for the series {self._series_names} (in this "
                                 f"order), but the data has the series {names}: forecast the series it was trained on")
            if self._ar_lags and info is not None and info.can_carry_lags:  # the rows its AR terms read, as at fit
                lags = self._ar_lags
                dm.set_lags(lags if len(lags) == len(names) else [max(lags)] * len(names))
            return
        self._series_names = names
        for net in self.nets:
            net.set_series_embedding(max(1, len(names)), self.hparams.series_embedding)
        if self.hparams.ar_window != 0:
            auto = self.hparams.ar_window == "auto"
            if auto and info is None:
                raise ValueError("ar_window='auto' needs a data module that declares series_info() (a "
                                 "SeriesDataModule: its seasons and window); give a number")
            self._ar_lags = None
            if info is not None:
                window = info.window
                if auto:  # (a data module that cannot carry rows before the window: at most the window)
                    rows = info.train_rows if info.can_carry_lags else [0] * len(names)
                    h = int(self.hparams.horizon)
                    self._ar_lags = [auto_lags(m, window, n, h) for m, n in zip(info.seasons, rows)]
                else:
                    self._ar_lags = [int(self.net.ar_window)] * len(names)
                lags = max(self._ar_lags)
                if info.can_carry_lags:  # items carry the rows the AR terms read
                    dm.set_lags(self._ar_lags)
                for net in self.nets:
                    net.set_ar_window(lags, series=max(1, len(names)))
                    net.lstm_window = window if lags > window else 0
                self.hparams.ar_window = lags  # checkpoints carry the number: they load without the data
            if stage == "fit" and dm is not None:
                # every training window once, in order (a data module that offers windows(split)
                # gathers them in large batches); else its training batches
                windows = getattr(dm, "windows", None)
                lags = self.net.ar_window  # the rows the fit reads
                self._fit_ar(windows("train", context=lags) if callable(windows) else dm.train_dataloader())
            # no data module: fitted in on_train_start from the trainer's training batches
        if stage == "fit" and dm is not None:
            self._prepared = True

    def _datamodule(self):
        """The trainer's data module, or None (no trainer, or plain dataloaders)."""
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _fit_ar(self, batches) -> None:
        """The closed-form ridge fit of the AR terms on every training window (scaled units;
        one per series of a panel); they then stay fixed (see ``ar_window``)."""
        p = self.net.ar_window
        nf = self.net.future_size  # the known-ahead channels are the last nf
        parts: dict[str, list[Tensor]] = {"lags": [], "target": [], "series": [], "future": []}
        for batch in batches:
            item = {"lags": batch["x"][:, -p:, [0, *range(-nf, 0)]] if nf else batch["x"][:, -p:, 0],  # (B, p[, 1 + nf])
                    "target": batch["y"], "series": batch.get("series"), "future": batch.get("future")}
            for key, v in item.items():
                if v is not None:
                    parts[key].append(v.cpu().contiguous())  # a copy of a slice: the batch can go
        if not parts["lags"]:
            raise ValueError("the autoregressive term needs training windows; the training data has none")
        lags, target, series, future = (_cat_freeing(parts[k]) for k in ("lags", "target", "series", "future"))
        sid = series if self.net.ar_series > 1 else None
        self.ar_penalty = self.net.fit_ar(lags, target, sid, self._ar_lags, future)
        for net in self.nets[1:]:  # the same fit for every member
            net.ar.load_state_dict(self.net.ar.state_dict())
        for net in self.nets:  # fixed from now on (before DDP wraps the model: it then takes no gradient)
            net.ar.requires_grad_(False)

    def on_train_start(self) -> None:
        if self.net.ar is not None and not self._prepared:  # fit without a data module
            self._fit_ar(self.trainer.train_dataloader)
        self._prepared = True
        for net in self.nets:
            if net.ar is not None:  # fixed: the LSTM learns what the linear model leaves
                net.ar.requires_grad_(False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._calibration is not None:
            checkpoint["calibration_residuals"] = self._calibration
            checkpoint["calibration_series"] = self._calibration_series
        if self.net.per_series:
            checkpoint["series_names"] = self._series_names
        if self._ar_lags:
            checkpoint["ar_lags"] = self._ar_lags  # each series' lags: the rows its windows carry
            checkpoint["lstm_window"] = self.net.lstm_window

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._prepared = True  # a trained model keeps its data-dependent parts
        self._data_state = checkpoint.get("SeriesDataModule")  # (Lightning's key: the class name)
        self._calibration = checkpoint.get("calibration_residuals")  # absent if it never validated: no intervals
        self._calibration_series = checkpoint.get("calibration_series")  # absent: one pool for all
        state = checkpoint["state_dict"]
        for k, net in enumerate(self.nets):
            prefix = "net." if k == 0 else f"ensemble_nets.{k - 1}."
            e = state.get(prefix + "emb.weight")
            if e is not None and (net.emb is None or net.emb.weight.shape != e.shape):
                net.set_series_embedding(e.size(0), e.size(1))
            w = state.get(prefix + "ar.weight")
            if w is not None:  # one term per series: its shape says how many
                series = w.size(0) // self.hparams.horizon
                nf = net.future_size  # the columns: lags of the target and the nf known channels, then nf per step
                lags = (w.size(1) - self.hparams.horizon * nf) // (1 + nf)
                if (lags, series) != (net.ar_window, net.ar_series):
                    net.set_ar_window(lags, series=series)
        self._ar_lags = checkpoint.get("ar_lags")  # absent without an AR term
        for net in self.nets:
            net.lstm_window = int(checkpoint.get("lstm_window", 0))
        self._series_names = checkpoint.get("series_names", [])  # absent without per-series parts
        if checkpoint["state_dict"]["interval_q"].shape != self.interval_q.shape:
            # other interval_levels than at fit: this model's levels, from the residuals kept
            q = (conformal_quantiles(self._calibration, self.levels) if self._calibration is not None
                 else torch.full_like(self.interval_q, float("nan")))
            checkpoint["state_dict"]["interval_q"] = q.to(self.interval_q)

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        # Dropout draws from the global RNG, which other code (a DataLoader iterator's base
        # seed, drawn at a point that differs on resume) also consumes: seed it per step so
        # that a run resumed from a checkpoint continues exactly as the uninterrupted one.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        torch.manual_seed((seed * 1_000_003 + self.global_step) * 64 + self.global_rank)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # each member on its own loss (their mean: Adam's steps do not depend on the 1/K)
        series, future = batch.get("series"), batch.get("future")
        loss = torch.stack([F.mse_loss(net(batch["x"], series, future), batch["y"]) for net in self.nets]).mean()
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["x"]))
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        pred = self(batch["x"], batch.get("series"), batch.get("future"))
        n = len(batch["x"])
        if not (stage == "val" and self._panel()):  # a panel's val_loss: on_validation_epoch_end
            self.log(f"{stage}_loss", F.mse_loss(pred, batch["y"]), prog_bar=True, sync_dist=True, batch_size=n)
        pred_o, y_o = self.to_original(pred, batch), self.to_original(batch["y"], batch)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(pred_o, y_o)
        self.baselines[f"{stage}_naive_mse"].update(batch["naive"].expand_as(y_o).contiguous(), y_o)
        self.baselines[f"{stage}_snaive_mse"].update(batch["snaive"], y_o)
        self.baselines[f"{stage}_mase"].update((pred_o - y_o).abs() / batch["mase_scale"])
        self.log_dict(metrics, batch_size=n)
        for name in ("naive_mse", "snaive_mse", "mase"):
            self.log(f"{stage}_{name}", self.baselines[f"{stage}_{name}"], batch_size=n)
        return pred

    def _half_widths(self, batch: dict[str, Tensor], residual: Tensor) -> Optional[Tensor]:
        """``(B, levels, horizon)`` conformal half-widths in scaled units for a test or predict
        batch, in order (see ``RollingCalibration``); ``residual`` ``(B, horizon)`` then joins
        the pool (NaN: target unknown). None for a model that never validated."""
        return self._rolling(batch["series"], batch["end"], residual) if self._rolling is not None else None

    def _log_intervals(self, stage: str, residual: Tensor, q: Optional[Tensor],
                       batch: dict[str, Tensor]) -> Optional[tuple[list[Tensor], list[Tensor]]]:
        """Coverage (share of targets inside), mean width (original units) and the mean scaled
        interval score per level; returns the per-target indicators and scores."""
        if q is None:
            return None
        n, scale = len(residual), batch["scale"]
        inside, scores = [], []
        for k, (level, pct) in enumerate(zip(self.levels, self.level_names)):
            ok = (residual <= q[:, k]).float()  # (B, horizon)
            # interval score (Gneiting & Raftery 2007) of forecast ± q: the width plus 2/α times
            # the distance outside; symmetric, so that distance is |residual| - q where positive
            score = (2 * q[:, k] + 2 / (1 - level) * (residual - q[:, k]).clamp(min=0)) * scale  # (B, horizon)
            scaled = score / batch["mase_scale"]
            inside.append(ok)
            scores.append(scaled)
            self.log(f"{stage}_coverage_{pct}", ok.mean(), batch_size=n * ok.size(1))
            self.log(f"{stage}_width_{pct}", (2 * q[:, k] * scale).mean(), batch_size=n * ok.size(1))
            self.log(f"{stage}_msis_{pct}", scaled.mean(), batch_size=n * ok.size(1))
        return inside, scores

    def _panel(self) -> bool:
        """Whether the trainer's data holds more than one series."""
        return self._info is not None and self._info.panel

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self._evaluate(batch, "val")
        self._val_residuals.append((pred - batch["y"]).abs().detach())
        self._val_series.append(batch["series"].detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val_residuals:
            return
        residuals = torch.cat(self._val_residuals)  # (n, horizon), scaled units
        series = torch.cat(self._val_series)  # (n,)
        self._val_residuals, self._val_series = [], []
        # (under DDP every process scores every validation window: SeriesDataModule shards the
        # training windows only, so nothing is gathered)
        if self._panel():
            # Each series counts once (the mean of the series' validation MSEs in scaled
            # units), so early stopping and the best checkpoint serve every series, not the
            # one with the most windows.
            sq = residuals.double().square().mean(1)  # (n,)
            sums = torch.zeros(int(series.max()) + 1, dtype=torch.float64, device=sq.device)
            counts = torch.zeros_like(sums)
            sums.index_add_(0, series, sq)
            counts.index_add_(0, series, torch.ones_like(sq))
            has = counts > 0
            self.log("val_loss", (sums[has] / counts[has]).mean().float(), prog_bar=True)
        self._calibration = residuals.detach().float().cpu()
        self._calibration_series = series.detach().cpu()
        self.interval_q.copy_(conformal_quantiles(residuals, self.levels).to(self.interval_q))
        for k, pct in enumerate(self.level_names):  # in-sample: near the level by construction
            self.log(f"val_coverage_{pct}", (residuals <= self.interval_q[k]).float().mean())

    @torch.no_grad()
    def _calibrate_on_every_validation_window(self) -> None:
        """Where validation checks scored a sample (``SeriesInfo.val_sampled``: a large panel),
        the intervals' pool becomes every validation window's residual under the weights in
        use, in one forward pass, as if the checks had scored them all."""
        dm = self._datamodule()
        if self._info is None or not self._info.val_sampled or not callable(getattr(dm, "windows", None)):
            return
        digest = self._weights_digest()
        if self._full_calibration is not None and self._full_calibration[0] == digest:  # test, then predict
            _, self._calibration, self._calibration_series = self._full_calibration
            self.interval_q.copy_(conformal_quantiles(self._calibration, self.levels).to(self.interval_q))
            return
        residuals, series = [], []
        for batch, residual in self._scored(dm.windows("val")):
            residuals.append(residual.float().cpu())
            series.append(batch["series"].cpu())
        if residuals:
            self._calibration, self._calibration_series = torch.cat(residuals), torch.cat(series)
            self.interval_q.copy_(conformal_quantiles(self._calibration, self.levels).to(self.interval_q))
            self._full_calibration = (digest, self._calibration, self._calibration_series)

    def _weights_digest(self) -> str:
        """A digest of every parameter and the data module's identity: equal weights on the same
        data, equal forecasts (what the caches of a test followed by a forecast of the same
        checkpoint key on)."""
        h = hashlib.sha1(str(id(self._datamodule())).encode())
        for name, p in self.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def _start_rolling(self) -> None:
        self._calibrate_on_every_validation_window()
        self._rolling = (RollingCalibration(self._calibration, self.levels, series=self._calibration_series)
                         if self._calibration is not None else None)

    def on_test_epoch_start(self) -> None:
        self._start_rolling()
        S = len(self._info.series_names) if self._info is not None else 1
        keys = ("n", "se", "ae", "naive_se", "snaive_se", "scaled_ae", "sape",
                *(f"{what}_{pct}" for pct in self.level_names for what in ("in", "is")), "first", "last")
        self._test_sums = {k: torch.zeros(S, dtype=torch.float64) for k in keys}
        self._test_sums["first"].fill_(float("inf"))
        self._test_sums["last"].fill_(-float("inf"))

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        pred = self._evaluate(batch, "test")
        n = len(batch["x"])
        residual = (pred - batch["y"]).abs()
        intervals = self._log_intervals("test", residual, self._half_widths(batch, residual), batch)
        pred_o, y_o = self.to_original(pred, batch), self.to_original(batch["y"], batch)
        sid = batch["series"].cpu()
        sums = self._test_sums
        if not sums:
            return
        per_row = {
            "n": torch.full((n,), float(y_o.size(1))),
            "se": ((pred_o - y_o) ** 2).sum(1),
            "ae": (pred_o - y_o).abs().sum(1),
            "naive_se": ((batch["naive"] - y_o) ** 2).sum(1),
            "snaive_se": ((batch["snaive"] - y_o) ** 2).sum(1),
            "scaled_ae": ((pred_o - y_o).abs() / batch["mase_scale"]).sum(1),
            "sape": (2 * (pred_o - y_o).abs() / (pred_o.abs() + y_o.abs()).clamp(min=1.17e-6)).sum(1),
        }
        if intervals is not None:
            inside, scores = intervals
            for pct, ok, score in zip(self.level_names, inside, scores):
                per_row[f"in_{pct}"], per_row[f"is_{pct}"] = ok.sum(1), score.sum(1)
        for k, v in per_row.items():
            sums[k].index_add_(0, sid, v.detach().cpu().double())
        end = batch["end"].cpu().double()
        sums["first"].scatter_reduce_(0, sid, end, "amin")
        sums["last"].scatter_reduce_(0, sid, end + y_o.size(1) - 1, "amax")

    def on_test_epoch_end(self) -> None:
        """One line saying what was scored; the per-series metrics in ``test_per_series``."""
        sums, self._test_sums = self._test_sums, {}
        self._tested = (self._weights_digest(), self._rolling) if self._rolling is not None else None
        info = self._info
        if not sums or info is None or not self.trainer.is_global_zero:
            return
        import pandas as pd

        n = sums["n"].clamp(min=1).numpy()
        scored = np.flatnonzero(sums["n"].numpy() > 0)  # the series with test targets
        labels = np.asarray(info.labels, dtype=object)
        names = np.asarray([str(v) for v in info.series_names], dtype=object)

        def mean(key: str) -> np.ndarray:
            return (sums[key].numpy() / n)[scored]

        cols = {
            "series": names[scored],
            "targets": sums["n"].numpy()[scored].astype(np.int64),
            "first": labels[sums["first"].numpy()[scored].astype(np.int64)],
            "last": labels[sums["last"].numpy()[scored].astype(np.int64)],
            "mse": mean("se"), "mae": mean("ae"), "naive_mse": mean("naive_se"), "snaive_mse": mean("snaive_se"),
            "mase": mean("scaled_ae"), "smape": mean("sape"),
        }
        if self._rolling is not None:
            cols.update({f"coverage_{pct}": mean(f"in_{pct}") for pct in self.level_names})
            cols.update({f"msis_{pct}": mean(f"is_{pct}") for pct in self.level_names})
        frame = pd.DataFrame(cols)
        self.test_per_series = frame
        total = int(frame["targets"].sum())
        span = f"{frame['first'].min()} .. {frame['last'].max()}" if len(frame) == 1 else (
            f"{len(frame)} series, first target {frame['first'].min()}, last {frame['last'].max()}")
        h = self.hparams.horizon
        print(f"test: scored {total} targets ({h}-step forecasts: {total // max(h, 1)} windows), {span}")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Forecasts in original units with their 80%/95% intervals (NaN without), the actual
        values (NaN for the future), the naive and seasonal naive forecasts, the row of the
        first forecast step and the series."""
        pred = self(batch["x"], batch.get("series"), batch.get("future"))
        out = {
            "forecast": self.to_original(pred, batch),
            "actual": self.to_original(batch["y"], batch),
            "naive": batch["naive"].expand_as(batch["y"]).contiguous(),
            "snaive": batch["snaive"],
            "end": batch["end"],
            "series": batch["series"],
        }
        q = self._half_widths(batch, (pred - batch["y"]).abs())  # (B, levels, horizon); joins the pool
        for k, pct in enumerate(self.level_names):
            half = (q[:, k] if q is not None else torch.full_like(pred, math.nan)) * batch["scale"]  # original units
            out[f"lo_{pct}"] = out["forecast"] - half
            out[f"hi_{pct}"] = out["forecast"] + half
        return out

    def on_predict_epoch_start(self) -> None:
        """The rolling pool; when the forecast skips the backtest, its residuals still join
        the pool first, so future intervals are calibrated up to the end of the data."""
        self._start_rolling()
        if self._rolling is None or self._info is None or self._info.predict != "future":
            return
        if self._tested is not None and self._tested[0] == self._weights_digest():
            self._rolling = self._tested[1]  # a test of these weights left the pool this pass would
            return
        for batch, residual in self._scored(self._datamodule().test_dataloader()):
            self._rolling(batch["series"], batch["end"], residual)

    def _scored(self, batches) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """Each batch (on this model's device) with its absolute residuals ``(B, horizon)`` in
        scaled units: the forward passes the intervals' calibration makes outside a loop."""
        for batch in batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            yield batch, (self(batch["x"], batch["series"], batch.get("future")) - batch["y"]).abs()

    @staticmethod
    def to_original(scaled: Tensor, batch: dict[str, Tensor]) -> Tensor:
        return scaled * batch["scale"] + batch["offset"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; the series embeddings updated only in the rows of the batch's series (see
        :class:`~peephole_lstm.forecast.optim.PanelAdam`), so a step's cost does not grow with
        the number of series."""
        tables = [net.emb.weight for net in self.nets if net.emb is not None]
        return PanelAdam(self.parameters(), lazy=tables, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
