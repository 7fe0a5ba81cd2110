"""SeriesDataModule: windows of one or many series (a CSV or Parquet file, or an embedded
dataset), split in time within each series, scaled per series without leakage; the future
windows past the last row. Reading the file is :mod:`.reading`'s job, the rows and windows
:mod:`.series`'s; this module splits, scales, checkpoints and hands out the loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .reading import BUILTIN, PanelReader, SeriesDataError, SeriesDataWarning, load_builtin
from .series import SCALINGS, BatchedWindows, EpochSeededSampler, SeriesTensor, WindowDataset, WindowSpec, as_batch

__all__ = ["BUILTIN", "SCALINGS", "SeriesDataError", "SeriesDataModule", "SeriesDataWarning", "SeriesInfo",
           "load_builtin", "series_info"]

MISSING = ("error", "interpolate")
PREDICT = ("both", "future", "test")
_SCALERS = ("series_mean", "series_std", "series_diff_scale", "series_mase_scale")
_HEAD = 8  # first values of a series kept in checkpoints to recognize it
BACKTEST_SERIES = 1000  # predict=None: the backtest rows too up to this many series


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
        val_sampled: whether validation checks score a sample of the validation windows; the
            model then calibrates its intervals on all of them (the data module's
            ``windows("val")``) before it tests or forecasts.
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
    val_sampled: bool = False

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
        predict: what ``predict`` forecasts: ``"both"``, the test split (a backtest) and the
            ``horizon`` steps after the last row of every series; ``"future"`` or ``"test"``
            only one of them; ``None`` (default): ``"both"`` for up to ``BACKTEST_SERIES``
            (1,000) series, ``"future"`` above (the backtest's scores are in the test metrics,
            per series too; its rows for every window of every series would make the forecast
            file mostly backtest).
        balance: draw training windows so that every series weighs the same per epoch (with
            replacement), instead of in proportion to its length.
        calendar: add four inputs read off each row's time stamp: the (sin, cos) of its phase
            in the series' season (time of day for sub-daily steps, day of week for days, day
            of year for weeks, month or quarter of year) and in the next longer cycle (day of
            week for sub-daily steps, day of year for days), zeros where a cycle does not apply.
            They let the network place a window in its cycles when the window is shorter than
            the season (e.g. 15-minute data, whose day is 96 steps). Needs a time column of
            dates.
        eval_batch_size: windows per batch in validation, test and predict (forward passes
            only, so large batches cost less per window than ``batch_size``).
        val_windows: the most validation windows scored at each validation check: a panel with
            more scores a fixed, seeded sample of that many (the same windows every check), so a
            check costs the same whatever the panel's size; ``None``: all. The prediction
            intervals are still calibrated on every validation window (one forward pass with
            the weights tested, see ``SeriesInfo.val_sampled``).
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
        predict: Optional[str] = None,
        balance: bool = False,
        calendar: bool = False,
        eval_batch_size: int = 4096,
        val_windows: Optional[int] = 20_000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        panel = PanelReader(self.hparams).read()
        self.reader = panel
        self.time_name, self.target_name = panel.time_name, panel.target_name
        self.feature_names, self.future_names = panel.feature_names, panel.future_names  # future ones last
        self.wide_columns, self.calendar_names = panel.wide_columns, panel.calendar_names
        self.series_names: list[str] = panel.series_names
        self.labels = panel.labels  # (N,) object array: each row's time label as in the file
        self.index = self.labels.tolist()  # the same, as a list
        self._future_inputs, self._future_times = panel.future_inputs, panel.future_times
        self.series_season = [int(m) for m in panel.seasons]
        self.season = self.series_season[0]
        self.store = SeriesTensor(panel.values, panel.starts,
                                  np.array(self.series_season), self._future_array(), self.future_values)
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
        if hp.predict is not None and hp.predict not in PREDICT:
            raise SeriesDataError(f"predict must be one of {', '.join(PREDICT)} (or null), got {hp.predict!r}")
        if hp.val_windows is not None and int(hp.val_windows) < 1:
            raise SeriesDataError(f"val_windows must be at least 1 (or null: all), got {hp.val_windows}")
        for name in ("window", "horizon", "batch_size", "eval_batch_size"):
            if int(getattr(hp, name)) < 1:
                raise SeriesDataError(f"{name} must be at least 1, got {getattr(hp, name)}")
        if hp.season is not None and int(hp.season) < 1:
            raise SeriesDataError(f"season must be at least 1 (or null: inferred), got {hp.season}")
        if not (0 <= hp.val_fraction < 1 and 0 < hp.test_fraction < 1 and hp.val_fraction + hp.test_fraction < 1):
            raise SeriesDataError(
                "need 0 <= val_fraction < 1, 0 < test_fraction < 1 and val_fraction + test_fraction < 1, "
                f"got {hp.val_fraction} and {hp.test_fraction}"
            )

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
            labels=self.labels,
            predict=self.predict,
            val_sampled=self.hparams.val_windows is not None and len(self.ends["val"]) > int(self.hparams.val_windows),
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
        """Each series' rows into train / val / test in time order, and the windows of each
        split (``ends``: the first target's row; ``sids``: the series), all series at once."""
        hp = self.hparams
        h = hp.horizon
        starts = self.starts
        n = np.diff(starts)  # (S,) rows per series
        n_test = np.round(n * hp.test_fraction).astype(np.int64)  # half to even, as round()
        n_val = np.round(n * hp.val_fraction).astype(np.int64)
        n_train = n - n_val - n_test
        p = np.asarray(self.lags, dtype=np.int64) if self.lags else np.zeros(len(n), dtype=np.int64)
        w = np.maximum(hp.window, p)  # rows before a series' first target: the window, or its AR lags
        need = {"train": (n_train, w + h), "val": (n_val, np.full(len(n), h if hp.val_fraction > 0 else 0)),
                "test": (n_test, np.full(len(n), h))}
        short = np.stack([have < want for have, want in need.values()])  # (3, S)
        if short.any():
            s = int(np.flatnonzero(short.any(0))[0])  # the first series (in order) too short
            split = list(need)[int(np.flatnonzero(short[:, s])[0])]
            have, want = (int(v[s]) for v in need[split])
            name, lags = self.series_names[s], int(p[s])
            what = f"series {name!r} too short" if self.reader._panel else "series too short"
            raise SeriesDataError(
                f"{what}: {int(n[s])} rows give the {split} split {have} rows, but it needs at least {want} "
                f"(window={hp.window}, {f'AR lags={lags}, ' if lags > hp.window else ''}horizon={h}, "
                f"val_fraction={hp.val_fraction}, test_fraction={hp.test_fraction})"
            )
        self.split_rows = list(zip(n_train.tolist(), n_val.tolist(), n_test.tolist()))  # per series
        # Window ends e (first target row): every target e .. e+h-1 inside the split.
        a, b = n_train, n_train + n_val
        self.ends, self.sids = {}, {}
        for split, (lo, hi) in {"train": (w, a - h + 1), "val": (np.maximum(a, w), b - h + 1),
                                "test": (np.maximum(b, w), n - h + 1)}.items():
            count = np.maximum(hi - lo, 0)  # (S,) windows per series
            sid = np.repeat(np.arange(len(n)), count)
            within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
            self.ends[split] = starts[sid] + lo[sid] + within
            self.sids[split] = sid
        # The future: one window per series, ending at its last row.
        self.ends["future"] = starts[1:].copy()
        self.sids["future"] = np.arange(len(n))
        self.n_train, self.n_val, self.n_test = int(n_train.sum()), int(n_val.sum()), int(n_test.sum())

    def _fit_scalers(self) -> None:
        """Per series, on its training rows (:meth:`SeriesTensor.fit_scalers`): mean and std of
        every channel, the std of the target's one-step changes (``scaling="last"``) and its
        in-sample seasonal naive MAE."""
        self.store.fit_scalers(np.array([r[0] for r in self.split_rows]))

    # the rows and scalers, as arrays (views of the store)
    @property
    def inputs(self) -> np.ndarray:
        """``(N, C)`` every series' inputs in original units, target first."""
        return self.store.values.numpy()

    @property
    def series(self) -> np.ndarray:
        """``(N,)`` every series' target values."""
        return self.store.values.numpy()[:, 0]

    @property
    def starts(self) -> np.ndarray:
        """``(S + 1,)``: series ``s`` holds rows ``starts[s] .. starts[s + 1]``."""
        return self.store.starts.numpy()

    series_mean = property(lambda self: self.store.mean.numpy(), doc="``(S, C)`` training means.")
    series_std = property(lambda self: self.store.std.numpy(), doc="``(S, C)`` training stds.")
    series_diff_scale = property(lambda self: self.store.diff_scale.numpy(), doc="``(S,)`` std of one-step changes.")
    series_mase_scale = property(lambda self: self.store.mase_scale.numpy(), doc="``(S,)`` seasonal naive MAE.")
    mean = property(lambda self: self.series_mean[0], doc="The first series' channel means.")
    std = property(lambda self: self.series_std[0], doc="The first series' channel stds.")
    diff_scale = property(lambda self: float(self.series_diff_scale[0]), doc="The first series' change std.")

    def _future_array(self) -> Optional[np.ndarray]:
        """``(S, horizon, F)``: each series' ``future_features`` after its last value, NaN for a
        series whose file gives none (None without future features)."""
        if not self.future_names:
            return None
        shape = (self.hparams.horizon, len(self.future_names))
        return np.stack([f if f is not None else np.full(shape, np.nan) for f in self._future_inputs])

    # ------------------------------------------------------------ checkpoints
    def _heads(self) -> np.ndarray:
        """``(S, 8)``: each series' first target values (NaN past a shorter series' end): what
        tells the same series, extended, from another one under the same name."""
        starts = self.starts
        rows = starts[:-1, None] + np.arange(_HEAD)  # (S, 8)
        inside = rows < starts[1:, None]
        return np.where(inside, self.series[np.minimum(rows, len(self.series) - 1)], np.nan)

    def state_dict(self) -> dict:
        """The scalers, per series by name, with the series' first values: Lightning saves them
        in every checkpoint, so a model forecasts its series extended by new rows (a longer
        CSV) in the units it was trained in."""
        # tensors, lists and strings only: checkpoints load with torch.load(weights_only=True)
        return {
            "series_names": [str(n) for n in self.series_names],
            "series_head": torch.from_numpy(self._heads()),  # (S, 8)
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
        head = state["series_head"]
        if isinstance(head, (list, tuple)):  # checkpoints of 0.2.0: one tensor per series
            head = np.stack([np.pad(torch.as_tensor(t, dtype=torch.float64).numpy()[:_HEAD], (0, _HEAD - min(len(t), _HEAD)),
                                    constant_values=np.nan) for t in head]) if len(head) else np.zeros((0, _HEAD))
        head = torch.as_tensor(head, dtype=torch.float64).numpy()
        where = {name: k for k, name in enumerate(state["series_names"])}
        k = np.array([where.get(name, -1) for name in self.series_names])  # (S,) the series' row in the checkpoint
        mine, theirs = self._heads(), head[np.maximum(k, 0)] if len(head) else np.full((len(k), _HEAD), np.nan)
        same = (k >= 0) & ((mine == theirs) | (np.isnan(mine) & np.isnan(theirs))).all(1)
        self.restored = [self.series_names[s] for s in np.flatnonzero(same)]
        for key in _SCALERS:
            getattr(self, key)[same] = torch.as_tensor(state[key]).numpy()[k[same]]  # in place: the store's tensors

    # ------------------------------------------------------------------ the future
    def future_labels(self, s: int) -> list[str]:
        """Time labels of the ``horizon`` steps after series ``s``'s last row: the time column
        continued by its step (dates by their inferred frequency), else row numbers."""
        h = self.hparams.horizon
        n = int(self.starts[s + 1] - self.starts[s])
        if self.future_names and self._future_times[s] is not None:
            return list(self._future_times[s])  # the file's own rows for those steps
        if self.time_name is None:
            return [str(n + k) for k in range(h)]
        return self.reader.continue_times(s, h)

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

    @property
    def spec(self) -> WindowSpec:
        """What every window looks like now (``context`` follows :meth:`set_lags`)."""
        return WindowSpec(self.context, int(self.hparams.horizon), str(self.hparams.scaling),
                          tuple(self.future_channels))

    def dataset(self, split: str) -> WindowDataset:
        return WindowDataset(self.store, self.ends[split], self.sids[split], self.spec)

    def windows(self, split: str, batch_size: int = 8192, context: Optional[int] = None
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Every window of ``split`` (``"train"``, ``"val"``, ``"test"``, ``"future"``) once, in
        order, in batches of ``batch_size`` gathered in one step each (what the AR term's fit
        and the intervals' calibration read); ``context``: only the last that many input rows
        (``x``), e.g. the AR term's lags."""
        ds = self.dataset(split)
        if context is not None:
            ds = WindowDataset(ds.store, ds.ends, ds.sids, dataclasses.replace(ds.spec, context=int(context)))
        for a in range(0, len(ds), batch_size):
            yield ds.batch(range(a, min(a + batch_size, len(ds))))

    def _loader(self, dataset: Dataset, shuffle: bool = False, sampler: Optional[Sampler] = None,
                batch_size: Optional[int] = None) -> DataLoader:
        if shuffle:
            sampler = EpochSeededSampler(len(dataset), self.hparams.seed)
        return DataLoader(
            BatchedWindows(dataset),
            batch_size=batch_size or self.hparams.batch_size,
            sampler=sampler,
            collate_fn=as_batch,
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

    @property
    def predict(self) -> str:
        """What ``predict`` forecasts: the ``predict`` option, or its default for this many
        series."""
        if self.hparams.predict is not None:
            return str(self.hparams.predict)
        return "both" if len(self.series_names) <= BACKTEST_SERIES else "future"

    def _val_sample(self) -> Optional[np.ndarray]:
        """The validation windows scored at each check (sorted positions in the split), or
        None for all of them (see ``val_windows``)."""
        n, k = len(self.ends["val"]), self.hparams.val_windows
        if k is None or n <= int(k):
            return None
        return np.sort(np.random.default_rng(self.hparams.seed).choice(n, int(k), replace=False))

    def val_dataloader(self):
        if not len(self.ends["val"]):
            return []
        ds, pick = self.dataset("val"), self._val_sample()
        if pick is not None:
            ds = WindowDataset(self.store, ds.ends[pick], ds.sids[pick], ds.spec)
        return self._loader(ds, batch_size=self.hparams.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), batch_size=self.hparams.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        """The backtest (test split) and/or the future windows, as ``predict`` says."""
        splits = {"both": ("test", "future"), "test": ("test",), "future": ("future",)}[self.predict]
        ends = np.concatenate([self.ends[k] for k in splits])
        sids = np.concatenate([self.sids[k] for k in splits])
        return self._loader(WindowDataset(self.store, ends, sids, self.spec), batch_size=self.hparams.eval_batch_size)

