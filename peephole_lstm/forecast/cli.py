"""The ``peephole-lstm`` command (also ``python -m peephole_lstm``): LightningCLI over
:class:`PeepholeLSTMRegressor` and :class:`SeriesDataModule`.

    peephole-lstm fit --config configs/default.yaml        # train, test, forecast the future
    peephole-lstm predict --config configs/default.yaml --ckpt_path runs/co2/version_1/checkpoints/best.ckpt

Every ``fit`` writes to a directory of its own, ``<default_root_dir>/<data>/version_<k>``
(``--run_dir`` names one), and prints it: checkpoints, the metrics CSV, the per-series test
metrics and the forecast. ``fit --ckpt_path last`` resumes in the latest one (its metrics.csv
keeps the rows logged before the kill); ``predict``/``test``/``validate`` with a run's
checkpoint log into ``<run>/<subcommand>/``, leaving fit's record alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import warnings
from typing import Optional

import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from .conformal import LEVELS, level_name
from .datamodule import SeriesDataError, SeriesDataModule, SeriesDataWarning
from .regressor import PeepholeLSTMRegressor

__all__ = ["ForecastWriter", "PeepholeLSTMCLI", "main"]


_RUN_DIR_ENV = "_PEEPHOLE_LSTM_RUN_DIR"  # internal: rank 0's run directory, for the other DDP processes


class CLIError(ValueError):
    """A command that cannot do what it was asked; its message is one line for the user."""


def decimals(values: np.ndarray, most: int = 6) -> Optional[int]:
    """The decimal places the numbers ``values`` are written with (0 .. ``most``; the first
    100,000 looked at), or None when they have more (measurements stored as floats)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)][:100_000]
    for d in range(most + 1):
        scaled = v * 10.0**d
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-9 * np.maximum(1.0, np.abs(scaled))):
            return d
    return None


def _sig7(v: np.ndarray) -> np.ndarray:
    """``v`` rounded to 7 significant digits (NaN and inf as they are)."""
    finite = np.isfinite(v) & (v != 0)
    digits = np.zeros(v.shape, dtype=np.int64)
    digits[finite] = 6 - np.floor(np.log10(np.abs(v[finite]))).astype(np.int64)
    out = v.copy()
    for d in np.unique(digits[finite]):  # one rounding per decimal exponent, not per number
        sel = finite & (digits == d)
        out[sel] = np.round(v[sel], int(d))
    return out


