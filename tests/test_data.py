"""SeriesDataModule: windowing, chronological splits, scaling without leakage, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("lightning")

from peephole_lstm.forecast.datamodule import SeriesDataError, SeriesDataModule  # noqa: E402


def test_windows_and_splits_by_hand(tmp_path, write_csv):
    # 20 rows, y = 0..19; window 3, horizon 2; 20% val, 20% test -> 12 / 4 / 4 rows.
    path = write_csv(pd.DataFrame({"t": range(20), "y": np.arange(20.0)}))
    dm = SeriesDataModule(path, window=3, horizon=2, val_fraction=0.2, test_fraction=0.2, scaling="none")
    assert (dm.n_train, dm.n_val, dm.n_test) == (12, 4, 4)
    assert dm.target_name == "y"  # the last numeric column
    # train targets in rows 0..11: ends e with e >= 3 and e + 1 <= 11
    assert dm.ends["train"].tolist() == list(range(3, 11))
    assert dm.ends["val"].tolist() == [12, 13, 14]
    assert dm.ends["test"].tolist() == [16, 17, 18]
    item = dm.dataset("val")[0]
    assert item["x"][:, 0].tolist() == [9.0, 10.0, 11.0]  # inputs may look back into train
    assert item["y"].tolist() == [12.0, 13.0]
    assert item["naive"].item() == 11.0
    for split in ("train", "val", "test"):
        lo = {"train": 0, "val": 12, "test": 16}[split]
        hi = lo + {"train": 12, "val": 4, "test": 4}[split]
        for e in dm.ends[split]:
            assert lo <= e and e + 2 <= hi  # every target inside its split


def test_zscore_fitted_on_train_rows_only(tmp_path, write_csv):
    y = np.concatenate([np.arange(14.0), np.full(6, 1000.0)])  # huge values only after train
    path = write_csv(pd.DataFrame({"y": y}))
    dm = SeriesDataModule(path, window=2, horizon=1, val_fraction=0.15, test_fraction=0.15, scaling="zscore")
    assert dm.n_train == 14
    assert dm.mean[0] == pytest.approx(6.5)
    assert dm.std[0] == pytest.approx(np.arange(14.0).std())
    item = dm.dataset("train")[0]  # rows 0,1 -> target row 2
    assert item["x"][:, 0].tolist() == pytest.approx(((np.array([0.0, 1.0]) - 6.5) / dm.std[0]).tolist())
    assert (item["y"] * item["scale"] + item["offset"]).item() == pytest.approx(2.0)


def test_last_value_scaling_by_hand(tmp_path, write_csv):
    y = np.array([1.0, 2.0, 4.0, 7.0, 11.0, 16.0, 22.0, 29.0, 37.0, 46.0])
    feat = np.arange(10.0) * 10
    path = write_csv(pd.DataFrame({"f": feat, "y": y}))
    dm = SeriesDataModule(path, target="y", features=["f"], window=3, horizon=1,
                          val_fraction=0.1, test_fraction=0.2, scaling="last")
    assert dm.input_size == 2 and dm.n_train == 7
    d = np.diff(y[:7]).std()
    assert dm.diff_scale == pytest.approx(d)
    item = dm.dataset("train")[0]  # rows 0..2 -> target row 3, last = 4
    assert item["x"][:, 0].tolist() == pytest.approx([(1 - 4) / d, (2 - 4) / d, 0.0])
    assert item["x"][:, 1].tolist() == pytest.approx(((feat[:3] - feat[:7].mean()) / feat[:7].std()).tolist())
    assert item["y"].item() == pytest.approx((7 - 4) / d)
    assert (item["y"] * item["scale"] + item["offset"]).item() == pytest.approx(7.0)


def test_embedded_default_and_synthetic():
    dm = SeriesDataModule()
    assert dm.target_name == "co2" and len(dm.series) == 2284 and dm.index[0] == "1958-03-29"
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (32, 60, 1) and batch["y"].shape == (32, 1)
    syn = SeriesDataModule(dataset="synthetic", window=20, horizon=3)
    assert syn.dataset("test")[0]["y"].shape == (3,)


def test_shuffle_depends_only_on_seed_and_epoch():
    dm = SeriesDataModule(dataset="synthetic", window=10)
    a, b = dm.train_dataloader().sampler, dm.train_dataloader().sampler
    torch.manual_seed(123)
    first = list(a)
    torch.manual_seed(999)
    assert list(b) == first
    b.set_epoch(1)
    assert list(b) != first


def test_interpolate_missing(tmp_path, write_csv):
    path = write_csv(pd.DataFrame({"y": [1.0, np.nan, 3.0] + list(range(4, 40))}))
    with pytest.raises(SeriesDataError, match=r"column 'y' has 1 missing value\(s\), first at data row 2"):
        SeriesDataModule(path, window=3)
    dm = SeriesDataModule(path, window=3, missing="interpolate")
    assert dm.series[1] == 2.0


@pytest.mark.parametrize(
    "kwargs,frame,message",
    [
        (dict(csv_path="/nonexistent/x.csv"), None, "CSV file not found: /nonexistent/x.csv"),
        (dict(target="nope"), "ok", "unknown column 'nope'"),
        (dict(features=["zzz"]), "ok", "unknown column 'zzz'"),
        (dict(), "text", r"column 'y' has 1 non-numeric value\(s\), first 'abc' at data row 3"),
        (dict(window=60), "ok", "series too short: 40 rows give the train split 28 rows, but it needs at least 61"),
        (dict(scaling="minmax"), "ok", "scaling must be one of last, zscore, none"),
        (dict(missing="drop"), "ok", "missing must be one of error, interpolate"),
        (dict(test_fraction=0.0), "ok", "need 0 <= val_fraction"),
        (dict(), "empty", "has no data rows"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, kwargs, frame, message, write_csv):
    if frame == "ok":
        kwargs["csv_path"] = write_csv(pd.DataFrame({"y": np.arange(40.0)}))
    elif frame == "text":
        kwargs["csv_path"] = write_csv(pd.DataFrame({"y": ["1", "2", "abc"] + [str(i) for i in range(37)]}))
    elif frame == "empty":
        (tmp_path / "e.csv").write_text("y\n")
        kwargs["csv_path"] = str(tmp_path / "e.csv")
    kwargs.setdefault("window", 5)
    with pytest.raises(SeriesDataError, match=message) as err:
        SeriesDataModule(**kwargs)
    assert "\n" not in str(err.value)


def test_items_carry_the_ar_lags_beyond_the_window_and_pad_what_a_series_does_not_read(tmp_path):
    """set_lags: items carry the most lags of any series (``context``); each series' windows
    start where it has its own lags, and the older rows of a series with fewer lags repeat its
    first row (the model gives them weight 0); too few rows for the lags is the too-short
    error, naming them."""
    rng = np.random.default_rng(0)
    frame = pd.concat([pd.DataFrame({"id": name, "t": np.arange(n), "v": rng.normal(size=n)})
                       for name, n in (("a", 100), ("b", 60))])
    csv = tmp_path / "panel.csv"
    frame.to_csv(csv, index=False)
    dm = SeriesDataModule(str(csv), id_column="id", window=5, scaling="none")
    first = {s: int(dm.ends["train"][dm.sids["train"] == s].min() - dm.starts[s]) for s in (0, 1)}
    assert dm.context == 5 and first == {0: 5, 1: 5}
    dm.set_lags([30, 3])
    first = {s: int(dm.ends["train"][dm.sids["train"] == s].min() - dm.starts[s]) for s in (0, 1)}
    assert dm.context == 30 and first == {0: 30, 1: 5}
    ds = dm.dataset("train")
    k = int(np.flatnonzero(ds.sids == 1)[0])  # series b's first window: 5 real rows
    x = ds[k]["x"][:, 0].numpy()
    b = frame[frame["id"] == "b"]["v"].to_numpy()
    assert x.shape == (30,)
    np.testing.assert_allclose(x[-5:], b[:5], rtol=1e-6)
    np.testing.assert_allclose(x[:-5], b[0], rtol=1e-6)
    k = int(np.flatnonzero(ds.sids == 0)[0])
    np.testing.assert_allclose(ds[k]["x"][:, 0].numpy(), frame["v"].to_numpy()[:30], rtol=1e-6)
    with pytest.raises(SeriesDataError, match=r"series 'b' too short: 60 rows give the train split 42 rows, but it "
                                              r"needs at least 46 \(window=5, AR lags=45, horizon=1"):
        dm.set_lags([3, 45])
    with pytest.raises(SeriesDataError, match="set_lags needs one positive integer per series"):
        dm.set_lags([3])
