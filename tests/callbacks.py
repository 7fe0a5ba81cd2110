"""Callbacks used by the CLI tests (loaded by class path in a subprocess)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """SIGKILL the training process at (epoch, batch): a crash mid-training, no clean-up."""

    def __init__(self, epoch: int = 2, batch: int = 1) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
