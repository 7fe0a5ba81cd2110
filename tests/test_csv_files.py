"""CSV files as users have them: spreadsheet dialects, time columns found by name or content,
gaps in the time stamps (a warning, or filled), labels in the file's own format."""

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lightning")

from peephole_lstm.forecast.cli import main  # noqa: E402
from peephole_lstm.forecast.csv_dialect import sniff  # noqa: E402
from peephole_lstm.forecast.datamodule import SeriesDataError, SeriesDataModule, SeriesDataWarning  # noqa: E402
from peephole_lstm.forecast.time_axis import axis, continue_times, find_time_column, sortable  # noqa: E402

N = 120


def _frame(freq="D", n=N, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "date": pd.date_range("2020-01-01", periods=n, freq=freq).strftime("%Y-%m-%d"),
        "temp": rng.normal(size=n).round(6),
        "value": (10 + np.cumsum(rng.normal(size=n))).round(6),
    })


def _module(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = SeriesDataModule(str(path), window=8, **kwargs)
    return dm, [w for w in caught if issubclass(w.category, SeriesDataWarning)]


# ------------------------------------------------------------------ dialects
@pytest.mark.parametrize(
    "sep,decimal,encoding,header",
    [
        (",", ".", "utf-8", "value"),
        (";", ",", "utf-8", "value"),  # a European spreadsheet's export
        (";", ".", "utf-8", "value"),
        ("\t", ".", "utf-8", "value"),
        ("|", ".", "utf-8", "value"),
        (",", ".", "utf-8-sig", "value"),  # Excel's "CSV UTF-8" starts with a byte-order mark
        (";", ",", "latin-1", "Température"),  # and its older exports are not UTF-8
    ],
)
def test_spreadsheet_dialects_read_as_the_same_series(tmp_path, sep, decimal, encoding, header):
    frame = _frame().rename(columns={"value": header})
    path = tmp_path / "s.csv"
    frame.to_csv(path, sep=sep, decimal=decimal, encoding=encoding, index=False)
    dm, _ = _module(path, features=["temp"])
    assert dm.target_name == header and dm.time_name == "date"
    np.testing.assert_array_equal(dm.inputs, frame[[header, "temp"]].to_numpy())
    assert dm.index == frame["date"].tolist()


def test_sniff_keeps_dot_decimals_and_quoted_delimiters():
    assert sniff(["a;b", "1.5;2"]) == (";", ".", None)
    assert sniff(["a;b", "1,5;2"]) == (";", ",", None)
    assert sniff(["a;b", "1.234;2", "1.5;2"]) == (";", ".", None)  # dot decimals, one with 3 digits
    assert sniff(["a;b", "1.234,5;2", "3,5;2"]) == (";", ",", ".")
    assert sniff(["a;b", "1.234;2", "3,5;2"]) == (";", ",", ".")  # beside a decimal comma: thousands
    assert sniff(['a,b', '"1,234.5",2']) == (",", ".", ",")
    assert sniff(['"sales, EUR";date', "3;2020-01-01"]) == (";", ".", None)
    assert sniff(["value", "1.5"]) == (",", ".", None)  # one column
    assert sniff([]) == (",", ".", None)


@pytest.mark.parametrize("sep,text", [(",", '"{:,.2f}"'), (";", "{:,.2f}")])
def test_thousands_separators_as_spreadsheets_write_them(tmp_path, sep, text):
    values = np.linspace(-2500.0, 1_250_000.0, N).round(2)
    cells = [text.format(v) for v in values]
    if sep == ";":  # 1.234.567,89: a dot for thousands, a comma for the decimals
        cells = [c.replace(",", "_").replace(".", ",").replace("_", ".") for c in cells]
    dates = pd.date_range("2020-01-01", periods=N, freq="D").strftime("%Y-%m-%d")
    path = tmp_path / "s.csv"
    path.write_text("\n".join([f"date{sep}sales"] + [f"{d}{sep}{c}" for d, c in zip(dates, cells)]) + "\n")
    dm, _ = _module(path)
    np.testing.assert_allclose(dm.series, values, rtol=0, atol=1e-9)


def test_rows_wider_than_the_header_are_an_error_not_an_index(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("date,value\n2020-01-01,1,5\n2020-01-02,2,5\n")
    with pytest.raises(SeriesDataError, match="rows have more fields than its header \\(3 vs 2"):
        SeriesDataModule(str(path))


def test_a_binary_file_is_an_error(tmp_path):
    path = tmp_path / "s.xlsx"
    path.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(SeriesDataError, match="not a text file"):
        SeriesDataModule(str(path))


# -------------------------------------------------------------- time column
@pytest.mark.parametrize(
    "column,stamps,season",
    [
        ("Date", pd.date_range("2020-01-01", periods=N, freq="D").strftime("%Y-%m-%d"), 7),
        ("Month", pd.date_range("1949-01-01", periods=N, freq="MS").strftime("%Y-%m"), 12),  # AirPassengers
        ("ts", pd.date_range("2021-01-01", periods=N, freq="h").astype(str), 24),
        ("period", pd.period_range("1990Q1", periods=N, freq="Q").astype(str), 4),
        ("Year", np.arange(1871, 1871 + N), 1),  # the Nile
        # day-first dates, one format for all rows (01.02.2020 is the 1st of February)
        ("Datum", pd.date_range("2020-01-01", periods=N, freq="D").strftime("%d.%m.%Y"), 7),
        ("when", pd.date_range("2020-01-01", periods=N, freq="D").strftime("%d/%m/%Y"), 7),
        ("when", pd.date_range("2020-01-01", periods=N, freq="W-SUN").strftime("%m/%d/%Y"), 52),
        # every day number at most 12: both orders read; the one with a regular axis wins
        ("when", pd.date_range("2000-01-01", periods=N, freq="MS").strftime("%d/%m/%Y"), 12),  # Europe
        ("when", pd.date_range("2000-01-01", periods=N, freq="MS").strftime("%m/%d/%Y"), 12),  # US
        ("when", pd.date_range("2000-01-05", periods=N, freq="MS").strftime("%m/%d/%Y %H:%M"), 12),
    ],
)
def test_time_column_found_by_name_or_content(tmp_path, column, stamps, season):
    frame = pd.DataFrame({column: stamps, "value": np.arange(N, dtype=float)})
    path = tmp_path / "s.csv"
    frame.iloc[::-1].to_csv(path, index=False)  # newest first: sorted back by time
    dm, _ = _module(path)
    assert dm.time_name == column and dm.target_name == "value"
    assert dm.series_season == [season]
    assert dm.series.tolist() == list(range(N))


def test_what_is_not_a_time_column():
    frame = pd.DataFrame({
        "id": ["A1", "B2", "C3"], "year": [2000, 2000, 2001], "month": [1, 2, 1],  # year repeats
        "label": ["Jan", "Feb", "Mar"], "value": [1.0, 2.0, 3.0],
    })
    assert find_time_column(frame) is None
    assert find_time_column(frame.assign(when=["2020-01-01", "2020-01-02", "x9"])) is None
    dates = frame.assign(when=["2020-01-01", "2020-01-02", "2020-01-03"])
    assert find_time_column(dates) == "when"
    assert find_time_column(dates, exclude={"when"}) is None  # e.g. the target


# ------------------------------------------------------------------- gaps
@pytest.mark.parametrize(
    "freq,drop,labels",
    [
        ("D", [30, 31, 70], None),
        ("MS", [40], None),
        ("B", [25], None),  # a holiday; weekends are not gaps
        ("h", [5, 6, 7], None),
        (None, [10, 11], np.arange(1871, 1871 + N)),  # integer years
    ],
)
def test_gaps_warn_and_interpolate_fills_them(tmp_path, freq, drop, labels):
    frame = _frame(freq or "D")
    if freq in ("MS", "h", "B"):
        fmt = {"MS": "%Y-%m", "h": "%Y-%m-%d %H:%M", "B": "%Y-%m-%d"}[freq]
        frame["date"] = pd.date_range("2020-01-01", periods=N, freq=freq).strftime(fmt)
    if labels is not None:
        frame = frame.rename(columns={"date": "year"}).assign(year=labels)
    time = frame.columns[0]
    kept = frame.drop(index=drop)
    path = tmp_path / "gaps.csv"
    kept.to_csv(path, index=False)

    dm, caught = _module(path, target="value")  # default: the rows as they are, one warning for the gap
    assert len(dm.series) == len(kept)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"{len(drop)} of {N}, first after {frame[time].iloc[drop[0] - 1]}" in message
    assert 'missing="interpolate"' in message

    dm, caught = _module(path, target="value", missing="interpolate")
    assert not caught
    assert dm.index == [str(t) for t in frame[time]]  # every stamp, in the file's format
    # the filled values: linear in time between the neighbours (np.interp over the row numbers
    # of the regular axis, an independent reference)
    rows = np.setdiff1d(np.arange(N), drop)
    want = np.interp(np.arange(N), rows, kept["value"].to_numpy())
    np.testing.assert_allclose(dm.series, want, rtol=1e-12)


def test_regular_and_irregular_stamps_have_no_gaps(tmp_path):
    for stamps in (pd.date_range("2020-01-01", periods=N, freq="B"),  # business days, no holiday
                   pd.DatetimeIndex(np.sort(pd.Timestamp("2020-01-01").value
                                            + np.random.default_rng(0).integers(0, 10**15, N)))):  # events
        frame = pd.DataFrame({"date": stamps.astype(str), "value": np.arange(N, dtype=float)})
        frame.to_csv(tmp_path / "s.csv", index=False)
        dm, caught = _module(tmp_path / "s.csv", missing="interpolate")
        assert not caught and len(dm.series) == N


def test_gaps_in_one_series_of_a_panel(tmp_path):
    a = _frame(seed=1).assign(id="a")
    b = _frame(seed=2).assign(id="b").drop(index=[50, 51])
    path = tmp_path / "panel.csv"
    pd.concat([a, b]).to_csv(path, index=False)
    dm, caught = _module(path, id_column="id", target="value")
    assert len(caught) == 1 and "series 'b': 2 of 120, first after 2020-02-19" in str(caught[0].message)
    dm, caught = _module(path, id_column="id", target="value", missing="interpolate")
    assert not caught and [int(n) for n in np.diff(dm.starts)] == [N, N]
    np.testing.assert_array_equal(dm.series[:N], a["value"].to_numpy())  # the full series untouched


def test_the_cli_prints_data_warnings_as_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _frame(n=200).drop(index=[100]).to_csv("gaps.csv", index=False)
    main(["fit", "--data.csv_path", "gaps.csv", "--data.window", "8", "--trainer.fast_dev_run", "true"])
    err = capsys.readouterr().err
    assert "peephole-lstm: warning: gaps.csv: time stamps missing from a regular axis (1 of 200" in err


# ------------------------------------------------------------ continuation
@pytest.mark.parametrize(
    "times,want",
    [
        (pd.date_range("1949-01-01", periods=24, freq="MS").strftime("%Y-%m"), ["1951-01", "1951-02"]),
        (pd.date_range("2020-01-01", periods=24, freq="B").strftime("%Y-%m-%d"), ["2020-02-04", "2020-02-05"]),
        (pd.date_range("2020-01-01", periods=24, freq="h").strftime("%Y-%m-%dT%H:%M"),
         ["2020-01-02T00:00", "2020-01-02T01:00"]),
        (pd.date_range("2020-01-01", periods=24, freq="D").strftime("%d.%m.%Y"), ["25.01.2020", "26.01.2020"]),
        (pd.date_range("2020-01-01", periods=24, freq="MS").strftime("%d/%m/%Y"), ["01/01/2022", "01/02/2022"]),
        (pd.period_range("1990Q1", periods=12, freq="Q").astype(str), ["1993Q1", "1993Q2"]),
        ([f"{y}-Q{q}" for y in range(1990, 1993) for q in range(1, 5)], ["1993-Q1", "1993-Q2"]),
        (pd.date_range("2020-01-01", periods=24, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ"),
         ["2020-01-02T00:00:00Z", "2020-01-02T01:00:00Z"]),
        (pd.date_range("2020-01-01", periods=24, freq="MS").strftime("%b %Y"), ["Jan 2022", "Feb 2022"]),
        (pd.date_range("2020-01-01", periods=24, freq="D").strftime("%d-%b-%Y"), ["25-Jan-2020", "26-Jan-2020"]),
        # irregular (no frequency): by the median step, 60 minutes, whatever resolution pandas parses to
        ([f"2020-01-01 {h:02d}:{m:02d}" for h, m in zip(range(12), [0, 59, 0, 1, 0, 2, 0, 58, 0, 0, 3, 0])],
         ["2020-01-01 12:00", "2020-01-01 13:00"]),
    ],
)
def test_future_labels_in_the_files_format(times, want):
    assert continue_times(pd.Series(times), 2) == want


def test_business_days_with_a_holiday_continue_on_business_days():
    days = pd.date_range("2020-01-01", periods=60, freq="B").delete(20)
    assert continue_times(pd.Series(days.strftime("%Y-%m-%d")), 2) == ["2020-03-25", "2020-03-26"]
    assert len(axis(sortable(pd.Series(days.strftime("%Y-%m-%d"))))) == 60


def test_utc_offsets_across_a_daylight_saving_change(tmp_path):
    stamps = pd.date_range("2021-03-27", periods=72, freq="h", tz="Europe/Berlin")  # 28 March: +01:00 -> +02:00
    frame = pd.DataFrame({"timestamp": stamps.astype(str), "value": np.arange(72.0)})
    frame.drop(index=[30]).to_csv(tmp_path / "s.csv", index=False)
    dm, caught = _module(tmp_path / "s.csv")
    assert dm.series_season == [24] and len(caught) == 1
    assert f"(1 of 72, first after {frame['timestamp'].iloc[29]})" in str(caught[0].message)
    dm, caught = _module(tmp_path / "s.csv", missing="interpolate")
    assert dm.series.tolist() == list(range(72))
    last = stamps[-1].tz_convert("UTC") + pd.Timedelta(hours=1)
    assert dm.future_labels(0) == [last.isoformat(sep=" ")]


def test_missing_targets_at_the_ends_are_dropped_not_filled(tmp_path):
    """Under missing="interpolate", empty targets inside a series are filled, but not before its
    first value or after its last (not observed yet: the forecast starts after the last value);
    features are filled everywhere."""
    frame = _frame(n=60)
    frame.loc[[0, 1, 30, 58, 59], "value"] = np.nan
    frame.loc[[0, 59], "temp"] = np.nan
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    dm, caught = _module(path, features=["temp"], missing="interpolate")
    assert dm.index == frame["date"].iloc[2:58].tolist()
    assert dm.future_labels(0) == [frame["date"].iloc[58]]
    assert dm.series[28] == pytest.approx((frame["value"][29] + frame["value"][31]) / 2)  # row 30, inside
    assert len(caught) == 1
    assert f"(2 before {frame['date'][2]} and 2 after {frame['date'][57]})" in str(caught[0].message)
    with pytest.raises(SeriesDataError, match="column 'value' has 5 missing value"):
        _module(path, features=["temp"])  # the default still refuses them


def test_a_wide_file_says_which_column_it_forecasts(tmp_path):
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=N).strftime("%Y-%m-%d"),
                          "north": np.arange(N, dtype=float), "south": np.arange(N, dtype=float) * 2})
    frame.to_csv(tmp_path / "wide.csv", index=False)
    dm, caught = _module(tmp_path / "wide.csv")
    assert dm.target_name == "south" and len(caught) == 1
    assert "forecasting 'south', the last numeric column; 'north' not used" in str(caught[0].message)
    for named in (dict(target="south"), dict(features=["north"])):
        dm, caught = _module(tmp_path / "wide.csv", **named)
        assert dm.target_name == "south" and not caught
    assert "--data.target '[north, south]' (a wide file" in str(_module(tmp_path / "wide.csv")[1][0].message)
    frame.assign(id="a").to_csv(tmp_path / "long.csv", index=False)  # long format: the others are inputs
    message = str(_module(tmp_path / "long.csv", id_column="id")[1][0].message)
    assert message.endswith("'north' not used: name the target (--data.target) and inputs (--data.features)")