class ForecastWriter(BasePredictionWriter):
    """Writes ``predict``'s forecasts (original units) to ``forecast.csv`` (or
    ``forecast.parquet``) and a plot to ``forecast.png``: for a handful of series, the recent
    history, the backtest on the test split and the forecast of the steps after the last row,
    each with its 80% and 95% intervals.

    The file has one row per series, forecast origin and step: ``kind`` is ``backtest``
    (``actual`` known) or ``future`` (``actual`` empty); ``lo_80``/``hi_80`` and
    ``lo_95``/``hi_95`` bound the intervals (one pair per level of the model's
    ``interval_levels``); ``naive`` and ``snaive`` are the last value and the seasonal naive
    forecast. Numbers carry one decimal more than the data's target (integer counts: one
    decimal, so a forecast of 0.4 units stays 0.4), or 7 significant digits where the data
    has more than 6 decimals.

    Args:
        output_dir: where to write; ``None``: the run directory (``fit``) or the directory of
            the checkpoint's run (``predict``).
        history: rows of history to plot before the test split and the future (per series).
        max_plots: series plotted in ``forecast.png`` (the file has every series): all of them
            up to this many, else the one with the most rows, the worst by test MASE (when the
            run tested) and a seeded random draw of the others; each panel's title says which.
        format: ``"csv"``, ``"parquet"`` or ``None``: Parquet when the data was read from a
            Parquet file or the forecast has more than a million rows (and pyarrow is
            installed), else CSV.
    """

    def __init__(self, output_dir: Optional[str] = None, history: int = 200, max_plots: int = 6,
                 format: Optional[str] = None) -> None:
        super().__init__(write_interval="epoch")
        if format not in (None, "csv", "parquet"):
            raise ValueError(f"forecast.format must be csv, parquet or null, got {format!r}")
        self.output_dir = output_dir
        self.history = history
        self.max_plots = max_plots
        self.format = format

    @staticmethod
    def forecast_frame(dm, cat: dict[str, torch.Tensor], level_names) -> pd.DataFrame:
        """The forecast rows of the windows in ``cat`` (``predict_step``'s outputs,
        concatenated), window after window, step after step."""
        end, sid = cat["end"].numpy(), cat["series"].numpy()  # (W,)
        W, h = cat["forecast"].shape
        starts = np.asarray(dm.starts)
        stop = starts[sid + 1]
        future = end >= stop  # (W,)
        rows = end[:, None] + np.arange(h)  # (W, h)
        keep = (future[:, None] | (rows < stop[:, None])).ravel()  # a backtest target past the data: none
        labels = np.asarray(dm.labels, dtype=object)
        time = labels[np.minimum(rows, len(labels) - 1)]  # (W, h)
        if future.any():
            time[future] = np.array([dm.future_labels(int(s)) for s in sid[future]], dtype=object).reshape(-1, h)
        names = [str(n) for n in dm.series_names]
        # series and kind as categoricals: codes, not a string per row (a dictionary column in Parquet)
        out = {
            "series": (pd.Categorical.from_codes(np.repeat(sid, h)[keep], categories=names)
                       if len(set(names)) == len(names) else np.asarray(names, dtype=object)[np.repeat(sid, h)[keep]]),
            "kind": pd.Categorical.from_codes(np.repeat(future.astype(np.int8), h)[keep],
                                              categories=["backtest", "future"]),
            "time": time.ravel()[keep],
            "origin": np.repeat(labels[end - 1], h)[keep],
            "step": np.tile(np.arange(1, h + 1), W)[keep],
        }
        places = decimals(dm.series)
        for key in ["forecast", *(f"{side}_{pct}" for pct in level_names for side in ("lo", "hi")), "actual", "naive",
                    "snaive"]:
            v = cat[key].double().numpy().ravel()[keep]
            out[key] = np.round(v, places + 1) if places is not None else _sig7(v)
        return pd.DataFrame(out)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        out_dir = self.output_dir or trainer.default_root_dir or "."
        os.makedirs(out_dir, exist_ok=True)
        cat = {k: torch.cat([p[k] for p in predictions]).cpu() for k in predictions[0]}
        dm = trainer.datamodule
        frame = self.forecast_frame(dm, cat, pl_module.level_names)
        fmt = self.format
        if fmt is None:
            source = str(getattr(dm.hparams, "csv_path", "") or "")
            fmt = "parquet" if (source.endswith(".parquet") or len(frame) > 1_000_000) and _has_pyarrow() else "csv"
        path = os.path.join(out_dir, f"forecast.{fmt}")
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        png_path = os.path.join(out_dir, "forecast.png")
        chosen = choose_series(dm, getattr(pl_module, "test_per_series", None), self.max_plots)
        plot_forecast(frame, dm, png_path, self.history, self.max_plots, pl_module.levels, chosen=chosen)
        print(f"wrote {path} and {png_path}")


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def choose_series(dm, per_series: Optional[pd.DataFrame], most: int, seed: int = 0) -> list[tuple[str, str]]:
    """The series ``forecast.png`` shows, each with why: every one up to ``most``; else the
    one with the most rows, the worst by test MASE (``per_series``, when the run tested) and a
    seeded random draw of the others."""
    names = [str(n) for n in dm.series_names]
    if len(names) <= most:
        return [(n, "") for n in names]
    chosen = [(names[int(np.argmax(np.diff(dm.starts)))], "most rows")]
    if per_series is not None and len(per_series) and "mase" in per_series:
        worst = str(per_series["series"].iloc[int(np.nanargmax(per_series["mase"].to_numpy()))])
        if worst != chosen[0][0]:
            chosen.append((worst, "worst test MASE"))
    taken = {n for n, _ in chosen}
    rest = [n for n in names if n not in taken]
    pick = np.random.default_rng(seed).choice(len(rest), size=max(0, most - len(chosen)), replace=False)
    return chosen + [(rest[int(k)], "random") for k in sorted(pick)]


