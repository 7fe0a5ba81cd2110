"""Reading a panel: a CSV or Parquet file (or an embedded dataset) into every series' rows,
in one array, with the time labels, seasons and known-ahead rows the data module needs.

:class:`PanelReader` resolves the columns (long format with an id column, a wide file, one
series), sorts each series in time, and checks and cleans what a file can hold: duplicate or
missing time stamps, empty or non-numeric cells, rows before a series' first or after its last
value. A long-format file that needs none of that cleaning (numbers everywhere, one regular
step in every series) is read as a whole, in a few vectorised passes over its columns; any
other goes series by series, which is where every message naming a series and a row comes
from.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

import numpy as np
import pandas as pd

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

__all__ = ["BUILTIN", "PanelReader", "SeriesDataError", "SeriesDataWarning", "load_builtin"]

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


class SeriesTimes:
    """Each series' time stamps as a slice of one column sorted by series (built on demand,
    so a panel of many series holds one column, not a ``pandas.Series`` per series)."""

    def __init__(self, column: Optional[pd.Series], starts: np.ndarray) -> None:
        self.column = column
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, s: int) -> Optional[pd.Series]:
        if self.column is None:
            return None
        return self.column.iloc[int(self.starts[s]) : int(self.starts[s + 1])].reset_index(drop=True)


class PanelReader:
    """Reads the data a :class:`~peephole_lstm.forecast.datamodule.SeriesDataModule`'s
    options (``hparams``) name. After :meth:`read`:

    Attributes:
        series_names: the series, in order of first appearance.
        values: ``(N, C)`` float64, every series' rows (target, features, calendar inputs,
            future features), series after series.
        starts: ``(S + 1,)`` series ``s`` holds rows ``starts[s] .. starts[s + 1]``.
        labels: ``(N,)`` each row's time label as the file writes it (row numbers without one).
        times: each series' time stamps (:class:`SeriesTimes`, or a list; None without a
            time column).
        seasons: each series' season length in rows.
        future_inputs, future_times: per series, the ``future_features`` at the ``horizon``
            steps after its last value and their labels (None where the file gives none).
        vectorised: whether the file was read as a whole (see the module's docstring).
    """

    def __init__(self, hparams) -> None:
        self.hparams = hparams
        self._tails: dict[str, pd.DataFrame] = {}  # per series: the rows after its last value
        self._label_memo: dict[tuple[str, int, int], list[str]] = {}

    def read(self) -> PanelReader:
        hp = self.hparams
        frame = self._read()
        self.time_name = self._time_column(frame)
        self.target_name, self.feature_names = self._columns(frame)  # feature_names: future ones last
        self.calendar_names: list[str] = list(CALENDAR) if hp.calendar else []
        self.future_inputs: list[Optional[np.ndarray]] = []  # per series (horizon, F), original units
        self.future_times: list[Optional[list[str]]] = []  # per series: the labels of those rows
        self.vectorised = self._read_whole(frame)
        if self.vectorised:
            return self
        groups = self._groups(frame)
        self.series_names: list[str] = [name for name, _ in groups]
        values, labels, times = [], [], []
        for name, g in groups:
            values.append(self._numeric(g[[self._target_of(name), *self.feature_names]], name))
            labels += self._labels(g)
            times.append(g[self.time_name] if self.time_name else None)
            if self.future_names:
                fut, stamps = self._future_rows(name, g)
                self.future_inputs.append(fut)
                self.future_times.append(stamps)
            if hp.calendar:  # after the target and the features, before the future features (last)
                k = values[-1].shape[1] - len(self.future_names)
                values[-1] = np.concatenate([values[-1][:, :k], self._calendar(times[-1]), values[-1][:, k:]], axis=1)
        self.values = np.concatenate(values)
        self.starts = np.cumsum([0] + [len(v) for v in values])
        self.labels = np.array(labels, dtype=object)
        self.times = times
        # per series: a panel may mix frequencies
        self.seasons = [int(hp.season) if hp.season is not None else infer_season(t) for t in times]
        return self

    def _read_whole(self, frame: pd.DataFrame) -> bool:
        """A long-format panel that needs no cleaning, read in vectorised passes over its
        columns: ids, time stamps that parse as dates or numbers, one step between consecutive
        stamps of every series (no gap, no duplicate), every target and feature cell a finite
        number, no known-ahead or calendar inputs. False (nothing read) otherwise: the
        series-by-series path then reads it, and names what it finds."""
        hp = self.hparams
        if hp.id_column is None or self.wide_columns or self.future_names or hp.calendar or self.time_name is None:
            return False
        ids = frame[hp.id_column]
        if ids.isna().any():
            return False
        columns = []
        for col in [self.target_name, *self.feature_names]:
            num = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if not np.isfinite(num).all():
                return False
            columns.append(num)
        key = sortable(frame[self.time_name])
        if pd.api.types.is_datetime64_any_dtype(key):
            if key.isna().any():
                return False
            k = key.to_numpy().astype("datetime64[ns]").astype(np.int64)
        elif pd.api.types.is_numeric_dtype(key):
            k = key.to_numpy(dtype=np.float64)
        else:
            return False
        codes, uniques = pd.factorize(ids, sort=False)  # series in order of first appearance
        order = np.lexsort((k, codes))  # by series, then time (stable)
        c, kk = codes[order], k[order]
        same = c[1:] == c[:-1]
        steps = np.diff(kk)[same]
        if len(steps) == 0 or not (steps > 0).all() or not (steps == steps[0]).all():
            return False  # duplicates, gaps or an irregular step (monthly dates): series by series
        lengths = np.bincount(c, minlength=len(uniques))
        self.series_names = [str(u) for u in uniques]
        self.values = np.stack([col[order] for col in columns], axis=1)  # (N, C)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        stamps = frame[self.time_name].iloc[order].reset_index(drop=True)
        codes, distinct = pd.factorize(stamps, sort=False)  # rows of a panel share their time stamps:
        self.labels = distinct.astype(str).to_numpy(dtype=object)[codes]  # one string per distinct stamp
        self.times = SeriesTimes(stamps, self.starts)
        if hp.season is not None:
            self.seasons = [int(hp.season)] * len(lengths)
        else:  # one step everywhere: one season for every series of 3 rows or more (infer_season's minimum)
            long = np.flatnonzero(lengths >= 3)
            season = infer_season(self.times[int(long[0])]) if len(long) else 1
            self.seasons = np.where(lengths >= 3, season, 1).tolist()
        return True

    def continue_times(self, s: int, h: int) -> list[str]:
        """The ``h`` time labels after series ``s``'s last row (:func:`continue_times`); on a
        vectorised read, where every series has the same step, once per last label."""
        times = self.times[s]
        if not self.vectorised:
            return continue_times(times, h)
        key = (str(times.iloc[-1]), min(len(times), 3), h)
        if key not in self._label_memo:
            self._label_memo[key] = continue_times(times, h)
        return list(self._label_memo[key])

    def _read(self) -> pd.DataFrame:
        path = self.hparams.csv_path
        if path is None:
            return load_builtin(self.hparams.dataset)
        if not os.path.isfile(path):
            raise SeriesDataError(f"CSV file not found: {path}")
        with open(path, "rb") as f:
            raw = f.read(1 << 16)
        if raw[:4] == b"PAR1" or str(path).lower().endswith((".parquet", ".pq")):
            return self._read_parquet(path)
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

    @staticmethod
    def _read_parquet(path: str) -> pd.DataFrame:
        """A Parquet file (pyarrow, in the ``train`` extra), its columns as stored."""
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SeriesDataError(f"reading {path} needs pyarrow: pip install pyarrow (in peephole-lstm[train])") from None
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow's errors have no common base class
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SeriesDataError(f"cannot read {path} as Parquet: {first}") from exc
        if frame.empty:
            raise SeriesDataError(f"{path} has no data rows")
        return frame.reset_index(drop=True)

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
