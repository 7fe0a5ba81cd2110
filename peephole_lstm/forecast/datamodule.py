"""SeriesDataModule: windows of one or many real (CSV) or embedded series, split in time within
each series, scaled per series without leakage; the future windows past the last row."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .csv_dialect import head_lines, sniff
from .time_axis import (
    CALENDAR,
    axis,
    calendar_phases,
    continue_times,
    find_time_column,
    format_like,
    infer_season,
    sortable,
)

__all__ = ["SCALINGS", "SeriesDataError", "SeriesDataModule", "SeriesDataWarning", "load_builtin"]

SCALINGS = ("last", "zscore", "none")
MISSING = ("error", "interpolate")
PREDICT = ("both", "future", "test")
_SCALERS = ("series_mean", "series_std", "series_diff_scale", "series_mase_scale")
_HEAD = 8  # first values of a series kept in checkpoints to recognize it
_DATA_DIR = os.path.join(os.path.dirname(__file__), "datasets")
BUILTIN = {
    # name: its default target column
    "co2": "co2",
    "synthetic": "value",
}


class SeriesDataError(ValueError):
    """A problem with the data or the data options; its message is one line meant for the user."""


class SeriesDataWarning(UserWarning):
    """Something in the data the user should know about (e.g. gaps in the time stamps) that does
    not stop the run; one line (the CLI prints it as ``peephole-lstm: warning: ...``)."""


@dataclass(frozen=True)
class SeriesInfo:
    """What the model needs from the data: the declared contract between a data module and
    :class:`~peephole_lstm.PeepholeLSTMRegressor`, read once in the model's ``setup``.

    A data module offers it as ``series_info()``; one that can also carry rows before the
    window for the AR term (``can_carry_lags``) has ``set_lags(lags)``, and one whose scalers a
    checkpoint restores has ``load_state_dict(state)``. Every per-series field has one entry
    per series, in ``series_names`` order.

    Attributes:
        series_names: the series, in the order of the model's per-series parts.
        seasons: each series' season length in rows (1: none).
        train_rows: each series' training rows (what ``ar_window="auto"`` sizes its lags by).
        window: the input rows the LSTM reads.
        horizon: the steps each item forecasts.
        future_names: the inputs known ahead at every forecast step (``future_features``).
        labels: the time label of every row, all series concatenated (the test report's spans).
        predict: what ``predict`` writes: ``"both"``, ``"test"`` or ``"future"``.
        can_carry_lags: whether items can carry rows before the window (``set_lags``).
    """

    series_names: tuple[str, ...]
    seasons: tuple[int, ...]
    train_rows: tuple[int, ...]
    window: int
    horizon: int
    future_names: tuple[str, ...] = ()
    labels: Sequence[str] = ()
    predict: str = "both"
    can_carry_lags: bool = False

    def __post_init__(self) -> None:
        n = len(self.series_names)
        if n == 0:
            raise SeriesDataError("SeriesInfo: the data holds no series (series_names is empty)")
        for name in ("seasons", "train_rows"):
            if len(getattr(self, name)) != n:
                raise SeriesDataError(f"SeriesInfo: {name} has {len(getattr(self, name))} entries for {n} series")
        if self.window < 1 or self.horizon < 1:
            raise SeriesDataError(f"SeriesInfo: window and horizon must be positive, got {self.window}, {self.horizon}")
        if self.predict not in PREDICT:
            raise SeriesDataError(f"SeriesInfo: predict must be one of {', '.join(PREDICT)}, got {self.predict!r}")

    @property
    def future_size(self) -> int:
        """Number of inputs known at each forecast step."""
        return len(self.future_names)

    @property
    def panel(self) -> bool:
        """Whether the data holds more than one series."""
        return len(self.series_names) > 1


def series_info(datamodule) -> Optional[SeriesInfo]:
    """The :class:`SeriesInfo` a data module declares, or None for none (plain dataloaders, or a
    data module without ``series_info``). A declared contract that is broken is an error that
    names the missing piece."""
    if datamodule is None or not hasattr(datamodule, "series_info"):
        return None
    info = datamodule.series_info()
    if not isinstance(info, SeriesInfo):
        raise TypeError(f"{type(datamodule).__name__}.series_info() must return a SeriesInfo, got {type(info).__name__}")
    missing = [m for m, needed in (("set_lags", info.can_carry_lags), ("train_dataloader", True)) if needed
               and not callable(getattr(datamodule, m, None))]
    if missing:
        raise TypeError(f"{type(datamodule).__name__} declares series_info but has no {', '.join(missing)}()")
    return info


def _synthetic(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A generated series: linear trend + yearly and 7-step seasonality + AR(1) noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    noise = np.zeros(n)
    for k in range(1, n):
        noise[k] = 0.7 * noise[k - 1] + rng.normal(scale=0.3)
    value = 10.0 + 0.01 * t + 2.0 * np.sin(2 * np.pi * t / 52.0) + 0.5 * np.sin(2 * np.pi * t / 7.0) + noise
    return pd.DataFrame({"step": t.astype(int), "value": value.round(4)})


def load_builtin(name: str) -> pd.DataFrame:
    """The embedded series: ``"co2"`` (Mauna Loa weekly CO2, public domain, 2284 rows; see
    ``peephole_lstm/data/README.md``) or ``"synthetic"`` (generated, 2000 rows)."""
    if name == "co2":
        return pd.read_csv(os.path.join(_DATA_DIR, "co2_mauna_loa_weekly.csv"))
    if name == "synthetic":
        return _synthetic()
    raise SeriesDataError(f"unknown dataset {name!r}; choose one of: {', '.join(BUILTIN)}")


class WindowDataset(Dataset):
    """Windows ending just before each row in ``ends`` (global rows of the concatenated series;
    ``sids`` says which series each belongs to): inputs ``x[e - context : e]`` (``context``
    is ``window``, or more where the model's AR term reads further back: see
    :meth:`SeriesDataModule.set_lags`) and targets ``y[e : e + horizon]``, scaled with that
    series' statistics.

    Each item is a dict: ``x`` (context, C), ``y`` (horizon,) scaled (NaN past the end of the
    data: a future window); ``offset`` and ``scale`` (1,) such that original units = scaled *
    scale + offset; ``naive`` (1,), the last observed target (the persistence forecast);
    ``snaive`` (horizon,), the seasonal naive forecast (the value one season before each
    target); ``mase_scale`` (1,), the series' in-sample seasonal naive MAE (MASE's
    denominator); ``end`` the row of the first target; ``series`` the series' number; with
    ``future_features``, ``future`` (horizon, F): their values at the target steps, z-scored
    like the other inputs (past the data: the rows the file gives after the series' last value).
    """

    def __init__(self, dm: SeriesDataModule, ends: np.ndarray, sids: np.ndarray) -> None:
        self.dm = dm
        self.ends = ends
        self.sids = sids

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        dm = self.dm
        e, s = int(self.ends[k]), int(self.sids[k])
        c, h = dm.context, dm.hparams.horizon
        start, stop = int(dm.starts[s]), int(dm.starts[s + 1])
        x = dm.inputs[max(start, e - c) : e].copy()  # (context, C), original units
        if len(x) < c:  # rows the model does not read for this series (its own lags are fewer): the first repeated
            x = np.concatenate([np.repeat(x[:1], c - len(x), axis=0), x])
        y = np.full(h, np.nan)
        have = max(0, min(h, stop - e))
        y[:have] = dm.series[e : e + have]  # (horizon,), NaN past the data
        last = dm.series[e - 1]
        m = dm.series_season[s]
        snaive = np.empty(h)
        for step in range(h):  # the value one (or more) seasons before the target, never after e - 1
            row = e + step - m * (step // m + 1)
            snaive[step] = dm.series[row] if row >= start else last
        mean, std = dm.series_mean[s], dm.series_std[s]
        if dm.hparams.scaling == "last":
            offset, scale = last, dm.series_diff_scale[s]
            x[:, 0] = (x[:, 0] - last) / scale
            x[:, 1:] = (x[:, 1:] - mean[1:]) / std[1:]
        elif dm.hparams.scaling == "zscore":
            offset, scale = mean[0], std[0]
            x = (x - mean) / std
        else:
            offset, scale = 0.0, 1.0
        item = {
            "x": torch.as_tensor(x, dtype=torch.float32),
            "y": torch.as_tensor((y - offset) / scale, dtype=torch.float32),
            "offset": torch.tensor([offset], dtype=torch.float32),
            "scale": torch.tensor([scale], dtype=torch.float32),
            "naive": torch.tensor([last], dtype=torch.float32),
            "snaive": torch.as_tensor(snaive, dtype=torch.float32),
            "mase_scale": torch.tensor([dm.series_mase_scale[s]], dtype=torch.float32),
            "end": torch.tensor(e),
            "series": torch.tensor(s),
        }
        if dm.future_names:
            cols = dm.future_channels
            fut = np.empty((h, len(cols)))  # (horizon, F), original units
            fut[:have] = dm.inputs[e : e + have, cols]
            if have < h:  # past the data: the rows the file gives after the series' last value
                fut[have:] = dm.future_values(s)[: h - have]
            if dm.hparams.scaling != "none":
                fut = (fut - mean[cols]) / std[cols]
            item["future"] = torch.as_tensor(fut, dtype=torch.float32)
        return item


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``seed`` and the epoch (Lightning
    calls ``set_epoch``), so a run resumed from a checkpoint sees the same batches as an
    uninterrupted one, whatever the global RNG did in between."""

    def __init__(self, n: int, seed: int, weights: Optional[torch.Tensor] = None) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.weights = weights  # draw with replacement by these (balanced panels), else a permutation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is not None:
            return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())
        return iter(torch.randperm(self.n, generator=g).tolist())