def _wide_and_long(tmp_path, n=N):
    """A wide file (date, temp, north, south; south starts 10 rows late) and the same data in
    long format (id, date, temp, value), its rows shuffled: the independent reading."""
    rng = np.random.default_rng(3)
    wide = _frame(n=n).drop(columns="value")
    wide["north"] = (np.cumsum(rng.normal(size=n)) + 5).round(6)
    wide["south"] = (np.cumsum(rng.normal(size=n)) * 3 + 40).round(6)
    wide.loc[:9, "south"] = np.nan
    wide.to_csv(tmp_path / "wide.csv", index=False)
    long = pd.concat([wide[["date", "temp", col]].rename(columns={col: "value"}).assign(id=col)
                      for col in ("north", "south")]).dropna(subset=["value"])
    long = long.sample(frac=1.0, random_state=0).sort_values("id", kind="stable")  # rows in no time order
    long.to_csv(tmp_path / "long.csv", index=False)
    return tmp_path / "wide.csv", tmp_path / "long.csv"


@pytest.mark.parametrize("features", [None, ["temp"]])
def test_a_wide_file_is_the_panel_its_long_format_gives(tmp_path, features):
    """target=[north, south] reads one series per column: the same panel, window for window and
    scaler for scaler, as the long-format file (id_column) with the same rows."""
    wide, long = _wide_and_long(tmp_path)
    dm, caught = _module(wide, target=["north", "south"], features=features, missing="interpolate")
    ref, _ = _module(long, id_column="id", target="value", features=features)
    assert dm.series_names == ref.series_names == ["north", "south"]
    assert [int(k) for k in np.diff(dm.starts)] == [N, N - 10]
    np.testing.assert_array_equal(dm.inputs, ref.inputs)
    assert dm.index == ref.index
    for split in ("train", "val", "test", "future"):
        np.testing.assert_array_equal(dm.ends[split], ref.ends[split])
        np.testing.assert_array_equal(dm.sids[split], ref.sids[split])
    for key in ("series_mean", "series_std", "series_diff_scale", "series_mase_scale"):
        np.testing.assert_array_equal(getattr(dm, key), getattr(ref, key))
    assert dm.future_labels(1) == ref.future_labels(1) == [str(pd.Timestamp("2020-01-01") + pd.Timedelta(days=N))[:10]]
    assert len(caught) == 1 and "series 'south': 10 before 2020-01-11" in str(caught[0].message)
    assert dm.input_columns == ["north", "south", *(features or [])]
    with pytest.raises(SeriesDataError, match="column 'south' has 10 missing value"):
        _module(wide, target=["north", "south"], features=features)  # missing="error" names the column


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target=[]), "target is an empty list"),
        (dict(target=["north", "north"]), "target names 'north' more than once"),
        (dict(target=["north", "west"]), "unknown column 'west'"),
        (dict(target=["north", "south"], features=["south"]), "the target 'south' is always input 0"),
        (dict(target=["north", "date"], time_column="date"), "'date' is the time column"),
        (dict(target=["north", "date"]), "column 'date' has 120 non-numeric value"),
        (dict(target=["north", "south"], id_column="temp"), "several target columns .* and id_column"),
    ],
)
def test_wide_file_errors(tmp_path, kwargs, match):
    wide, _ = _wide_and_long(tmp_path)
    with pytest.raises(SeriesDataError, match=match):
        _module(wide, missing="interpolate", **kwargs)