def plot_forecast(frame, dm, path: str, history: int = 200, max_plots: int = 6, levels=LEVELS,
                  chosen: Optional[list[tuple[str, str]]] = None) -> None:
    """Per series (``chosen``: ``(name, why)`` pairs; default the first ``max_plots``): recent
    actuals, the one-step backtest and the future forecast, with bands: the backtest's widest
    interval, the future's two widest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = [level_name(lv) for lv in sorted(levels, reverse=True)[:2]]  # widest first
    if chosen is None:
        chosen = [(str(n), "") for n in list(dict.fromkeys(frame["series"]))[:max_plots]]
    series_col = frame["series"].astype(str)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(10, 3.2 * len(chosen)), squeeze=False)
    positions = {str(n): k for k, n in enumerate(dm.series_names)}
    for ax, (name, why) in zip(axes[:, 0], chosen):
        s = positions[name]
        start, stop = int(dm.starts[s]), int(dm.starts[s + 1])
        part = frame[series_col == name]
        back = part[(part["kind"] == "backtest") & (part["step"] == 1)]
        fut = part[part["kind"] == "future"]
        first = stop - len(back) if len(back) else stop
        lo = max(start, first - history)
        x_hist = range(lo - start, stop - start)
        ax.plot(x_hist, dm.series[lo:stop], color="black", linewidth=1.1, label="actual")
        if len(back):
            xb = range(first - start, first - start + len(back))
            ax.plot(xb, back["forecast"], color="tab:blue", linewidth=1.0, label="backtest (one step)")
            ax.fill_between(xb, back[f"lo_{bands[0]}"], back[f"hi_{bands[0]}"], color="tab:blue", alpha=0.12,
                            linewidth=0)
        if len(fut):
            xf = range(stop - start, stop - start + len(fut))
            ax.plot(xf, fut["forecast"], color="tab:red", linewidth=1.4, marker=".", label="future")
            for band, alpha in zip(bands, (0.12, 0.22)):
                ax.fill_between(xf, fut[f"lo_{band}"], fut[f"hi_{band}"], color="tab:red", alpha=alpha, linewidth=0,
                                label=f"{band}% interval")
        labels = dm.index[lo:stop] + (list(fut["time"]) if len(fut) else [])
        n = len(labels)
        ticks = list(range(0, n, max(1, n // 7)))
        ax.set_xticks([lo - start + t for t in ticks], [str(labels[t]) for t in ticks], rotation=15, fontsize=8)
        why = f" ({why})" if why else ""
        ax.set_title(f"{name}{why}: history, backtest on the test split and the next {len(fut)} step(s)", fontsize=10)
        ax.legend(fontsize=8, loc="best")  # where it covers the fewest points (a falling series too)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_series(frame: pd.DataFrame, path: str) -> None:
    """The per-series test metrics of a panel as two distributions instead of a panel per
    series: each series' MASE (its MAE over its in-sample seasonal naive MAE; 1 marked) and
    its test MSE over the seasonal naive forecast's on the same targets (below 1: better than
    seasonal naive), with the share of series below 1 in each title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    ratio = (frame["mse"] / frame["snaive_mse"].where(frame["snaive_mse"] > 0)).to_numpy(dtype=float)
    for ax, values, title in ((axes[0], frame["mase"].to_numpy(dtype=float), "test MASE"),
                              (axes[1], ratio, "test MSE / seasonal naive MSE")):
        v = values[np.isfinite(values)]
        if len(v) == 0:
            continue
        ax.hist(np.clip(v, 0, np.quantile(v, 0.99)), bins=min(60, max(10, len(v) // 20)), color="tab:blue")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_title(f"{title}: {len(v)} series, {np.mean(v < 1):.0%} below 1, median {np.median(v):.3g}",
                     fontsize=10)
        ax.set_ylabel("series")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _versions(root: str) -> list[int]:
    """The k of every ``version_<k>`` directory under ``root``."""
    names = os.listdir(root) if os.path.isdir(root) else []
    return [int(m.group(1)) for d in names if (m := re.fullmatch(r"version_(\d+)", d))]


def _next_version(root: str) -> str:
    return os.path.join(root, f"version_{max(_versions(root), default=0) + 1}")


def _latest_version(root: str) -> Optional[str]:
    taken = _versions(root)
    return os.path.join(root, f"version_{max(taken)}") if taken else None


class PeepholeLSTMCLI(LightningCLI):
    """LightningCLI with the data linked to the model, a directory per run, and ``fit``
    followed by ``test`` and the forecast."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_size", "model.input_size", apply_on="instantiate")
        parser.link_arguments("data.future_size", "model.future_size", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon")
        parser.add_lightning_class_args(ForecastWriter, "forecast")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="after fit, test the best (or last) weights and write the forecast",
        )
        parser.add_argument(
            "--run_dir", type=Optional[str], default=None,
            help="where this run writes (checkpoints, logs, forecast); default: "
                 "<trainer.default_root_dir>/<csv name or dataset>/version_<k>, the next free k "
                 "(fit --ckpt_path last: the latest)",
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning takes the model's options from a checkpoint (its weights fix them), over the
        command line's. ``interval_levels`` stays the command line's where it names other levels
        than the default: a checkpoint keeps its calibration residuals, so ``predict``/``test``
        can give intervals at levels it was not fitted with."""
        sub = self.config.get("subcommand")
        asked = self.config[sub].get("model", {}).get("interval_levels") if sub else None
        super()._parse_ckpt_path()
        if asked is not None and tuple(float(v) for v in asked) != LEVELS:
            self.config[sub].model.interval_levels = asked

    # -------------------------------------------------------------- run directory
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        trainer = cfg.trainer
        if not sys.stdout.isatty():
            trainer.enable_progress_bar = False  # no carriage-return bars in logs and files
        # SeriesDataModule shards the training windows across DDP processes itself and gives each
        # process every validation, test and forecast window (whole series in time order: the
        # rolling intervals and the per-series metrics need them), so Lightning adds no sampler
        trainer.use_distributed_sampler = False
        run_dir = cfg.get("run_dir")
        ckpt = cfg.get("ckpt_path")
        data = cfg.data
        name = os.path.splitext(os.path.basename(data.csv_path))[0] if data.csv_path else data.dataset
        root = os.path.join(trainer.default_root_dir or "runs", name)
        if self.subcommand != "fit" and ckpt is None and not trainer.get("fast_dev_run"):
            # an untrained network's forecast would be noise written as if it were one
            latest = _latest_version(root)
            hint = os.path.join(latest, "checkpoints", "best.ckpt") if latest else None
            raise CLIError(
                f"{self.subcommand} needs a trained model: pass --ckpt_path"
                + (f", e.g. --ckpt_path {hint} (the latest fit of this data)" if hint and os.path.isfile(hint) else
                   f"; there is no fit of this data under {root} yet: run peephole-lstm fit first")
            )
        if run_dir is None and os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(_RUN_DIR_ENV):
            run_dir = os.environ[_RUN_DIR_ENV]  # a DDP process Lightning started: rank 0's run directory
        if run_dir is None:
            if self.subcommand == "fit":
                resume = ckpt == "last" and _latest_version(root)
                run_dir = resume or _next_version(root)
            elif ckpt and os.path.basename(os.path.dirname(os.path.abspath(ckpt))) == "checkpoints":
                run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))  # the checkpoint's run
            else:
                run_dir = _latest_version(root) or _next_version(root)
        self.run_dir = run_dir
        os.environ[_RUN_DIR_ENV] = run_dir  # what the DDP processes Lightning starts inherit (main() removes it)
        trainer.default_root_dir = run_dir
        # "{run_dir}" in a logger's or callback's string argument (configs/default.yaml) is this
        # run's; predict, test and validate log into <run_dir>/<subcommand>, so that they leave
        # fit's metrics.csv, hparams.yaml and config.yaml as they are (a logger deletes the
        # metrics.csv it finds)
        log_dir = run_dir if self.subcommand == "fit" else os.path.join(run_dir, self.subcommand)
        loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
        for obj, where in [*((c, run_dir) for c in trainer.callbacks or []), *((lg, log_dir) for lg in loggers)]:
            args = getattr(obj, "init_args", None)
            for key, value in (vars(args).items() if args is not None else []):
                if isinstance(value, str) and "{run_dir}" in value:
                    setattr(args, key, value.replace("{run_dir}", where))
            if getattr(obj, "class_path", "").endswith("ModelCheckpoint") and args.get("dirpath") is None:
                args.dirpath = os.path.join(run_dir, "checkpoints")
        resuming = self.subcommand == "fit" and ckpt == "last" and os.path.isdir(run_dir)
        self._set_aside_metrics(run_dir if resuming else None)
        if resuming:
            # Lightning warns that the run's logs "will be deleted" and that its checkpoint
            # directory is not empty: neither holds for a resume, whose rows are merged back
            # (main() restores the filters when the command ends)
            warnings.filterwarnings("ignore", message=r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
        if cfg.forecast.output_dir is None:
            cfg.forecast.output_dir = run_dir
        elif "{run_dir}" in cfg.forecast.output_dir:
            cfg.forecast.output_dir = cfg.forecast.output_dir.replace("{run_dir}", run_dir)
        if self.subcommand in ("fit", "predict", "test", "validate"):
            print(f"run directory: {run_dir}")
        self._phase_start = self.clock()

    # ------------------------------------------------------------- checkpoints
    def _check_checkpoint_columns(self) -> None:
        """A checkpoint trained on other input columns than this data gives (other features, the
        calendar inputs on or off) would fail inside the weight loading with a tensor-size
        mismatch: the data module's check (:meth:`SeriesDataModule.check_columns`), with the data
        options of the fit, before anything runs or is written."""
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if ckpt == "last":
            ckpt = os.path.join(self.run_dir, "checkpoints", "last.ckpt")
        dm = self.datamodule
        if not ckpt or not os.path.isfile(ckpt) or not hasattr(dm, "check_columns"):
            return
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state.get("SeriesDataModule") is not None:
            dm.check_columns(state["SeriesDataModule"], state.get("datamodule_hyper_parameters"))

    clock = staticmethod(time.perf_counter)  # what the phase lines are timed with

    def _phase(self, name: str, what: str = "") -> None:
        """One line for a finished phase (load, fit, test, forecast) with its time, so a long
        run on a large panel can be followed in a log; the next phase starts now."""
        now = self.clock()
        start = getattr(self, "_phase_start", now)
        self._phase_start = now
        print(f"phase {name}: {what + ', ' if what else ''}{now - start:.1f} s", flush=True)

    def _loaded(self) -> None:
        dm = self.datamodule
        names, starts = getattr(dm, "series_names", None), getattr(dm, "starts", None)
        what = f"{len(names)} series, {int(starts[-1])} rows" if names is not None and starts is not None else ""
        self._phase("load", what)

    def before_fit(self) -> None:
        self._loaded()
        self._check_checkpoint_columns()

    def before_predict(self) -> None:
        self._loaded()
        self._check_checkpoint_columns()

    def after_predict(self) -> None:
        self._phase("forecast")

    def before_test(self) -> None:
        self._loaded()
        self._check_checkpoint_columns()

    def before_validate(self) -> None:
        self._check_checkpoint_columns()

    def after_fit(self) -> None:
        self._warn_if_budget_ran_out()
        try:
            if not self.config[self.subcommand].get("test_after_fit", True):
                return
            ckpt = self.trainer.checkpoint_callback
            ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
            self._phase("fit", f"{self.trainer.global_step} optimizer steps")
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)
            self._write_per_series()
            self._phase("test")
            self.trainer.predict(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path,
                                 return_predictions=False)
            self._phase("forecast")
        finally:
            self._merge_metrics()

    # ------------------------------------------------------- resumed metrics.csv
    _EARLIER = "metrics_before_resume.csv"

    def _set_aside_metrics(self, run_dir: Optional[str]) -> None:
        """Resuming in ``run_dir``: move its metrics.csv (the logger would delete it) into
        ``metrics_before_resume.csv`` (after the rows of an earlier resume that was killed),
        for :meth:`_merge_metrics` to put back in front of the resumed rows."""
        self._resumed_in = run_dir
        path = os.path.join(run_dir, "metrics.csv") if run_dir else None
        if path is None or not os.path.isfile(path) or rank_zero_only.rank != 0:
            return
        earlier = os.path.join(run_dir, self._EARLIER)
        frames = [pd.read_csv(f) for f in (earlier, path) if os.path.isfile(f) and os.path.getsize(f)]
        if frames:
            pd.concat(frames, ignore_index=True).to_csv(earlier + ".tmp", index=False)
            os.replace(earlier + ".tmp", earlier)
        os.remove(path)

    def _merge_metrics(self) -> None:
        """metrics.csv = the rows logged before the resume (up to the step it resumed from)
        followed by the resumed run's."""
        run_dir = self._resumed_in
        if run_dir is None or rank_zero_only.rank != 0:
            return
        earlier, path = os.path.join(run_dir, self._EARLIER), os.path.join(run_dir, "metrics.csv")
        if not os.path.isfile(earlier):
            return
        new = pd.read_csv(path) if os.path.isfile(path) and os.path.getsize(path) else pd.DataFrame()
        old = pd.read_csv(earlier)
        if "step" in new and "step" in old and len(new):
            old = old[old["step"] < new["step"].min()]  # rows after the checkpoint were undone
        merged = pd.concat([old, new], ignore_index=True)
        merged[sorted(merged.columns)].to_csv(path + ".tmp", index=False)
        os.replace(path + ".tmp", path)
        os.remove(earlier)

    def after_test(self) -> None:
        self._write_per_series()
        self._phase("test")

    def _write_per_series(self) -> None:
        frame = getattr(self.model, "test_per_series", None)
        if frame is None or not self.trainer.is_global_zero:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        path = os.path.join(self.run_dir, "metrics_per_series.csv")
        frame.to_csv(path, index=False)
        print(f"per-series test metrics: {path}")
        if len(frame) > 1:
            png = os.path.join(self.run_dir, "metrics_per_series.png")
            plot_per_series(frame, png)
            print(f"their distribution: {png}")

    def _warn_if_budget_ran_out(self) -> None:
        """Say so when the step/epoch budget, not early stopping, ended training."""
        from lightning.pytorch.callbacks import EarlyStopping

        t = self.trainer
        stoppers = [cb for cb in t.callbacks if isinstance(cb, EarlyStopping)]
        if t.interrupted or any(cb.stopped_epoch > 0 for cb in stoppers):
            return
        limit = (f"max_steps={t.max_steps}" if t.max_steps and t.max_steps > 0 and t.global_step >= t.max_steps
                 else f"max_epochs={t.max_epochs}")
        waited = f" (early stopping's patience: {stoppers[0].patience} validations)" if stoppers else ""
        print(
            f"peephole-lstm: warning: training stopped at {limit} after {t.global_step} optimizer steps, before "
            f"early stopping{waited} ended it; the model may be undertrained: raise --trainer.max_steps "
            "(or max_epochs)",
            file=sys.stderr,
        )


