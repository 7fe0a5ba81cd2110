"""The forecasting application (needs ``pip install 'peephole-lstm[train]'``): one global
``PeepholeLSTM`` model over one or many series, trained with Lightning.

* :mod:`.csv_dialect`, :mod:`.time_axis` -- reading files: CSV dialects, time columns,
  seasons and calendars;
* :mod:`.datamodule` -- ``SeriesDataModule``: series read, cleaned, split, scaled and cut
  into windows; what the model needs from it is one :class:`~.datamodule.SeriesInfo`;
* :mod:`.network` -- ``PeepholeLSTMNet`` (the network, a plain ``nn.Module``) and the AR
  term's fit;
* :mod:`.regressor` -- ``PeepholeLSTMRegressor``, the ``LightningModule`` that trains it;
* :mod:`.conformal` -- the prediction intervals;
* :mod:`.cli` -- ``peephole-lstm fit|test|predict`` (``LightningCLI``).
"""

from .datamodule import SeriesDataModule
from .regressor import PeepholeLSTMRegressor

__all__ = ["PeepholeLSTMRegressor", "SeriesDataModule"]
