"""SeriesDataModule: windows of a real (CSV) or embedded series, split in time, scaled without leakage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Optional

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["SCALINGS", "SeriesDataError", "SeriesDataModule", "load_builtin"]

SCALINGS = ("last", "zscore", "none")
MISSING = ("error", "interpolate")
_DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
BUILTIN = {
    # name: its default target column
    "co2": "co2",
    "synthetic": "value",
}


class SeriesDataError(ValueError):
    """A problem with the data or the data options; its message is one line meant for the user."""


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
    """Windows ending just before each row in ``ends``: inputs ``x[e - window : e]`` and
    targets ``y[e : e + horizon]``, scaled as the data module says.

    Each item is a dict: ``x`` (window, C), ``y`` (horizon,) scaled; ``offset`` and
    ``scale`` (1,) such that original units = scaled * scale + offset; ``naive`` (1,), the
    last observed target (the persistence forecast); ``end`` the row of the first target.
    """

    def __init__(self, dm: SeriesDataModule, ends: np.ndarray) -> None:
        self.dm = dm
        self.ends = ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        dm = self.dm
        e = int(self.ends[k])
        w, h = dm.hparams.window, dm.hparams.horizon
        x = dm.inputs[e - w : e].copy()  # (window, C), original units
        y = dm.series[e : e + h]  # (horizon,)
        last = dm.series[e - 1]
        if dm.hparams.scaling == "last":
            offset, scale = last, dm.diff_scale
            x[:, 0] = (x[:, 0] - last) / scale
            x[:, 1:] = (x[:, 1:] - dm.mean[1:]) / dm.std[1:]
        elif dm.hparams.scaling == "zscore":
            offset, scale = dm.mean[0], dm.std[0]
            x = (x - dm.mean) / dm.std
        else:
            offset, scale = 0.0, 1.0
        return {
            "x": torch.as_tensor(x, dtype=torch.float32),
            "y": torch.as_tensor((y - offset) / scale, dtype=torch.float32),
            "offset": torch.tensor([offset], dtype=torch.float32),
            "scale": torch.tensor([scale], dtype=torch.float32),
            "naive": torch.tensor([last], dtype=torch.float32),
            "end": torch.tensor(e),
        }


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``seed`` and the epoch (Lightning
    calls ``set_epoch``), so a run resumed from a checkpoint sees the same batches as an
    uninterrupted one, whatever the global RNG did in between."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class SeriesDataModule(L.LightningDataModule):
    """Sliding windows over one series (plus optional feature columns) for forecasting.

    The rows are split in time order into train / val / test; every target of a split lies
    inside it (inputs may look back into earlier splits, as a forecaster would). The scaler
    is fitted on the training rows only.

    Args:
        csv_path: a CSV file with a header row; ``None`` uses the embedded ``dataset``.
        target: the column to forecast; ``None``: the dataset's default target, or the last
            numeric column of a CSV.
        features: extra input columns (the target is always input channel 0).
        window: input length (time steps).
        horizon: number of future steps forecast at once.
        batch_size: windows per batch.
        val_fraction: share of the rows whose targets form the validation split (0 disables it).
        test_fraction: share of the rows whose targets form the test split.
        scaling: ``"last"`` (default): each window relative to its last observed value,
            divided by the standard deviation of the one-step changes in the training rows,
            so trends beyond the training range stay in range; ``"zscore"``: the level minus
            the training mean over the training std (the article's recipe; fails on trends);
            ``"none"``. Features are z-scored with training statistics in both modes.
        missing: ``"error"``: refuse NaNs / empty cells; ``"interpolate"``: fill them linearly.
        num_workers: DataLoader worker processes.
        dataset: the embedded series used when ``csv_path`` is None: ``"co2"`` (Mauna Loa
            weekly CO2, real, public domain) or ``"synthetic"`` (generated).
        seed: the seed of the training shuffle (per epoch; see ``EpochSeededSampler``).
    """

    def __init__(
        self,
        csv_path: Optional[str] = None,
        target: Optional[str] = None,
        features: Optional[list[str]] = None,
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        frame = self._read()
        self.target_name, self.feature_names = self._columns(frame)
        self.index = self._index_labels(frame)
        columns = [self.target_name, *self.feature_names]
        values = self._numeric(frame[columns])
        self.inputs = values  # (N, C) original units, target first
        self.series = values[:, 0]  # (N,)
        self._split(len(values))
        train = values[: self.n_train]
        self.mean = train.mean(axis=0)
        self.std = _safe_std(train)
        self.diff_scale = float(_safe_std(np.diff(train[:, 0])[:, None])[0])

    # ---------------------------------------------------------------- validation
    def _check_options(self) -> None:
        hp = self.hparams
        if hp.scaling not in SCALINGS:
            raise SeriesDataError(f"scaling must be one of {', '.join(SCALINGS)}, got {hp.scaling!r}")
        if hp.missing not in MISSING:
            raise SeriesDataError(f"missing must be one of {', '.join(MISSING)}, got {hp.missing!r}")
        for name in ("window", "horizon", "batch_size"):
            if int(getattr(hp, name)) < 1:
                raise SeriesDataError(f"{name} must be at least 1, got {getattr(hp, name)}")
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
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SeriesDataError(f"cannot read {path} as CSV: {first}") from exc
        if frame.empty:
            raise SeriesDataError(f"{path} has no data rows")
        return frame

    def _columns(self, frame: pd.DataFrame) -> tuple[str, list[str]]:
        hp = self.hparams
        available = ", ".join(map(str, frame.columns))
        where = hp.csv_path or f"the {hp.dataset!r} dataset"
        target = hp.target
        if target is None:
            if hp.csv_path is None:
                target = BUILTIN[hp.dataset]
            else:
                # "Mostly numeric", so that one bad cell is reported as such, not as "no column".
                numeric = [c for c in frame.columns if pd.to_numeric(frame[c], errors="coerce").notna().mean() >= 0.5]
                if not numeric:
                    raise SeriesDataError(f"{where} has no numeric column to forecast (columns: {available})")
                target = numeric[-1]
        features = list(hp.features or [])
        for col in [target, *features]:
            if col not in frame.columns:
                raise SeriesDataError(f"unknown column {col!r} in {where} (columns: {available})")
        if target in features:
            raise SeriesDataError(f"the target {target!r} is always input 0; do not list it in features")
        return target, features

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        out = {}
        for col in frame.columns:
            raw = frame[col]
            num = pd.to_numeric(raw, errors="coerce")
            bad = num.isna() & raw.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise SeriesDataError(
                    f"column {col!r} has {int(bad.sum())} non-numeric value(s), first {raw.iloc[row]!r} "
                    f"at data row {row + 1}"
                )
            missing = num.isna() | ~np.isfinite(num.to_numpy(dtype=np.float64, na_value=np.nan))
            if missing.any():
                if self.hparams.missing == "error":
                    row = int(np.flatnonzero(missing.to_numpy())[0])
                    raise SeriesDataError(
                        f"column {col!r} has {int(missing.sum())} missing value(s), first at data row {row + 1}; "
                        'pass missing="interpolate" (--data.missing=interpolate) to fill them'
                    )
                num = num.where(~missing).interpolate(limit_direction="both")
                if num.isna().any():
                    raise SeriesDataError(f"column {col!r} has no values to interpolate from")
            out[col] = num.to_numpy(dtype=np.float64)
        return np.stack([out[c] for c in frame.columns], axis=1)

    @staticmethod
    def _index_labels(frame: pd.DataFrame) -> list[str]:
        for col in ("date", "time", "timestamp", "datetime", "ds"):
            if col in frame.columns:
                return frame[col].astype(str).tolist()
        return [str(i) for i in range(len(frame))]

    def _split(self, n: int) -> None:
        hp = self.hparams
        self.n_test = int(round(n * hp.test_fraction))
        self.n_val = int(round(n * hp.val_fraction))
        self.n_train = n - self.n_val - self.n_test
        w, h = hp.window, hp.horizon
        need = {
            "train": (self.n_train, w + h),
            "val": (self.n_val, h if hp.val_fraction > 0 else 0),
            "test": (self.n_test, h),
        }
        for split, (have, want) in need.items():
            if have < want:
                raise SeriesDataError(
                    f"series too short: {n} rows give the {split} split {have} rows, but it needs at least {want} "
                    f"(window={w}, horizon={h}, val_fraction={hp.val_fraction}, test_fraction={hp.test_fraction})"
                )
        # Window ends e (first target row): every target e .. e+h-1 inside the split.
        a, b = self.n_train, self.n_train + self.n_val
        self.ends = {
            "train": np.arange(w, a - h + 1),
            "val": np.arange(max(a, w), b - h + 1),
            "test": np.arange(max(b, w), n - h + 1),
        }

    # ----------------------------------------------------------------- Lightning
    @property
    def input_size(self) -> int:
        """Number of input channels: the target plus the features."""
        return 1 + len(self.feature_names)

    def dataset(self, split: str) -> WindowDataset:
        return WindowDataset(self, self.ends[split])

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        ds = self.dataset(split)
        sampler = EpochSeededSampler(len(ds), self.hparams.seed) if shuffle else None
        return DataLoader(
            ds,
            batch_size=self.hparams.batch_size,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self):
        return self._loader("val") if len(self.ends["val"]) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


def _safe_std(a: np.ndarray) -> np.ndarray:
    std = a.std(axis=0)
    return np.where(std > 0, std, 1.0)
