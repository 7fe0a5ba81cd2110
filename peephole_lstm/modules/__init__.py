"""The layer: ``nn.Module``\\ s that hold ``nn.LSTM``'s contract (parameters, shapes, hidden
state, packed input, TorchScript), and compute one call below, in :mod:`peephole_lstm.ops`."""

from .cell import PeepholeLSTMCell
from .lstm import PeepholeLSTM

__all__ = ["PeepholeLSTM", "PeepholeLSTMCell"]