def _no_tips(record: logging.LogRecord) -> bool:
    """Lightning's "💡 Tip: ... try installing litlogger / litmodels" lines: advertisements of
    cloud services, not about this run."""
    return not str(record.msg).startswith("💡 Tip:")


# A warning that neither the user nor this package can act on: Lightning's use of a torch
# pytree class that newer torch deprecates (printed on every fit and predict).
_DEPENDENCY_WARNINGS = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def main(args: Optional[list[str]] = None) -> None:
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    # catch_warnings: the command's warning display and the filters it adds end with it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPENDENCY_WARNINGS, category=FutureWarning)
        show = warnings.showwarning

        def show_data_warnings_as_one_line(message, category, *rest, **kwargs):
            if issubclass(category, SeriesDataWarning):
                print(f"peephole-lstm: warning: {message}", file=sys.stderr)
            else:
                show(message, category, *rest, **kwargs)

        warnings.showwarning = show_data_warnings_as_one_line
        rank_zero_log.addFilter(_no_tips)  # removed in the finally below, whatever happens
        try:
            PeepholeLSTMCLI(
                PeepholeLSTMRegressor,
                SeriesDataModule,
                seed_everything_default=42,
                save_config_kwargs={"overwrite": True},
                # No prefix matching: a misspelt key (--trainer.max_epoch) must be an error; and
                # errors are raised, so that main() reports them in one line, not under a usage wall.
                parser_kwargs={"allow_abbrev": False, "exit_on_error": False},
                args=args,
            )
        except (SeriesDataError, CLIError, argparse.ArgumentError) as exc:
            message = " ".join(str(exc).split())  # one line, whatever the parser wrapped
            print(f"peephole-lstm: error: {message} (see peephole-lstm --help)", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            rank_zero_log.removeFilter(_no_tips)
            if os.environ.get("LOCAL_RANK", "0") == "0":
                os.environ.pop(_RUN_DIR_ENV, None)


if __name__ == "__main__":  # pragma: no cover
    main()