def test_a_wide_file_through_the_cli(tmp_path, monkeypatch, capsys):
    """fit on a wide file forecasts every column (forecast.csv, per-series metrics), and predict
    with its checkpoint (the wide columns as its channels) gives the same forecasts again."""
    monkeypatch.chdir(tmp_path)
    _wide_and_long(tmp_path, n=200)
    common = ["--data.csv_path", "wide.csv", "--data.target", "[north, south]", "--data.missing", "interpolate",
              "--data.window", "8", "--model.hidden_size", "8", "--model.ensemble", "1"]
    main(["fit", *common, "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    run = tmp_path / "runs" / "wide" / "version_1"
    forecast = pd.read_csv(run / "forecast.csv")
    future = forecast[forecast["kind"] == "future"]
    assert future["series"].tolist() == ["north", "south"] and future["time"].tolist() == ["2020-07-19"] * 2
    assert pd.read_csv(run / "metrics_per_series.csv")["series"].tolist() == ["north", "south"]
    main(["predict", *common, "--ckpt_path", str(next((run / "checkpoints").glob("*.ckpt"))),
          "--trainer.enable_progress_bar", "false"])
    again = pd.read_csv(run / "forecast.csv")
    np.testing.assert_allclose(again["forecast"], forecast["forecast"], rtol=1e-5)


# ------------------------------------------------------------------ calendar
@pytest.mark.parametrize(
    "stamps,row,season,longer",
    [
        # 15 minutes: 06:00 is a quarter of the day; Wednesday 1 Jan 2020 is day 2 of the week
        (pd.date_range("2020-01-01", periods=200, freq="15min"), 24, 0.25, (2 + 0.25) / 7),
        (pd.date_range("2020-01-01", periods=60, freq="D"), 0, 2 / 7, 0.0),  # Wednesday, 1 January
        (pd.date_range("2020-01-01", periods=60, freq="B"), 2, 4 / 5, 2 / 366),  # Friday 3 Jan, leap year
        (pd.date_range("2021-01-03", periods=60, freq="W"), 1, 9 / 365, None),  # Sunday 10 Jan 2021
        (pd.date_range("2020-01-01", periods=30, freq="MS"), 2, 2 / 12, None),  # March
        (pd.date_range("2020-01-01", periods=30, freq="QS"), 3, 3 / 4, None),  # Q4
        (pd.date_range("2000-01-01", periods=30, freq="YS"), 3, None, None),  # yearly: no cycle
    ],
)
def test_calendar_phases_by_hand(stamps, row, season, longer):
    from peephole_lstm.forecast.time_axis import calendar_phases

    got = calendar_phases(pd.Series(stamps.strftime("%Y-%m-%d %H:%M")))
    for col, phase in ((0, season), (2, longer)):
        want = [0.0, 0.0] if phase is None else [np.sin(2 * np.pi * phase), np.cos(2 * np.pi * phase)]
        np.testing.assert_allclose(got[row, col : col + 2], want, atol=1e-12)
    kept = np.r_[0:10, 13:len(stamps)]  # gaps do not shift the phases of the rows around them
    np.testing.assert_allclose(calendar_phases(pd.Series(stamps[kept].strftime("%Y-%m-%d %H:%M"))), got[kept])


def test_calendar_inputs_through_the_data_module_and_the_cli(tmp_path, monkeypatch):
    from peephole_lstm.forecast.time_axis import CALENDAR, calendar_phases

    frame = _frame(n=200)
    frame.to_csv(tmp_path / "s.csv", index=False)
    dm, _ = _module(tmp_path / "s.csv", features=["temp"], calendar=True)
    assert dm.input_size == 2 + 4 and dm.input_columns == ["value", "temp", *CALENDAR]
    np.testing.assert_array_equal(dm.inputs[:, 2:], calendar_phases(frame["date"]))
    np.testing.assert_array_equal(dm.inputs[:, :2], _module(tmp_path / "s.csv", features=["temp"])[0].inputs)
    x = dm.dataset("train")[0]["x"]  # z-scored with the training rows' statistics, like features
    mean, std = dm.inputs[: dm.split_rows[0][0], 2:].mean(0), dm.inputs[: dm.split_rows[0][0], 2:].std(0)
    np.testing.assert_allclose(x[:, 2:].numpy(), ((dm.inputs[:8, 2:] - mean) / std), rtol=1e-5, atol=1e-6)
    pd.DataFrame({"year": range(1900, 2000), "value": np.arange(100.0)}).to_csv(tmp_path / "y.csv", index=False)
    with pytest.raises(SeriesDataError, match="calendar=True needs dates, but .* time column 'year' holds no dates"):
        _module(tmp_path / "y.csv", calendar=True)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--data.csv_path", "s.csv", "--data.window", "8", "--data.calendar", "true",
          "--trainer.fast_dev_run", "true"])


