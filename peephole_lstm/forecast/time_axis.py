"""The time axis of a series: which column holds it, how it sorts, its regular step and the
stamps missing from it, its season, and its continuation past the last row.

A time column is found by name (``date``, ``time``, ``timestamp``, ``datetime``, ``ds``, any
case), else by content (the first column whose values are date strings, e.g. ``Month`` with
``1949-01``), else an integer ``year`` column. Its *axis* is the regular grid its stamps lie
on: a pandas frequency for dates (inferred from the whole column, else the most common one of
short runs of consecutive stamps, so that a few gaps do not hide a daily, monthly or
business-day axis), the most common step for numbers. Stamps of the axis that the column
lacks are its gaps. New labels (the future, filled gaps) are written in the column's own
format where one of a few common formats reproduces it.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["CALENDAR", "TIME_COLUMNS", "axis", "calendar_phases", "continue_times", "find_time_column", "format_like",
           "infer_season", "sortable"]

TIME_COLUMNS = ("date", "time", "timestamp", "datetime", "ds")
# Seasonal period of a step kind (see _step_kind); a sub-daily step that divides a day has the
# day (15 minutes: 96)
_SEASONS = {"business": 5, "daily": 7, "weekly": 52, "monthly": 12, "quarterly": 4}
_DAY_NS = 86_400 * 10**9
# Date formats tried in order, each on the whole column (one format for every row, so that
# 01.02.2020 and 13.02.2020 are both day-first); month-first before day-first for slashes, as
# pandas and US files have it, unless both read every value and only day-first gives a regular
# axis (a monthly series on the 1st, 01/02/2020 = February). Then ISO 8601, the format pandas
# infers from the first value, and last a per-value guess.
_FORMATS = ("%Y-%m-%d", "%Y-%m", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M", "%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y",
            "%m/%d/%Y %H:%M", "%d/%m/%Y %H:%M", "%d.%m.%Y %H:%M", "%Y%m%d", "%b %Y", "%B %Y", "%b-%Y",
            "%d %b %Y", "%d-%b-%Y", "%b %d, %Y", "%B %d, %Y", "%d %B %Y")
_QUARTER = re.compile(r"^(\d{4})([ -]?)Q([1-4])$")  # 1990Q1, 1990-Q1, 1990 Q1: read by pandas, written here
_DAY_FIRST = {"%m/%d/%Y": "%d/%m/%Y", "%m/%d/%Y %H:%M": "%d/%m/%Y %H:%M"}
_OFFSET = re.compile(r"(?:Z|[+-]\d\d:?\d\d)$")  # a stamp's UTC offset
_RUN = 8  # stamps per run when inferring a frequency despite gaps (8 days span a weekend)
_MAX_FILL = 10  # an axis more than this many times longer than the stamps is not "gaps"


def _looks_like_dates(col: pd.Series) -> bool:
    """Strings (not numbers) with a digit in each that all parse as dates (first 50 values)."""
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return pd.api.types.is_datetime64_any_dtype(col)
    sample = col.dropna().astype(str).str.strip().head(50)
    if sample.empty or not sample.str.contains(r"\d").all():
        return False
    if pd.to_numeric(sample, errors="coerce").notna().any():
        return False
    return parse_dates(sample) is not None


def parse_dates(col: pd.Series) -> Optional[pd.Series]:
    """The column as dates, every value read with one format where one fits (see ``_FORMATS``),
    or None when some value is no date. Stamps with UTC offsets (``+01:00``, ``Z``; mixed
    offsets across a daylight-saving change included) become UTC without a time zone, so that
    an hourly axis stays regular across the change."""
    text = col.astype(str).str.strip()
    for fmt, utc in [*((f, False) for f in _FORMATS), ("ISO8601", True), (None, True)]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "could not infer format": the next try says
                dates = pd.to_datetime(text, format=fmt, utc=utc)
            if fmt in _DAY_FIRST:
                dates = _month_or_day_first(text, dates, _DAY_FIRST[fmt])
            break
        except (ValueError, TypeError, OverflowError):
            continue
    else:
        dates = pd.to_datetime(text, errors="coerce", format="mixed", utc=True)
        if dates.isna().any():
            return None
    if isinstance(dates.dtype, pd.DatetimeTZDtype):
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    return dates


def _month_or_day_first(text: pd.Series, month_first: pd.Series, day_first_format: str) -> pd.Series:
    """Slashed dates that read month-first: day-first instead if that reads every value too and
    puts them on a regular axis (:func:`axis`) where month-first does not (every day number
    was at most 12: read month-first, a monthly series on the 1st is 12 days a year)."""
    try:
        day_first = pd.to_datetime(text, format=day_first_format)
    except (ValueError, TypeError):
        return month_first

    def regular(dates: pd.Series) -> bool:  # on an axis, with at most a few gaps
        return axis(pd.Series(np.unique(dates.to_numpy()))) is not None

    return day_first if regular(day_first) and not regular(month_first) else month_first


def find_time_column(frame: pd.DataFrame, exclude=(), id_column: Optional[str] = None) -> Optional[str]:
    """The column holding the time stamps (see the module's docstring), or None: not one of
    ``exclude``; an integer ``year`` column only if no series repeats a year."""
    cols = [c for c in frame.columns if c not in set(exclude)]
    named = {}
    for c in cols:
        named.setdefault(str(c).strip().lower(), c)
    for name in TIME_COLUMNS:
        if name in named:
            return named[name]
    for c in cols:
        if _looks_like_dates(frame[c]):
            return c
    year = named.get("year")
    if year is not None and pd.api.types.is_integer_dtype(frame[year]):
        keys = [year] if id_column is None else [id_column, year]
        if not frame.duplicated(keys).any():
            return year
    return None


def sortable(col: pd.Series) -> pd.Series:
    """A time column as something that sorts in time: dates stored as dates (a Parquet
    column), else numbers, else dates written as text, else the strings."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col
    num = pd.to_numeric(col, errors="coerce")
    if num.notna().all():
        return num
    dates = parse_dates(col)
    return dates if dates is not None else col.astype(str)


def infer_season(times: Optional[pd.Series]) -> int:
    """The seasonal period of dated stamps: the week (5) for business days, the day for a step
    that divides one (96 for 15 minutes, 24 hourly, 48 half-hourly), else from the median
    step (7 daily, 52 weekly, 12 monthly, 4 quarterly); 1 (none) for yearly or other stamps."""
    if times is None or len(times) < 3:
        return 1
    key = sortable(times)
    if not pd.api.types.is_datetime64_any_dtype(key):
        return 1
    kind, per_day = _step_kind(pd.DatetimeIndex(key).sort_values())
    return (per_day or 1) if kind == "subdaily" else _SEASONS.get(kind, 1)


# The calendar inputs (SeriesDataModule(calendar=True)): where a step falls in the series' season
# and in the next longer cycle, each as (sin, cos) of its phase.
CALENDAR = ("calendar_season_sin", "calendar_season_cos", "calendar_long_sin", "calendar_long_cos")


def _median_step_ns(idx: pd.DatetimeIndex) -> float:
    """The median step of sorted dates in nanoseconds, whatever their resolution (pandas 3
    parses to microseconds, pandas 2 to nanoseconds)."""
    return float(np.median(np.diff(idx.to_numpy()).astype("timedelta64[ns]").astype(np.int64)))


def _step_kind(idx: pd.DatetimeIndex) -> tuple[str, int]:
    """The step of sorted dates, from their frequency (despite gaps), else their median step:
    ``"subdaily"``, ``"daily"``, ``"business"``, ``"weekly"``, ``"monthly"``, ``"quarterly"``
    or ``""`` (yearly, irregular); and for sub-daily steps that divide a day, the steps per day
    (else 0)."""
    freq = _frequency(idx)
    if freq is not None:
        offset = pd.tseries.frequencies.to_offset(freq)
        if isinstance(offset, pd.offsets.BusinessDay) and offset.n == 1:
            return "business", 0
        if isinstance(offset, pd.offsets.Tick) and offset.nanos < _DAY_NS:
            return "subdaily", _DAY_NS // offset.nanos if _DAY_NS % offset.nanos == 0 else 0
    if len(idx) < 2:
        return "", 0
    days = _median_step_ns(idx) / _DAY_NS
    if days < 0.9:
        n = round(1 / days) if days > 0 else 0
        return "subdaily", n if n >= 2 and abs(days * n - 1) <= 0.1 else 0
    for step, kind in ((1.0, "daily"), (7.0, "weekly"), (30.4, "monthly"), (91.3, "quarterly")):
        if abs(days - step) <= 0.1 * step:
            return kind, 0
    return "", 0


def calendar_phases(times: pd.Series, key: Optional[pd.Series] = None) -> np.ndarray:
    """``(n, 4)``: the :data:`CALENDAR` inputs of dated stamps. The season's phase is the time
    of day for sub-daily steps, the day of the week for (business) days, the day of the year
    for weeks, the month or quarter of the year; the longer cycle's is the day of the week for
    sub-daily steps and the day of the year for days; zeros where a cycle does not apply
    (yearly or irregular stamps, or no longer cycle). Read off each stamp, so gaps do not
    shift it. ``key``: ``times`` as :func:`sortable` reads them, if the caller has them."""
    key = sortable(times) if key is None else key
    out = np.zeros((len(times), 4))
    if not pd.api.types.is_datetime64_any_dtype(key) or len(key) == 0:
        return out
    t = pd.DatetimeIndex(key)
    kind = _step_kind(t.sort_values())[0]
    day = (t.hour * 3600 + t.minute * 60 + t.second).to_numpy() / 86400.0  # fraction of the day
    dow = t.dayofweek.to_numpy()
    year = (t.dayofyear.to_numpy() - 1 + day) / np.where(t.is_leap_year, 366.0, 365.0)
    season, longer = {
        "subdaily": (day, (dow + day) / 7.0),
        "daily": (dow / 7.0, year),
        "business": (np.minimum(dow, 4) / 5.0, year),
        "weekly": (year, None),
        "monthly": ((t.month.to_numpy() - 1) / 12.0, None),
        "quarterly": ((t.quarter.to_numpy() - 1) / 4.0, None),
    }.get(kind, (None, None))
    for col, phase in ((0, season), (2, longer)):
        if phase is not None:
            out[:, col], out[:, col + 1] = np.sin(2 * np.pi * phase), np.cos(2 * np.pi * phase)
    return out


def _frequency(idx: pd.DatetimeIndex) -> Optional[str]:
    """The pandas frequency of sorted dates: of the whole index, else the most common one of up
    to 64 runs of ``_RUN`` consecutive stamps spread over it (gaps spoil only the runs that
    hold them) if at least a third of the runs agree."""
    if len(idx) < 3:
        return None
    return pd.infer_freq(idx) or _runs_frequency(idx)


def _runs_frequency(idx: pd.DatetimeIndex) -> Optional[str]:
    """The most common frequency of the runs (see :func:`_frequency`), or None."""
    if len(idx) < 2 * _RUN:
        return None
    starts = np.unique(np.linspace(0, len(idx) - _RUN, num=min(64, len(idx) // _RUN)).astype(int))
    found = Counter(f for s in starts if (f := pd.infer_freq(idx[s : s + _RUN])) is not None)
    if not found:
        return None
    freq, count = found.most_common(1)[0]
    return freq if count * 3 >= len(starts) else None


def axis(key: pd.Series) -> Optional[np.ndarray]:
    """The regular axis from the first to the last of sorted, unique stamps ``key`` (as
    :func:`sortable` reads a time column: dates or numbers), or None when they lie on none
    (irregular, or strings). Its stamps that ``key`` lacks are the gaps."""
    if len(key) < 3:
        return None
    if pd.api.types.is_datetime64_any_dtype(key):
        idx = pd.DatetimeIndex(key)
        if pd.infer_freq(idx) is not None:
            return idx.to_numpy()  # regular as it is: no gaps
        freq = _runs_frequency(idx)
        if freq is None:
            return None
        try:
            full = pd.date_range(idx[0], idx[-1], freq=freq)
        except ValueError:
            return None
        if len(full) > _MAX_FILL * len(idx) or not idx.isin(full).all():
            return None
        return full.to_numpy()
    if pd.api.types.is_numeric_dtype(key):
        vals = key.to_numpy(dtype=np.float64)
        diffs = np.diff(vals)
        steps, counts = np.unique(np.round(diffs, 10), return_counts=True)
        step = steps[np.argmax(counts)]
        if step <= 0 or counts.max() * 2 < len(diffs):
            return None
        k = np.rint((vals - vals[0]) / step)
        if not np.allclose(vals[0] + k * step, vals) or k[-1] + 1 > _MAX_FILL * len(vals):
            return None
        full = vals[0] + np.arange(int(k[-1]) + 1) * step
        return full.astype(key.dtype) if np.all(np.mod(vals, 1) == 0) and float(step).is_integer() else full
    return None


def format_like(stamps, times: pd.Series, key: Optional[pd.Series] = None) -> list[str]:
    """``stamps`` (dates or numbers) as labels in the format of the column ``times`` (``key``:
    ``times`` as :func:`sortable` reads them, if the caller has them)."""
    key = sortable(times) if key is None else key
    if pd.api.types.is_datetime64_any_dtype(key):
        stamps = pd.DatetimeIndex(stamps)
        sample = [(t, str(s).strip()) for t, s in zip(key.iloc[-20:], times.iloc[-20:])]
        zulu = "Z" if all(s.endswith("Z") for _, s in sample) else ""  # UTC written as Z: read as UTC
        for fmt in _FORMATS:
            if all(t.strftime(fmt) + zulu == s for t, s in sample):
                return [t.strftime(fmt) + zulu for t in stamps]
        quarters = [_QUARTER.match(s) for _, s in sample]
        if all(quarters):
            sep = quarters[-1].group(2)
            return [f"{t.year}{sep}Q{t.quarter}" for t in stamps]
        if _OFFSET.search(str(times.iloc[-1]).strip()):  # read as UTC: say so
            return [t.tz_localize("UTC").isoformat(sep=" ") for t in stamps]
        dated = (pd.DatetimeIndex(key).normalize() == pd.DatetimeIndex(key)).all()
        return [t.strftime("%Y-%m-%d") if dated else str(t) for t in stamps]
    vals = np.asarray(stamps)
    if np.all(np.mod(vals, 1) == 0) and np.all(np.mod(key.to_numpy(dtype=np.float64), 1) == 0):
        return [str(int(v)) for v in vals]
    return [str(v) for v in vals]


def continue_times(times: pd.Series, h: int) -> list[str]:
    """The next ``h`` time labels after a series' last one, in its own format: dates by their
    frequency (that of their axis, despite gaps), else by their median step; numbers by
    their step; other labels as ``last+k``."""
    key = sortable(times)
    if pd.api.types.is_datetime64_any_dtype(key):
        idx = pd.DatetimeIndex(key)
        freq = _frequency(idx)
        if freq is not None:
            future = pd.date_range(idx[-1], periods=h + 1, freq=freq)[1:]
        else:
            step = pd.Timedelta(_median_step_ns(idx), unit="ns") if len(idx) > 1 else pd.Timedelta(days=1)
            future = pd.DatetimeIndex([idx[-1] + step * (k + 1) for k in range(h)])
        return format_like(future, times, key)
    if pd.api.types.is_numeric_dtype(key):
        vals = key.to_numpy()
        step = np.median(np.diff(vals)) if len(vals) > 1 else 1
        return format_like(vals[-1] + step * np.arange(1, h + 1), times, key)
    return [f"{times.iloc[-1]}+{k + 1}" for k in range(h)]
