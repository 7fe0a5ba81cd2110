"""The ``peephole-lstm`` command (also ``python -m peephole_lstm``): LightningCLI over
:class:`PeepholeLSTMRegressor` and :class:`SeriesDataModule`.

    peephole-lstm fit --config configs/default.yaml        # train, then test the best checkpoint
    peephole-lstm predict --config configs/default.yaml --ckpt_path runs/default/checkpoints/best.ckpt
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningCLI

from .data import SeriesDataError, SeriesDataModule
from .model import PeepholeLSTMRegressor

__all__ = ["ForecastWriter", "PeepholeLSTMCLI", "main"]


class ForecastWriter(BasePredictionWriter):
    """Writes ``predict``'s forecasts (original units) to ``forecast.csv`` and a plot of
    forecast vs actual (and the naive forecast) to ``forecast.png``.

    Args:
        output_dir: where to write; ``None``: the trainer's log directory.
    """

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        import pandas as pd

        out_dir = self.output_dir or trainer.log_dir or "."
        os.makedirs(out_dir, exist_ok=True)
        cat = {k: torch.cat([p[k] for p in predictions]).cpu() for k in predictions[0]}
        dm = trainer.datamodule
        labels = dm.index if dm is not None else None
        rows = []
        for i, end in enumerate(cat["end"].tolist()):
            for step in range(cat["forecast"].shape[1]):
                row = end + step
                rows.append(
                    {
                        "time": labels[row] if labels is not None else row,
                        "origin": labels[end - 1] if labels is not None else end - 1,
                        "step": step + 1,
                        "forecast": float(cat["forecast"][i, step]),
                        "actual": float(cat["actual"][i, step]),
                        "naive": float(cat["naive"][i, step]),
                    }
                )
        frame = pd.DataFrame(rows)
        csv_path = os.path.join(out_dir, "forecast.csv")
        frame.to_csv(csv_path, index=False)
        png_path = os.path.join(out_dir, "forecast.png")
        plot_forecast(frame[frame["step"] == 1], png_path)
        print(f"wrote {csv_path} and {png_path}")


def plot_forecast(frame, path: str, title: str = "One-step forecast on the test split") -> None:
    """Actual vs forecast vs naive, in original units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    x = range(len(frame))
    ax.plot(x, frame["actual"], label="actual", color="black", linewidth=1.2)
    ax.plot(x, frame["forecast"], label="PeepholeLSTM", color="tab:blue", linewidth=1.0)
    ax.plot(x, frame["naive"], label="naive (last value)", color="tab:orange", linewidth=0.8, alpha=0.7)
    ticks = list(range(0, len(frame), max(1, len(frame) // 8)))
    ax.set_xticks(ticks, [str(frame["time"].iloc[i]) for i in ticks], rotation=20, fontsize=8)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class PeepholeLSTMCLI(LightningCLI):
    """LightningCLI with the data linked to the model and ``fit`` followed by ``test``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_size", "model.input_size", apply_on="instantiate")
        parser.link_arguments("data.horizon", "model.horizon")
        parser.add_lightning_class_args(ForecastWriter, "forecast")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True, help="after fit, run test on the best (or last) weights"
        )

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit", True):
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = "best" if ckpt is not None and getattr(ckpt, "best_model_path", "") else None
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path)


def main(args: Optional[list[str]] = None) -> None:
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
    except (SeriesDataError, argparse.ArgumentError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the parser wrapped
        print(f"peephole-lstm: error: {message} (see peephole-lstm --help)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