def test_a_checkpoint_of_other_input_columns_is_one_clear_error(tmp_path, monkeypatch, capsys):
    """predict/test with a checkpoint trained on other inputs (the calendar on, a feature) stop
    before loading it, naming the columns and the data options it was fit with; nothing is
    written. Before, the weight loading failed with a tensor-size mismatch."""
    monkeypatch.chdir(tmp_path)
    _frame(n=200).to_csv("s.csv", index=False)
    small = ["--data.csv_path", "s.csv", "--data.window", "8", "--model.hidden_size", "4", "--model.ensemble", "1"]
    main(["fit", *small, "--data.calendar", "true", "--data.features", "[temp]", "--trainer.max_steps", "2",
          "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"])
    ckpt = str(next((tmp_path / "runs" / "s" / "version_1" / "checkpoints").glob("*.ckpt")))
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    for command, drop, hint in [("predict", ["--data.calendar", "false"], "--data.calendar true"),
                                ("test", ["--data.features", "[]"], "--data.features [temp]")]:
        capsys.readouterr()
        args = [*small, "--data.calendar", "true", "--data.features", "[temp]", *drop]
        with pytest.raises(SystemExit) as exc:
            main([command, *args, "--ckpt_path", ckpt])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "was trained on the input columns ['value', 'temp', 'calendar_season_sin'" in err
        assert f"pass the data options it was fit with, {hint}" in err
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*") if p.is_file()} == written
    main(["predict", *small, "--data.calendar", "true", "--data.features", "[temp]", "--ckpt_path", ckpt])
