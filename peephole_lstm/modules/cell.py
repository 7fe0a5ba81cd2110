"""PeepholeLSTMCell: one step of a peephole LSTM, a drop-in for ``torch.nn.LSTMCell``."""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init

from ..ops.functional import peephole_lstm_cell
from ._checks import check_cell_clip, check_peephole_args, peephole_shape

__all__ = ["PeepholeLSTMCell"]


class PeepholeLSTMCell(nn.Module):
    r"""A long short-term memory (LSTM) cell with peephole connections.

    .. math::

        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi} + w_{ci} \odot c) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf} + w_{cf} \odot c) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        c' = f \odot c + i \odot g \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho} + w_{co} \odot c') \\
        h' = o \odot \tanh(c') \\
        \end{array}

    where :math:`\sigma` is the sigmoid function and :math:`\odot` the Hadamard product.
    The output gate looks at the *new* cell state :math:`c'` (Gers & Schmidhuber 2000;
    Graves 2013), the input and forget gates at the previous one.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        bias: If ``False``, then the layer does not use bias weights `b_ih` and
            `b_hh`. Default: ``True``
        peephole: ``"diagonal"`` (default): vectors :math:`w_{c*}` of shape `(hidden_size)`
            as in TensorFlow, ONNX, Lasagne and CNTK; ``"full"``: matrices of shape
            `(hidden_size, hidden_size)` applied as :math:`W_{c*} c`; ``"none"``: no
            peepholes, i.e. exactly ``nn.LSTMCell``. Keyword-only.
        candidate_peephole: add a peephole to the candidate,
            :math:`g = \tanh(\dots + w_{cc} \odot c)`, a variant some articles write; it is
            not part of the Gers/Graves cell. Keyword-only. Default: ``False``
        cell_clip: clip :math:`c'` to ``[-cell_clip, cell_clip]`` before the output gate and
            the output see it, as TensorFlow's ``LSTMCell(cell_clip=...)``. Keyword-only.
            Default: ``None`` (no clip)

    Inputs: input, (h_0, c_0)
        - **input** of shape `(batch, input_size)` or `(input_size)`: tensor containing input features
        - **h_0** of shape `(batch, hidden_size)` or `(hidden_size)`: tensor containing the initial hidden state
        - **c_0** of shape `(batch, hidden_size)` or `(hidden_size)`: tensor containing the initial cell state

          If `(h_0, c_0)` is not provided, both **h_0** and **c_0** default to zero.

    Outputs: (h_1, c_1)
        - **h_1** of shape `(batch, hidden_size)` or `(hidden_size)`: tensor containing the next hidden state
        - **c_1** of shape `(batch, hidden_size)` or `(hidden_size)`: tensor containing the next cell state

    Attributes:
        weight_ih: the learnable input-hidden weights, of shape `(4*hidden_size, input_size)`
        weight_hh: the learnable hidden-hidden weights, of shape `(4*hidden_size, hidden_size)`
        bias_ih: the learnable input-hidden bias, of shape `(4*hidden_size)`
        bias_hh: the learnable hidden-hidden bias, of shape `(4*hidden_size)`
        weight_ci, weight_cf, weight_co: the peepholes of the input, forget and output
            gates, of shape `(hidden_size)` (``"diagonal"``) or `(hidden_size, hidden_size)`
            (``"full"``); absent with ``"none"``
        weight_cc: the candidate peephole (only with ``candidate_peephole=True``)

    .. note::
        All the weights and biases are initialized from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`
        where :math:`k = \frac{1}{\text{hidden\_size}}`, peepholes included.

    Examples::

        >>> rnn = PeepholeLSTMCell(10, 20)  # (input_size, hidden_size)
        >>> input = torch.randn(2, 3, 10)  # (time_steps, batch, input_size)
        >>> hx = torch.randn(3, 20)  # (batch, hidden_size)
        >>> cx = torch.randn(3, 20)
        >>> output = []
        >>> for i in range(input.size()[0]):
        ...     hx, cx = rnn(input[i], (hx, cx))
        ...     output.append(hx)
        >>> output = torch.stack(output, dim=0)
        >>> output.shape
        torch.Size([2, 3, 20])
    """

    __constants__ = ["input_size", "hidden_size", "bias", "peephole", "candidate_peephole", "cell_clip"]

    input_size: int
    hidden_size: int
    bias: bool
    peephole: str
    candidate_peephole: bool
    cell_clip: Optional[float]
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Optional[Tensor]
    bias_hh: Optional[Tensor]
    weight_ci: Optional[Tensor]
    weight_cf: Optional[Tensor]
    weight_co: Optional[Tensor]
    weight_cc: Optional[Tensor]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        peephole: str = "diagonal",
        candidate_peephole: bool = False,
        cell_clip: Optional[float] = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        check_peephole_args(peephole, candidate_peephole)
        self.cell_clip = check_cell_clip(cell_clip)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.peephole = peephole
        self.candidate_peephole = candidate_peephole
        self.weight_ih = nn.Parameter(torch.empty((4 * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = nn.Parameter(torch.empty((4 * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        shape = peephole_shape(peephole, hidden_size)
        for gate in ("ci", "cf", "co"):
            w = nn.Parameter(torch.empty(shape, **factory_kwargs)) if shape else None
            self.register_parameter(f"weight_{gate}", w)
        w_cc = nn.Parameter(torch.empty(shape, **factory_kwargs)) if candidate_peephole else None
        self.register_parameter("weight_cc", w_cc)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.peephole != "diagonal":
            s += ", peephole={peephole!r}"
        if self.candidate_peephole:
            s += ", candidate_peephole=True"
        if self.cell_clip is not None:
            s += ", cell_clip={cell_clip}"
        return s.format(**self.__dict__)

    def __setstate__(self, d):
        d.setdefault("cell_clip", None)  # pickled before cell_clip existed
        super().__setstate__(d)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(
                        f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead"
                    )
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = hx
        # The messages of nn.LSTMCell (raised there by the C++ kernel).
        if input.size(1) != self.input_size:
            raise RuntimeError(
                f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}"
            )
        for idx, state in enumerate((h, c)):
            if input.size(0) != state.size(0):
                raise RuntimeError(
                    f"Input batch size {input.size(0)} doesn't match hidden{idx} batch size {state.size(0)}"
                )
            if state.size(1) != self.hidden_size:
                raise RuntimeError(
                    f"hidden{idx} has inconsistent hidden_size: got {state.size(1)}, expected {self.hidden_size}"
                )
        if input.dtype != self.weight_ih.dtype:
            raise RuntimeError(
                f"LSTMCell input dtype ({input.dtype}) does not match weight dtype ({self.weight_ih.dtype}). "
                f"Convert input: input.to({self.weight_ih.dtype}), or convert model: model.to({input.dtype})"
            )
        gates_x = F.linear(input, self.weight_ih, self.bias_ih)  # (B, 4H)
        b_hh = self.bias_hh  # a local, so TorchScript refines the Optional
        if b_hh is not None:
            gates_x = gates_x + b_hh
        h1, c1 = peephole_lstm_cell(
            gates_x, h, c, self.weight_hh, None, self.weight_ci, self.weight_cf, self.weight_co, self.weight_cc,
            self.cell_clip,
        )
        if not is_batched:
            return h1.squeeze(0), c1.squeeze(0)
        return h1, c1