class SeriesDataModule(L.LightningDataModule):
    """Sliding windows over one series, or many in long format, for forecasting.

    Each series' rows are split in time order into train / val / test; every target of a split
    lies inside it (inputs may look back into earlier splits, as a forecaster would). Scalers
    are fitted on each series' training rows only. With ``id_column`` one global model trains
    on the windows of every series (different lengths and start dates are fine); without it the
    whole file is one series.

    Args:
        csv_path: a CSV file with a header row; ``None`` uses the embedded ``dataset``. The
            delimiter (comma, semicolon, tab or bar), a decimal comma (``3,14`` beside
            semicolons) and thousands separators (``"1,234.5"``, ``1.234,5``) are recognized
            from the first lines; UTF-8 (with or without a BOM), else Latin-1.
        target: the column to forecast; ``None``: the dataset's default target, or the last
            numeric column of a CSV (the id, time and feature columns excluded). A list of
            columns reads a wide file (one series per column, e.g. ``date,north,south``): each
            column is a series of a panel, as if written in long format with ``id_column``,
            sharing the time column and the ``features``; rows where a column has no value yet
            (or any more) are that series' missing ends (``missing="interpolate"`` drops them).
        features: extra input columns (the target is always input channel 0).
        future_features: input columns whose values are known ahead for the forecast steps (a
            holiday or promotion flag, a planned price, a weather forecast): inputs over the
            window like ``features``, and their values at each of the ``horizon`` target steps
            go to the network as well (``future`` in each item; the model's ``future_size``).
            To forecast the future, the file gives them for the ``horizon`` steps after each
            series' last value: rows with the target empty and these columns filled (rows
            further ahead are not used); ``predict="test"`` needs no such rows.
        window: input length (time steps).
        horizon: number of future steps forecast at once.
        batch_size: windows per batch.
        val_fraction: share of each series' rows whose targets form the validation split (0
            disables it; the prediction intervals are calibrated on it).
        test_fraction: share of each series' rows whose targets form the test split.
        scaling: ``"last"`` (default): each window relative to its last observed value,
            divided by the standard deviation of the one-step changes in the series' training
            rows, so trends beyond the training range stay in range; ``"zscore"``: the level
            minus the training mean over the training std (the article's recipe; fails on
            trends); ``"none"``. Features are z-scored with training statistics in both modes.
        missing: ``"error"``: refuse NaNs / empty cells; ``"interpolate"``: fill them linearly
            (within each series), and insert the time stamps missing from a series' regular
            axis (a daily series without 2020-04-10, a business-day one without a holiday)
            with interpolated values; rows before a series' first or after its last target
            value are dropped (one warning), not filled: the forecast starts after the last
            value. Under ``"error"`` gaps are one warning (:class:`SeriesDataWarning`) and the
            rows are taken as consecutive steps.
        num_workers: DataLoader worker processes.
        dataset: the embedded series used when ``csv_path`` is None: ``"co2"`` (Mauna Loa
            weekly CO2, real, public domain) or ``"synthetic"`` (generated).
        seed: the seed of the training shuffle (per epoch; see ``EpochSeededSampler``).
        id_column: the column naming the series of each row (long format, e.g. columns
            ``id,date,value``); ``None``: one series.
        time_column: the time stamps; ``None``: a column named ``date``, ``time``,
            ``timestamp``, ``datetime`` or ``ds`` (any case), else the first whose values are
            dates (e.g. ``Month`` with ``1949-01``), else an integer ``year`` column, else row
            numbers. Rows are sorted by it within each series (dates read with one format for
            the whole column, so ``01.02.2020`` is day-first beside ``13.02.2020``; ambiguous
            slashed dates month-first unless only day-first is regular); duplicates are an
            error.
        season: the seasonal period in steps, for the seasonal naive forecast and MASE;
            ``None``: inferred from each series' time step (7 for daily, 5 business days, 52
            weekly, 12 monthly, 4 quarterly, a day for a step that divides one: 24 hourly, 48
            half-hourly, 96 for 15 minutes; 1, i.e. none, for yearly or unknown).
        predict: what ``predict`` forecasts: ``"both"`` (default) the test split (a backtest)
            and the ``horizon`` steps after the last row of every series; ``"future"`` or
            ``"test"`` only one of them.
        balance: draw training windows so that every series weighs the same per epoch (with
            replacement), instead of in proportion to its length.
        calendar: add four inputs read off each row's time stamp: the (sin, cos) of its phase
            in the series' season (time of day for sub-daily steps, day of week for days, day
            of year for weeks, month or quarter of year) and in the next longer cycle (day of
            week for sub-daily steps, day of year for days), zeros where a cycle does not apply.
            They let the network place a window in its cycles when the window is shorter than
            the season (e.g. 15-minute data, whose day is 96 steps). Needs a time column of
            dates.
    """

    def __init__(
        self,
        csv_path: Optional[str] = None,
        target: Optional[Union[str, list[str]]] = None,
        features: Optional[list[str]] = None,
        future_features: Optional[list[str]] = None,
        window: int = 60,
        horizon: int = 1,
        batch_size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        scaling: str = "last",
        missing: str = "error",
        num_workers: int = 0,
        dataset: str = "co2",
        seed: int = 0,
        id_column: Optional[str] = None,
        time_column: Optional[str] = None,
        season: Optional[int] = None,
        predict: str = "both",
        balance: bool = False,
        calendar: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        frame = self._read()
        self.time_name = self._time_column(frame)
        self.target_name, self.feature_names = self._columns(frame)  # feature_names: future ones last
        self._tails: dict[str, pd.DataFrame] = {}  # per series: the rows after its last value
        groups = self._groups(frame)
        self.series_names: list[str] = [name for name, _ in groups]
        values, labels, times = [], [], []
        self.calendar_names: list[str] = list(CALENDAR) if calendar else []
        self._future_inputs: list[Optional[np.ndarray]] = []  # per series (horizon, F), original units
        self._future_times: list[Optional[list[str]]] = []  # per series: the labels of those rows
        for name, g in groups:
            values.append(self._numeric(g[[self._target_of(name), *self.feature_names]], name))
            labels += self._labels(g)
            times.append(g[self.time_name] if self.time_name else None)
            if self.future_names:
                fut, stamps = self._future_rows(name, g)
                self._future_inputs.append(fut)
                self._future_times.append(stamps)
            if calendar:  # after the target and the features, before the future features (last)
                k = values[-1].shape[1] - len(self.future_names)
                values[-1] = np.concatenate([values[-1][:, :k], self._calendar(times[-1]), values[-1][:, k:]], axis=1)
        self.starts = np.cumsum([0] + [len(v) for v in values])  # series s: rows starts[s] .. starts[s+1]
        self.inputs = np.concatenate(values)  # (N, C) original units, target first
        self.series = self.inputs[:, 0]  # (N,)
        self.index = labels  # (N,) time labels as in the file
        self._times = times
        # per series: a panel may mix frequencies
        self.series_season = [int(season) if season is not None else infer_season(t) for t in times]
        self.season = self.series_season[0]
        self.lags: Optional[list[int]] = None  # per series: the AR term's lags, when the model sets them
        self._context = int(self.hparams.window)  # rows per item (see context)
        self._split()
        self._fit_scalers()
        self.restored: list[str] = []  # series whose scalers a checkpoint gave (load_state_dict)

    # ---------------------------------------------------------------- validation
    def _check_options(self) -> None:
        hp = self.hparams
        if hp.scaling not in SCALINGS:
            raise SeriesDataError(f"scaling must be one of {', '.join(SCALINGS)}, got {hp.scaling!r}")
        if hp.missing not in MISSING:
            raise SeriesDataError(f"missing must be one of {', '.join(MISSING)}, got {hp.missing!r}")
        if hp.predict not in PREDICT:
            raise SeriesDataError(f"predict must be one of {', '.join(PREDICT)}, got {hp.predict!r}")
        for name in ("window", "horizon", "batch_size"):
            if int(getattr(hp, name)) < 1:
                raise SeriesDataError(f"{name} must be at least 1, got {getattr(hp, name)}")
        if hp.season is not None and int(hp.season) < 1:
            raise SeriesDataError(f"season must be at least 1 (or null: inferred), got {hp.season}")
        if not (0 <= hp.val_fraction < 1 and 0 < hp.test_fraction < 1 and hp.val_fraction + hp.test_fraction < 1):
            raise SeriesDataError(
                "need 0 <= val_fraction < 1, 0 < test_fraction < 1 and val_fraction + test_fraction < 1, "
                f"got {hp.val_fraction} and {hp.test_fraction}"
            )

    def _read(self) -> pd.DataFrame:
        path = self.hparams.csv_path
        if path is None:
            return load_builtin(self.hparams.dataset)
        if not os.path.isfile(path):
            raise SeriesDataError(f"CSV file not found: {path}")
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
        if b"\0" in raw:
            raise SeriesDataError(f"cannot read {path} as CSV: it is not a text file")
        # UTF-8 (with or without the BOM spreadsheets write), else Latin-1 (which reads any bytes)
        encoding = "utf-8-sig"
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            if exc.start < len(raw) - 3:  # not just a character cut at the end of the sample
                encoding = "latin-1"
            text = raw.decode(encoding, errors="ignore")
        sep, decimal, thousands = sniff(head_lines(text, complete=len(raw) < 1 << 16))
        try:
            frame = pd.read_csv(path, sep=sep, decimal=decimal, thousands=thousands, encoding=encoding)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SeriesDataError(f"cannot read {path} as CSV: {first}") from exc
        if not isinstance(frame.index, pd.RangeIndex):  # pandas made the extra fields an index
            raise SeriesDataError(
                f"cannot read {path} as CSV: its rows have more fields than its header "
                f"({frame.index.nlevels + len(frame.columns)} vs {len(frame.columns)}, delimiter {sep!r})"
            )
        if frame.empty:
            raise SeriesDataError(f"{path} has no data rows")
        return frame

    @property
    def _where(self) -> str:
        return self.hparams.csv_path or f"the {self.hparams.dataset!r} dataset"

    def _time_column(self, frame: pd.DataFrame) -> Optional[str]:
        col = self.hparams.time_column
        if col is not None:
            if col not in frame.columns:
                raise SeriesDataError(
                    f"unknown time column {col!r} in {self._where} (columns: {', '.join(map(str, frame.columns))})"
                )
            return col
        hp = self.hparams
        named = hp.target if isinstance(hp.target, (list, tuple)) else [hp.target]
        exclude = {hp.id_column, *named, *(hp.features or []), *(hp.future_features or [])}
        return find_time_column(frame, exclude=exclude, id_column=hp.id_column)

    def _calendar(self, times: Optional[pd.Series]) -> np.ndarray:
        """The calendar inputs of one series' rows (see ``calendar``)."""
        key = sortable(times) if times is not None else None
        if key is None or not pd.api.types.is_datetime64_any_dtype(key):
            what = "no time column" if times is None else f"time column {self.time_name!r} holds no dates"
            raise SeriesDataError(f"calendar=True needs dates, but {self._where} has {what}")
        return calendar_phases(times, key)

    @property
    def _panel(self) -> bool:
        """Several series, each named in messages: long format (``id_column``) or a wide file."""
        return self.hparams.id_column is not None or bool(self.wide_columns)

    def _target_of(self, name: str) -> str:
        """The column holding series ``name``'s target (its own column in a wide file)."""
        return name if self.wide_columns else self.target_name

    def _columns(self, frame: pd.DataFrame) -> tuple[str, list[str]]:
        hp = self.hparams
        available = ", ".join(map(str, frame.columns))
        if hp.id_column is not None and hp.id_column not in frame.columns:
            raise SeriesDataError(f"unknown id column {hp.id_column!r} in {self._where} (columns: {available})")
        target = hp.target
        self.wide_columns: list[str] = []  # a wide file: the target column of each series
        if isinstance(target, (list, tuple)):
            named = [str(t) for t in target]
            if not named:
                raise SeriesDataError("target is an empty list: name the column to forecast, or several (a wide file)")
            twice = sorted({t for t in named if named.count(t) > 1})
            if twice:
                raise SeriesDataError(f"target names {', '.join(map(repr, twice))} more than once")
            if len(named) > 1:
                if hp.id_column is not None:
                    raise SeriesDataError(
                        "several target columns (a wide file: one series per column) and id_column (long format: "
                        "one value column) do not go together: name one target, or drop id_column"
                    )
                self.wide_columns = named
            target = named[0]
        if target is None:
            if hp.csv_path is None:
                target = BUILTIN[hp.dataset]
            else:
                # "Mostly numeric", so that one bad cell is reported as such, not as "no column".
                skip = {hp.id_column, self.time_name, *(hp.features or []), *(hp.future_features or [])}
                numeric = [
                    c for c in frame.columns
                    if c not in skip and pd.to_numeric(frame[c], errors="coerce").notna().mean() >= 0.5
                ]
                if not numeric:
                    raise SeriesDataError(f"{self._where} has no numeric column to forecast (columns: {available})")
                target = numeric[-1]
                unused = [str(c) for c in numeric[:-1] if not str(c).startswith("Unnamed:")]
                if unused:  # a wide file (one column per series) trains on its last column only
                    shown = ", ".join(map(repr, unused[:5])) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
                    wide = ("" if hp.id_column is not None else  # long format: the other columns are inputs
                            ", or, for one model over several series, list them: --data.target '["
                            + ", ".join([*unused[:2], str(target)]) + "]' (a wide file: one series per column)")
                    warnings.warn(
                        f"{self._where}: forecasting {str(target)!r}, the last numeric column; {shown} not used: "
                        f"name the target (--data.target) and inputs (--data.features){wide}",
                        SeriesDataWarning, stacklevel=3,
                    )
        features = list(hp.features or [])
        future = list(hp.future_features or [])
        targets = self.wide_columns or [target]
        for col in [*targets, *features, *future]:
            if col not in frame.columns:
                raise SeriesDataError(f"unknown column {col!r} in {self._where} (columns: {available})")
        for col in targets:
            if col in features or col in future:
                which = "features" if col in features else "future_features"
                raise SeriesDataError(f"the target {col!r} is always input 0; do not list it in {which}")
            if col == self.time_name:
                raise SeriesDataError(f"{col!r} is the time column; it cannot also be a target")
        for name, cols in (("features", features), ("future_features", future)):
            twice = sorted({c for c in cols if cols.count(c) > 1})
            if twice:
                raise SeriesDataError(f"{name} names {', '.join(map(repr, twice))} more than once")
        both = [c for c in future if c in features]
        if both:
            raise SeriesDataError(
                f"{', '.join(map(repr, both))} in both features and future_features: a future feature is an input "
                "over the window as well; list it once, in future_features"
            )
        if hp.id_column in (*targets, *features, *future):
            raise SeriesDataError(f"the id column {hp.id_column!r} cannot also be the target or a feature")
        self.future_names: list[str] = future
        return target, [*features, *future]

    def _groups(self, frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
        """The series, in order of first appearance, each sorted by time (stable)."""
        hp = self.hparams
        if self.wide_columns:  # one series per column, every one on the file's time column
            groups = [(col, frame[[c for c in frame.columns if c == col or c not in self.wide_columns]])
                      for col in self.wide_columns]
        elif hp.id_column is None:
            groups = [(str(self.target_name), frame)]
        else:
            ids = frame[hp.id_column]
            if ids.isna().any():
                row = int(np.flatnonzero(ids.isna().to_numpy())[0])
                raise SeriesDataError(f"id column {hp.id_column!r} is empty at data row {row + 1}")
            groups = [(str(k), g) for k, g in frame.groupby(hp.id_column, sort=False)]
        out, gaps, trimmed = [], [], []
        for name, g in groups:
            if self.time_name is not None:
                key = sortable(g[self.time_name])
                dup = key.duplicated(keep="first")
                if dup.any():
                    what = f"series {name!r}" if hp.id_column is not None else self._where
                    first = g[self.time_name].iloc[int(np.flatnonzero(dup.to_numpy())[0])]
                    raise SeriesDataError(
                        f"{what} has {int(dup.sum())} duplicate time stamp(s) in column {self.time_name!r}, "
                        f"first {first!r}"
                    )
                order = np.argsort(key.to_numpy(), kind="stable")
                g, key = g.iloc[order].reset_index(drop=True), key.iloc[order].reset_index(drop=True)
            if hp.future_features:
                g = self._cut_tail(name, g)  # the rows after the last value: the future's inputs
            if hp.missing == "interpolate":
                g = self._trim(name, g, trimmed)  # keeps the row labels: key.loc[g.index] follows
            if self.time_name is not None:
                g = self._gaps(name, g, key.loc[g.index], gaps)
            out.append((name, g.reset_index(drop=True)))
        self._warn(trimmed, "rows before the first or after the last value of the target dropped, not filled ({})")
        self._warn(gaps, "time stamps missing from a regular axis ({}); the rows are taken as consecutive steps: "
                         'pass missing="interpolate" (--data.missing=interpolate) to insert the missing stamps and '
                         "interpolate their values")
        return out

    def _warn(self, notes: list[str], text: str) -> None:
        """One :class:`SeriesDataWarning` for the notes of every series (the first three named)."""
        if notes:
            what = "; ".join(notes[:3]) + (f"; and {len(notes) - 3} more series" if len(notes) > 3 else "")
            warnings.warn(f"{self._where}: {text.format(what)}", SeriesDataWarning, stacklevel=3)

    def _has_value(self, name: str, g: pd.DataFrame) -> np.ndarray:
        """The rows of series ``name`` (its rows ``g``) where the target has a value, or text
        that is none (left for the "non-numeric" error); NaN, inf and empty cells are missing."""
        raw = g[self._target_of(name)]
        num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return np.flatnonzero(np.isfinite(num) | (raw.notna().to_numpy() & np.isnan(num)))

    def _cut_tail(self, name: str, g: pd.DataFrame) -> pd.DataFrame:
        """Series ``name``'s rows up to its last target value; the rows after it (target
        empty) are kept in ``_tails`` for the future forecast's ``future_features``."""
        have = self._has_value(name, g)
        last = int(have[-1]) if len(have) else len(g) - 1
        self._tails[name] = g.iloc[last + 1 :]
        return g.iloc[: last + 1]

    def _future_rows(self, name: str, g: pd.DataFrame) -> tuple[Optional[np.ndarray], Optional[list[str]]]:
        """The values of ``future_features`` at the ``horizon`` steps after series ``name``'s
        last value (``g``: its rows up to that value) and their time labels, from the rows the
        file gives after it; ``(None, None)`` when it gives too few and no future forecast is
        asked for (``predict="test"``)."""
        h, names = self.hparams.horizon, self.future_names
        which = f"series {name!r}" if self._panel else self._where
        last = str(g[self.time_name].iloc[-1]) if self.time_name is not None else f"data row {len(g)}"
        rows = self._tails.get(name, g.iloc[:0]).iloc[:h]
        if len(rows) < h:
            if self.hparams.predict == "test":
                return None, None
            raise SeriesDataError(
                f"{which}: the future forecast needs the values of future_features {names} at the {h} step(s) after "
                f"its last value ({last}), as rows with the target empty; there are {len(rows)}: add them, or pass "
                'predict="test" (--data.predict test) to forecast the test split only'
            )
        # the steps' labels: the rows' own time stamps, else the row numbers that continue the series
        labels = self._labels(rows) if self.time_name is not None else [str(len(g) + k) for k in range(h)]
        out = np.empty((h, len(names)))
        for k, col in enumerate(names):
            num = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            bad = np.flatnonzero(~np.isfinite(num))
            if len(bad):
                raise SeriesDataError(
                    f"{which}: future feature {col!r} has no numeric value at {labels[bad[0]]} (forecast step "
                    f"{bad[0] + 1} of {h}, cell {rows[col].iloc[bad[0]]!r}); the future forecast needs it at every step"
                )
            out[:, k] = num
        if self.time_name is not None:
            want = continue_times(g[self.time_name], h)
            both = [sortable(pd.concat([g[self.time_name], pd.Series(v)], ignore_index=True)).iloc[-h:].to_numpy()
                    for v in (want, rows[self.time_name].tolist())]
            if both[0].dtype == both[1].dtype and both[0].dtype != object and not np.array_equal(*both):
                raise SeriesDataError(
                    f"{which}: the rows after its last value ({last}) give future_features for {', '.join(labels)}, "
                    f"but the forecast steps are {', '.join(want)}: one row per step, none missing"
                )
        return out, labels

    def _trim(self, name: str, g: pd.DataFrame, trimmed: list[str]) -> pd.DataFrame:
        """A series' rows without the leading and trailing ones whose target is missing: not
        observed yet (or any more), so not something to fill; the forecast starts after the
        last value. A note for one warning goes to ``trimmed``."""
        have = self._has_value(name, g)
        if len(have) == 0 or (have[0] == 0 and have[-1] == len(g) - 1):
            return g  # nothing to trim (or nothing at all: an error later)
        label = (lambda r: g[self.time_name].iloc[r]) if self.time_name is not None else (lambda r: f"row {r + 1}")
        which = f"series {name!r}: " if self._panel else ""
        parts = []
        if have[0] > 0:
            parts.append(f"{have[0]} before {label(have[0])}")
        if have[-1] < len(g) - 1:
            parts.append(f"{len(g) - 1 - have[-1]} after {label(have[-1])}")
        trimmed.append(which + " and ".join(parts))
        return g.iloc[have[0] : have[-1] + 1]

    def _gaps(self, name: str, g: pd.DataFrame, key: pd.Series, gaps: list[str]) -> pd.DataFrame:
        """A series' rows (sorted; ``key`` their stamps as :func:`sortable` reads them) with the
        stamps missing from its regular time axis inserted (all values NaN, interpolated
        later) under ``missing="interpolate"``; otherwise as they are, with a note on the gaps
        appended to ``gaps`` for one warning."""
        col = self.time_name
        full = axis(key)
        if full is None or len(full) == len(g):
            return g
        stamps = key.to_numpy()
        absent = full[~np.isin(full, stamps)]
        if self.hparams.missing != "interpolate":
            first = int(np.searchsorted(stamps, absent[0])) - 1  # the row before the first gap
            which = f"series {name!r}: " if self._panel else ""
            gaps.append(f"{which}{len(absent)} of {len(full)}, first after {g[col].iloc[first]}")
            return g
        filled = pd.DataFrame({c: pd.Series([np.nan] * len(absent), dtype=object) for c in g.columns})
        filled[col] = format_like(absent, g[col], key)
        if self.hparams.id_column is not None:
            filled[self.hparams.id_column] = g[self.hparams.id_column].iloc[0]
        order = np.argsort(np.concatenate([stamps, absent]), kind="stable")
        return pd.concat([g.astype(object), filled], ignore_index=True).iloc[order]

    def _numeric(self, frame: pd.DataFrame, name: str) -> np.ndarray:
        which = f" of series {name!r}" if self.hparams.id_column is not None else ""
        out = {}
        for col in frame.columns:
            raw = frame[col]
            num = pd.to_numeric(raw, errors="coerce")
            bad = num.isna() & raw.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise SeriesDataError(
                    f"column {col!r}{which} has {int(bad.sum())} non-numeric value(s), first {raw.iloc[row]!r} "
                    f"at data row {row + 1}"
                )
            missing = num.isna() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
            if missing.any():
                if self.hparams.missing == "error":
                    row = int(np.flatnonzero(missing.to_numpy())[0])
                    if col == frame.columns[0] and missing.to_numpy()[row:].all():  # the target's last rows
                        raise SeriesDataError(
                            f"column {col!r}{which} has no value in its last {len(frame) - row} row(s), from data row "
                            f"{row + 1}: if they give inputs known ahead for the forecast, name those columns with "
                            '--data.future_features; else pass missing="interpolate" (--data.missing=interpolate) '
                            "to drop them"
                        )
                    raise SeriesDataError(
                        f"column {col!r}{which} has {int(missing.sum())} missing value(s), first at data row "
                        f'{row + 1}; pass missing="interpolate" (--data.missing=interpolate) to fill them'
                    )
                num = num.where(~missing).interpolate(limit_direction="both")
                if num.isna().any():
                    raise SeriesDataError(f"column {col!r}{which} has no values to interpolate from")
            out[col] = num.to_numpy(dtype=np.float64)
        return np.stack([out[c] for c in frame.columns], axis=1)

    def _labels(self, g: pd.DataFrame) -> list[str]:
        if self.time_name is not None:
            return g[self.time_name].astype(str).tolist()
        return [str(i) for i in range(len(g))]

    def series_info(self) -> SeriesInfo:
        """What the model needs from this data (see :class:`SeriesInfo`)."""
        hp = self.hparams
        return SeriesInfo(
            series_names=tuple(self.series_names),
            seasons=tuple(int(m) for m in self.series_season),
            train_rows=tuple(int(r[0]) for r in self.split_rows),
            window=int(hp.window),
            horizon=int(hp.horizon),
            future_names=tuple(self.future_names),
            labels=self.index,
            predict=str(hp.predict),
            can_carry_lags=True,
        )

    @property
    def context(self) -> int:
        """Rows of input in every item: ``window``, or the most lags of an AR term that reads
        further back (:meth:`set_lags`)."""
        return self._context

    def set_lags(self, lags: list[int]) -> None:
        """The number of target values each series' autoregressive term reads before a target
        (the model calls this in ``setup``): where they are more than ``window``, every item
        carries that many rows (``context``; the LSTM reads the last ``window``), and a series'
        windows start where it has its own lags. Resplits; a series too short for them is an
        error, as for the window."""
        if len(lags) != len(self.series_names) or any(isinstance(p, bool) or int(p) != p or p < 1 for p in lags):
            raise SeriesDataError(f"set_lags needs one positive integer per series ({len(self.series_names)}), "
                                  f"got {list(lags)}")
        self.lags = [int(p) for p in lags]
        self._context = max(int(self.hparams.window), *self.lags)  # once, not per item
        self._split()

    def _split(self) -> None:
        hp = self.hparams
        h = hp.horizon
        ends: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        sids: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        self.split_rows = []  # per series: (n_train, n_val, n_test)
        for s, name in enumerate(self.series_names):
            start, n = int(self.starts[s]), int(self.starts[s + 1] - self.starts[s])
            n_test = int(round(n * hp.test_fraction))
            n_val = int(round(n * hp.val_fraction))
            n_train = n - n_val - n_test
            p = self.lags[s] if self.lags else 0
            w = max(hp.window, p)  # rows before this series' first target: the window, or its AR lags
            need = {"train": (n_train, w + h), "val": (n_val, h if hp.val_fraction > 0 else 0), "test": (n_test, h)}
            for split, (have, want) in need.items():
                if have < want:
                    what = f"series {name!r} too short" if self._panel else "series too short"
                    raise SeriesDataError(
                        f"{what}: {n} rows give the {split} split {have} rows, but it needs at least {want} "
                        f"(window={hp.window}, {f'AR lags={p}, ' if p > hp.window else ''}horizon={h}, "
                        f"val_fraction={hp.val_fraction}, test_fraction={hp.test_fraction})"
                    )
            self.split_rows.append((n_train, n_val, n_test))
            # Window ends e (first target row): every target e .. e+h-1 inside the split.
            a, b = n_train, n_train + n_val
            for split, (lo, hi) in {"train": (w, a - h + 1), "val": (max(a, w), b - h + 1),
                                    "test": (max(b, w), n - h + 1)}.items():
                e = np.arange(lo, hi) + start
                ends[split].append(e)
                sids[split].append(np.full(len(e), s))
        self.ends = {k: np.concatenate(v) for k, v in ends.items()}
        self.sids = {k: np.concatenate(v) for k, v in sids.items()}
        # The future: one window per series, ending at its last row.
        self.ends["future"] = self.starts[1:].copy()
        self.sids["future"] = np.arange(len(self.series_names))
        self.n_train, self.n_val, self.n_test = (int(sum(r[i] for r in self.split_rows)) for i in range(3))

    def _fit_scalers(self) -> None:
        """Per series, on its training rows: mean and std of every channel, the std of the
        target's one-step changes (``scaling="last"``) and its in-sample seasonal naive MAE."""
        means, stds, diffs, mases = [], [], [], []
        for s in range(len(self.series_names)):
            start, n_train = int(self.starts[s]), self.split_rows[s][0]
            train = self.inputs[start : start + n_train]
            means.append(train.mean(axis=0))
            stds.append(_safe_std(train))
            diffs.append(float(_safe_std(np.diff(train[:, 0])[:, None])[0]))
            m = self.series_season[s] if n_train > self.series_season[s] else 1
            mae = float(np.abs(train[m:, 0] - train[:-m, 0]).mean())
            mases.append(mae if mae > 0 else 1.0)
        self.series_mean = np.stack(means)  # (S, C)
        self.series_std = np.stack(stds)  # (S, C)
        self.series_diff_scale = np.array(diffs)  # (S,)
        self.series_mase_scale = np.array(mases)  # (S,)
        self._first_series_stats()

    def _first_series_stats(self) -> None:
        """The first series' statistics (the only ones for one series)."""
        self.mean, self.std = self.series_mean[0], self.series_std[0]
        self.diff_scale = float(self.series_diff_scale[0])

    # ------------------------------------------------------------ checkpoints
    def _heads(self) -> list[np.ndarray]:
        """Each series' first target values: what tells the same series, extended, from
        another one under the same name."""
        return [self.series[a : min(a + _HEAD, b)].copy() for a, b in zip(self.starts[:-1], self.starts[1:])]

    def state_dict(self) -> dict:
        """The scalers, per series by name, with the series' first values: Lightning saves them
        in every checkpoint, so a model forecasts its series extended by new rows (a longer
        CSV) in the units it was trained in."""
        # tensors, lists and strings only: checkpoints load with torch.load(weights_only=True)
        return {
            "series_names": [str(n) for n in self.series_names],
            "series_head": [torch.from_numpy(h) for h in self._heads()],
            "channels": self.input_columns,
            "future_channels": [str(c) for c in self.future_names],
            **{key: torch.from_numpy(np.array(getattr(self, key), dtype=np.float64)) for key in _SCALERS},
        }

    @property
    def input_columns(self) -> list[str]:
        """The input columns, target first (every series' target column in a wide file), then
        the features, the calendar inputs and the future features (always the last): what a
        checkpoint's weights were shaped by (with ``future_names``)."""
        plain = self.feature_names[: len(self.feature_names) - len(self.future_names)]
        columns = (*(self.wide_columns or [self.target_name]), *plain, *self.calendar_names, *self.future_names)
        return [str(c) for c in columns]

    _COLUMN_OPTIONS = ("target", "features", "future_features", "calendar", "id_column")  # shape the inputs

    def check_columns(self, state: dict, fitted: Optional[dict] = None) -> None:
        """A :class:`SeriesDataError` unless this data gives the input columns a checkpoint's
        data state ``state`` was trained on; ``fitted``, the data options of its fit (the
        checkpoint's ``datamodule_hyper_parameters``), names the ones to pass again."""
        trained, ahead = list(state["channels"]), list(state.get("future_channels", []))
        if trained == self.input_columns and ahead == self.future_names:
            return

        def cli(value) -> str:  # as the option is written on the command line
            if isinstance(value, bool) or value is None:
                return {True: "true", False: "false", None: "null"}[value]
            if isinstance(value, (list, tuple)):
                return "[" + ", ".join(map(str, value)) + "]"
            return str(value)

        fitted = fitted or {}
        differ = [f"--data.{k} {cli(fitted[k])}" for k in self._COLUMN_OPTIONS
                  if k in fitted and fitted[k] != self.hparams.get(k)]

        def known(cols: list[str]) -> str:
            return f", known ahead {cols}" if cols else ""

        raise SeriesDataError(
            f"the checkpoint was trained on the input columns {trained} (target first{known(ahead)}), but this data "
            f"gives {self.input_columns}{known(self.future_names)}"
            + (f": pass the data options it was fit with, {' '.join(differ)}" if differ else "")
        )

    def load_state_dict(self, state: dict) -> None:
        """The trained model's scalers for every series of this data that it was trained on
        (same name, same first values; Lightning calls this when ``test``/``predict``/a resumed
        ``fit`` load a checkpoint); other series, e.g. another sensor's CSV under the same
        column name, keep their own, fitted on their training rows. ``restored``: the names of
        the series that took the checkpoint's."""
        self.check_columns(state)
        trained = {name: k for k, name in enumerate(state["series_names"])}
        heads = self._heads()
        self.restored = []
        for s, name in enumerate(self.series_names):
            k = trained.get(name)
            if k is None or not np.array_equal(heads[s], torch.as_tensor(state["series_head"][k]).numpy()):
                continue
            self.restored.append(name)
            for key in _SCALERS:
                getattr(self, key)[s] = torch.as_tensor(state[key]).numpy()[k]
        self._first_series_stats()

    # ------------------------------------------------------------------ the future
    def future_labels(self, s: int) -> list[str]:
        """Time labels of the ``horizon`` steps after series ``s``'s last row: the time column
        continued by its step (dates by their inferred frequency), else row numbers."""
        h = self.hparams.horizon
        n = int(self.starts[s + 1] - self.starts[s])
        if self.future_names and self._future_times[s] is not None:
            return list(self._future_times[s])  # the file's own rows for those steps
        times = self._times[s]
        if times is None:
            return [str(n + k) for k in range(h)]
        return continue_times(times, h)

    # ----------------------------------------------------------------- Lightning
    def future_values(self, s: int) -> np.ndarray:
        """``(horizon, F)``: series ``s``'s ``future_features`` at the steps after its last value
        (original units), as the file gives them."""
        fut = self._future_inputs[s]
        if fut is None:
            raise SeriesDataError(
                f"series {self.series_names[s]!r} has no rows after its last value giving future_features "
                f"{self.future_names}: only the test split can be forecast (predict='test')"
            )
        return fut

    @property
    def future_channels(self) -> list[int]:
        """The input channels of ``future_features``: the last ones (the network's convention)."""
        return list(range(self.input_size - len(self.future_names), self.input_size))

    @property
    def input_size(self) -> int:
        """Number of input channels: the target, the features (future ones included) and the
        calendar inputs."""
        return 1 + len(self.feature_names) + len(self.calendar_names)

    @property
    def future_size(self) -> int:
        """Number of inputs known at each forecast step: the ``future_features``."""
        return len(self.future_names)

    def dataset(self, split: str) -> WindowDataset:
        return WindowDataset(self, self.ends[split], self.sids[split])

    def _loader(self, dataset: Dataset, shuffle: bool = False, sampler: Optional[Sampler] = None) -> DataLoader:
        if shuffle:
            sampler = EpochSeededSampler(len(dataset), self.hparams.seed)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self.dataset("train")
        if self.hparams.balance and len(self.series_names) > 1:
            counts = np.bincount(ds.sids, minlength=len(self.series_names)).astype(np.float64)
            weights = torch.as_tensor(1.0 / counts[ds.sids])  # each series: total weight 1
            return self._loader(ds, sampler=EpochSeededSampler(len(ds), self.hparams.seed, weights))
        return self._loader(ds, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.dataset("val")) if len(self.ends["val"]) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """The backtest (test split) and/or the future windows, as ``predict`` says."""
        splits = {"both": ("test", "future"), "test": ("test",), "future": ("future",)}[self.hparams.predict]
        ends = np.concatenate([self.ends[k] for k in splits])
        sids = np.concatenate([self.sids[k] for k in splits])
        return self._loader(WindowDataset(self, ends, sids))


def _safe_std(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0)
    return np.where(std > 0, std, 1.0)
