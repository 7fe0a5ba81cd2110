"""Forecast quality on the embedded Mauna Loa CO2 series (test split, original units, ppm²).

Trains the default recipe (configs/default.yaml: scaling "last") and the article's recipe
(the same network, z-score on the raw level) with the same seed and budget, and prints
their test MSE next to the naive forecast's (tomorrow = today).

    python benchmarks/quality.py            # about a minute on 2 CPU cores
"""

import argparse
import os
import sys

import lightning as L
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from peephole_lstm import PeepholeLSTMRegressor, SeriesDataModule  # noqa: E402


def run(scaling: str, cfg: dict, seed: int, max_epochs: int) -> dict:
    L.seed_everything(seed, verbose=False)
    data = dict(cfg["data"], scaling=scaling)
    dm = SeriesDataModule(**data)
    model = PeepholeLSTMRegressor(input_size=dm.input_size, horizon=dm.hparams.horizon, **cfg["model"])
    ckpt = L.pytorch.callbacks.ModelCheckpoint(monitor="val_loss", save_top_k=1, dirpath=None)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ckpt], default_root_dir=os.path.join("runs", "quality", scaling),
    )
    trainer.fit(model, datamodule=dm)
    return trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--max_epochs", type=int, default=None, help="default: the config's")
    args = parser.parse_args()
    cfg = yaml.safe_load(open(args.config))
    epochs = args.max_epochs or cfg["trainer"]["max_epochs"]
    rows = []
    for seed in args.seeds:
        ours = run("last", cfg, seed, epochs)
        article = run("zscore", cfg, seed, epochs)
        rows.append((seed, ours["test_mse"], article["test_mse"], ours["test_naive_mse"], ours["test_mae"]))
    print(f"\nMauna Loa CO2, weekly, test split (last 15%), {epochs} epochs, config {os.path.basename(args.config)}")
    print("| seed | default recipe (scaling=last) MSE | article recipe (z-score) MSE | naive (last value) MSE |")
    print("|---:|---:|---:|---:|")
    for seed, mse, art, naive, _ in rows:
        print(f"| {seed} | {mse:.4f} | {art:.4f} | {naive:.4f} |")


if __name__ == "__main__":
    main()
