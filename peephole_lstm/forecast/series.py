"""SeriesTensor: every series of a panel in one contiguous tensor with an index per series
(neuralforecast's ``TimeSeriesDataset`` is the example), the per-series scalers fitted as
segment reductions over it, and the windows of a whole batch gathered in one indexing step.

Nothing here loops over series or windows in Python: the cost of a batch is the batch's rows,
whatever the number of series, and no window is ever copied out of the data except into the
batch that asks for it. Reading files and resolving columns is the data module's job
(:mod:`.datamodule`); this module takes numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

__all__ = ["SCALINGS", "BatchedWindows", "EpochSeededSampler", "SeriesTensor", "WindowDataset", "WindowSpec", "as_batch"]

SCALINGS = ("last", "zscore", "none")


@dataclass(frozen=True)
class WindowSpec:
    """What every window of a split looks like.

    Attributes:
        context: input rows per window (the LSTM's window, or more for AR lags beyond it).
        horizon: target steps per window.
        scaling: ``"last"``, ``"zscore"`` or ``"none"`` (see :class:`SeriesDataModule`).
        future_channels: the input channels known ahead (``future_features``), the last ones.
    """

    context: int
    horizon: int
    scaling: str
    future_channels: tuple[int, ...] = ()


def _segment_sum(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sums of consecutive segments of ``a`` (along axis 0) of the given positive lengths. One
    segment (one series) is numpy's own reduction, whose pairwise sum ``reduceat`` does not
    do: a single series' scalers are those of ``a.mean(axis=0)`` / ``a.std(axis=0)`` to the bit."""
    if len(lengths) == 1:
        return np.add.reduce(a, axis=0, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.add.reduceat(a, offsets, axis=0)


def _segment_std(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Population standard deviation of each segment of ``a`` ``(n, C)`` (two passes, like
    ``numpy.std``); 1 where it is 0 (a constant channel)."""
    mean = _segment_sum(a, lengths) / lengths[:, None]  # (S, C)
    dev = a - np.repeat(mean, lengths, axis=0)
    std = np.sqrt(_segment_sum(dev * dev, lengths) / lengths[:, None])
    return np.where(std > 0, std, 1.0)


class SeriesTensor:
    """All rows of every series, target first, in one ``(N, C)`` float64 tensor.

    Series ``s`` holds rows ``starts[s] .. starts[s + 1]``. The scalers (``mean``, ``std``
    ``(S, C)``, ``diff_scale``, ``mase_scale`` ``(S,)``) are fitted on each series' training
    rows by :meth:`fit_scalers` and may be replaced (a checkpoint's).

    Args:
        values: ``(N, C)`` the inputs in original units, target in channel 0.
        starts: ``(S + 1,)`` the first row of each series, then ``N``.
        seasons: ``(S,)`` each series' season length in rows (1: none).
        future: ``(S, horizon, F)`` the known-ahead inputs at the steps after each series' last
            row, in original units (``future_features``); NaN for a series whose file gives none.
        no_future: called with a series number when a window needs its missing ``future``
            values; it raises the error the user sees.
    """

    def __init__(self, values: np.ndarray, starts: np.ndarray, seasons: np.ndarray,
                 future: Optional[np.ndarray] = None, no_future: Optional[Callable[[int], None]] = None) -> None:
        self.values = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))  # (N, C)
        self.starts = torch.as_tensor(np.asarray(starts, dtype=np.int64))  # (S + 1,)
        self.seasons = torch.as_tensor(np.asarray(seasons, dtype=np.int64))  # (S,)
        self.future = None if future is None else torch.from_numpy(np.asarray(future, dtype=np.float64))
        self.no_future = no_future
        S, C = len(self.seasons), self.values.shape[1]
        self.mean = torch.zeros(S, C, dtype=torch.float64)
        self.std = torch.ones(S, C, dtype=torch.float64)
        self.diff_scale = torch.ones(S, dtype=torch.float64)
        self.mase_scale = torch.ones(S, dtype=torch.float64)

    @property
    def num_series(self) -> int:
        return len(self.seasons)

    @property
    def lengths(self) -> np.ndarray:
        """``(S,)`` rows per series."""
        return np.diff(self.starts.numpy())

    def fit_scalers(self, n_train: np.ndarray) -> None:
        """Per series, on its first ``n_train[s]`` rows (at least 2): the mean and std of every
        channel, the std of the target's one-step changes (``scaling="last"``) and its in-sample
        seasonal naive MAE (MASE's denominator; lag 1 where the rows do not exceed a season)."""
        n_train = np.asarray(n_train, dtype=np.int64)  # (S,)
        values, starts = self.values.numpy(), self.starts.numpy()
        local = np.arange(len(values)) - np.repeat(starts[:-1], self.lengths)  # (N,) row within its series
        train = values[local < np.repeat(n_train, self.lengths)]  # (sum n_train, C): each series' training rows
        self.mean = torch.from_numpy(_segment_sum(train, n_train) / n_train[:, None])
        self.std = torch.from_numpy(_segment_std(train, n_train))
        first = np.concatenate([[0], np.cumsum(n_train)[:-1]])  # each series' first row in train
        y = train[:, 0]
        inner = np.ones(len(y), dtype=bool)
        inner[first] = False  # a change needs the row before it in the same series
        diffs = (y[1:] - y[:-1])[inner[1:]]
        self.diff_scale = torch.from_numpy(_segment_std(diffs[:, None], n_train - 1)[:, 0])
        seasons = self.seasons.numpy()
        m = np.where(n_train > seasons, seasons, 1)  # (S,)
        tl = np.arange(len(y)) - np.repeat(first, n_train)  # row within the series' training rows
        lag = np.repeat(m, n_train)
        has = tl >= lag
        idx = np.flatnonzero(has)
        mae = _segment_sum(np.abs(y[idx] - y[idx - lag[idx]]), n_train - m) / (n_train - m)
        self.mase_scale = torch.from_numpy(np.where(mae > 0, mae, 1.0))

    def windows(self, ends: Tensor, sids: Tensor, spec: WindowSpec) -> dict[str, Tensor]:
        """The windows whose first target is row ``ends[i]`` of series ``sids[i]``, as one batch
        (see :class:`WindowDataset` for the keys). Rows
        before a series' first are its first row repeated; targets past its last are NaN."""
        e = torch.as_tensor(ends, dtype=torch.int64)  # (B,)
        s = torch.as_tensor(sids, dtype=torch.int64)  # (B,)
        c, h = spec.context, spec.horizon
        start, stop = self.starts[s], self.starts[s + 1]  # (B,)
        target = self.values[:, 0]  # (N,)
        rows = torch.maximum(e[:, None] - c + torch.arange(c), start[:, None])  # (B, context)
        x = self.values[rows]  # (B, context, C), original units
        steps = torch.arange(h)
        t = e[:, None] + steps  # (B, horizon): the target rows
        inside = t < stop[:, None]
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        y = torch.where(inside, target[t.clamp(max=len(target) - 1)], nan)  # (B, horizon), NaN past the data
        last = target[e - 1]  # (B,): the last observed value
        m = self.seasons[s][:, None]  # (B, 1)
        back = t - m * (steps // m + 1)  # the value one (or more) seasons before each target, before e
        snaive = torch.where(back >= start[:, None], target[back.clamp(min=0)], last[:, None])  # (B, horizon)
        mean, std = self.mean[s], self.std[s]  # (B, C)
        if spec.scaling == "last":
            offset, scale = last, self.diff_scale[s]
            x = torch.cat([((x[..., 0] - last[:, None]) / scale[:, None])[..., None],
                           (x[..., 1:] - mean[:, None, 1:]) / std[:, None, 1:]], dim=-1)
        elif spec.scaling == "zscore":
            offset, scale = mean[:, 0], std[:, 0]
            x = (x - mean[:, None]) / std[:, None]
        else:
            offset, scale = torch.zeros_like(last), torch.ones_like(last)
        f32 = torch.float32
        batch = {
            "x": x.to(f32),
            "y": ((y - offset[:, None]) / scale[:, None]).to(f32),
            "offset": offset[:, None].to(f32),
            "scale": scale[:, None].to(f32),
            "naive": last[:, None].to(f32),
            "snaive": snaive.to(f32),
            "mase_scale": self.mase_scale[s][:, None].to(f32),
            "end": e,
            "series": s,
        }
        if spec.future_channels:
            cols = list(spec.future_channels)
            fut = self.values[t.clamp(max=len(target) - 1)][..., cols]  # (B, horizon, F)
            if not bool(inside.all()):  # steps past the data: the rows the file gives after the last value
                past = ~inside
                beyond = s[past.any(1)]  # the series of the windows that reach past their data
                lacking = beyond if self.future is None else beyond[torch.isnan(self.future[beyond]).flatten(1).any(1)]
                if len(lacking):
                    if self.no_future is not None:
                        self.no_future(int(lacking[0]))
                    raise ValueError(f"series {int(lacking[0])} has no future_features past its last row")
                k = (t - stop[:, None]).clamp(min=0)  # (B, horizon): step past the last row
                ahead = self.future[s[:, None], k]  # (B, horizon, F)
                fut = torch.where(past[..., None], ahead, fut)
            if spec.scaling != "none":
                fut = (fut - mean[:, None, cols]) / std[:, None, cols]
            batch["future"] = fut.to(f32)
        return batch


class WindowDataset(Dataset):
    """Windows ending just before each row in ``ends`` (global rows of the concatenated series;
    ``sids`` says which series each belongs to): inputs ``x[e - context : e]`` (``context``
    is ``window``, or more where the model's AR term reads further back: see
    :meth:`SeriesDataModule.set_lags`) and targets ``y[e : e + horizon]``, scaled with that
    series' statistics. Indices into one :class:`SeriesTensor`: a batch is gathered in one step
    (:meth:`batch`; :class:`BatchedWindows` for a DataLoader), nothing is copied per window.

    Each item is a dict: ``x`` (context, C), ``y`` (horizon,) scaled (NaN past the end of the
    data: a future window); ``offset`` and ``scale`` (1,) such that original units = scaled *
    scale + offset; ``naive`` (1,), the last observed target (the persistence forecast);
    ``snaive`` (horizon,), the seasonal naive forecast (the value one season before each
    target); ``mase_scale`` (1,), the series' in-sample seasonal naive MAE (MASE's
    denominator); ``end`` the row of the first target; ``series`` the series' number; with
    ``future_features``, ``future`` (horizon, F): their values at the target steps, z-scored
    like the other inputs (past the data: the rows the file gives after the series' last value).
    A batch has the same keys with a leading batch dimension.
    """

    def __init__(self, store: SeriesTensor, ends: np.ndarray, sids: np.ndarray, spec: WindowSpec) -> None:
        self.store = store
        self.ends = ends
        self.sids = sids
        self.spec = spec

    def __len__(self) -> int:
        return len(self.ends)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The windows at ``indices`` as one batch, gathered in one step."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return self.store.windows(torch.from_numpy(self.ends)[idx], torch.from_numpy(self.sids)[idx], self.spec)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= k < len(self):
            raise IndexError(f"window {k} of {len(self)}")
        return {key: v[0] for key, v in self.batch([k % len(self)]).items()}


class BatchedWindows(Dataset):
    """A :class:`WindowDataset` for a DataLoader that gathers each batch in one step: the
    DataLoader hands ``__getitems__`` the batch's indices, and its ``collate_fn`` must be
    :func:`as_batch` (a plain ``DataLoader(windows, batch_size=...)`` on the
    :class:`WindowDataset` itself works too, item by item)."""

    def __init__(self, windows: WindowDataset) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        return self.windows[k]

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.windows.batch(indices)


def as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn`` for :class:`BatchedWindows`: its ``__getitems__``
    already returns the batch."""
    return batch


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on ``seed`` and the epoch (Lightning
    calls ``set_epoch``), so a run resumed from a checkpoint sees the same batches as an
    uninterrupted one, whatever the global RNG did in between.

    Under ``torch.distributed`` (DDP) each of the ``W`` processes takes every ``W``-th index of
    the one epoch order, from its rank (the order padded by its first indices to a multiple of
    ``W``, so every process runs the same number of steps): together one epoch of the data,
    as one process sees it."""

    def __init__(self, n: int, seed: int, weights: Optional[torch.Tensor] = None) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0
        self.weights = weights  # draw with replacement by these (balanced panels), else a permutation

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _shard() -> tuple[int, int]:
        """(rank, world size) of this process (0, 1 without torch.distributed)."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        _, world = self._shard()
        return -(-self.n // world)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g)
        rank, world = self._shard()
        if world > 1:
            order = torch.cat([order, order[: len(self) * world - self.n]])[rank::world]
        return iter(order.tolist())
