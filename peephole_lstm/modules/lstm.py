"""PeepholeLSTM: a stacked, bidirectional, projected peephole LSTM with ``nn.LSTM``'s contract."""

import math
import numbers
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import init
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..ops import backend, onnx_export, projection, recurrence
from ..ops.functional import peephole_lstm_layer
from ._checks import check_cell_clip, check_peephole_args, peephole_shape

__all__ = ["PeepholeLSTM"]

# |c| above this in a peephole model: its gates are saturated for good (see _check_cell_growth)
_CELL_GROWTH_WARN = 1000.0

# The per-(layer, direction) weight slots, in the order of _flat_weights. Absent ones
# (no bias, no projection, no peepholes) are None.
_SLOTS = (
    "weight_ih",
    "weight_hh",
    "bias_ih",
    "bias_hh",
    "weight_hr",
    "weight_ci",
    "weight_cf",
    "weight_co",
    "weight_cc",
)


class PeepholeLSTM(nn.Module):
    r"""Apply a multi-layer long short-term memory (LSTM) RNN with peephole connections.

    A drop-in replacement for :class:`torch.nn.LSTM`: the same constructor, parameter names,
    inputs, outputs and errors, plus peephole weights. For each element in the input
    sequence, each layer computes:

    .. math::
        \begin{array}{ll} \\
            i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + w_{ci} \odot c_{t-1}) \\
            f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + w_{cf} \odot c_{t-1}) \\
            g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
            c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
            o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + w_{co} \odot c_t) \\
            h_t = o_t \odot \tanh(c_t) \\
        \end{array}

    where :math:`h_t` is the hidden state at time `t`, :math:`c_t` is the cell state at
    time `t`, :math:`x_t` is the input at time `t`, :math:`\sigma` is the sigmoid function
    and :math:`\odot` is the Hadamard product. The input and forget gates look at the
    previous cell state, the output gate at the new one (Gers & Schmidhuber 2000;
    Graves 2013). This is the peephole LSTM of TensorFlow's
    ``LSTMCell(use_peepholes=True)``, ONNX's ``LSTM`` (input ``P``), Lasagne and CNTK.

    With ``peephole="full"`` the peepholes are matrices, :math:`W_{c*} c`; with
    ``peephole="none"`` there are none and the module computes exactly ``nn.LSTM``.
    ``candidate_peephole=True`` adds :math:`w_{cc} \odot c_{t-1}` inside :math:`g_t`, a
    variant some articles write (not the Gers/Graves cell).

    In a multilayer LSTM, the input :math:`x^{(l)}_t` of the :math:`l` -th layer
    (:math:`l \ge 2`) is the hidden state :math:`h^{(l-1)}_t` of the previous layer multiplied by
    dropout :math:`\delta^{(l-1)}_t` where each :math:`\delta^{(l-1)}_t` is a Bernoulli random
    variable which is :math:`0` with probability :attr:`dropout`.

    If ``proj_size > 0`` is specified, the output :math:`h_t` is projected,
    :math:`h_t = W_{hr} h_t`, exactly as in ``nn.LSTM``; the peepholes still see the cell
    state, of size ``hidden_size``.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        num_layers: Number of recurrent layers. Default: 1
        bias: If ``False``, then the layer does not use bias weights `b_ih` and `b_hh`.
            Default: ``True``
        batch_first: If ``True``, then the input and output tensors are provided
            as `(batch, seq, feature)` instead of `(seq, batch, feature)`. Default: ``False``
        dropout: If non-zero, introduces a `Dropout` layer on the outputs of each
            LSTM layer except the last layer, with dropout probability equal to
            :attr:`dropout`. Default: 0
        bidirectional: If ``True``, becomes a bidirectional LSTM. Default: ``False``
        proj_size: If ``> 0``, will use LSTM with projections of corresponding size. Default: 0
        peephole: ``"diagonal"`` (default), ``"full"`` or ``"none"``. Keyword-only.
        candidate_peephole: add the candidate peephole :math:`w_{cc}`. Keyword-only.
            Default: ``False``
        cell_clip: clip :math:`c_t` to ``[-cell_clip, cell_clip]`` before the output gate and
            :math:`h_t` see it (TensorFlow's ``LSTMCell(cell_clip=...)``). Keyword-only.
            Default: ``None`` (no clip). See the note on long stateful runs below.

    Inputs: input, (h_0, c_0)
        * **input**: tensor of shape :math:`(L, H_{in})` for unbatched input,
          :math:`(L, N, H_{in})` when ``batch_first=False`` or
          :math:`(N, L, H_{in})` when ``batch_first=True``, or a
          :func:`torch.nn.utils.rnn.pack_padded_sequence` / ``pack_sequence`` of it.
        * **h_0**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` for unbatched input or
          :math:`(D * \text{num\_layers}, N, H_{out})`. Defaults to zeros.
        * **c_0**: tensor of shape :math:`(D * \text{num\_layers}, H_{cell})` for unbatched input or
          :math:`(D * \text{num\_layers}, N, H_{cell})`. Defaults to zeros.

        where:

        .. math::
            \begin{aligned}
                N ={} & \text{batch size} \\
                L ={} & \text{sequence length} \\
                D ={} & 2 \text{ if bidirectional=True otherwise } 1 \\
                H_{in} ={} & \text{input\_size} \\
                H_{cell} ={} & \text{hidden\_size} \\
                H_{out} ={} & \text{proj\_size if } \text{proj\_size}>0 \text{ otherwise hidden\_size} \\
            \end{aligned}

    Outputs: output, (h_n, c_n)
        * **output**: tensor of shape :math:`(L, D * H_{out})` for unbatched input,
          :math:`(L, N, D * H_{out})` when ``batch_first=False`` or
          :math:`(N, L, D * H_{out})` when ``batch_first=True``: the output features
          `(h_t)` of the last layer, for each `t`. A packed sequence in gives a packed
          sequence out.
        * **h_n**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` for unbatched input or
          :math:`(D * \text{num\_layers}, N, H_{out})`: the final hidden state of each layer
          and direction.
        * **c_n**: tensor of shape :math:`(D * \text{num\_layers}, H_{cell})` for unbatched input or
          :math:`(D * \text{num\_layers}, N, H_{cell})`: the final cell state.

    Attributes:
        weight_ih_l[k], weight_hh_l[k], bias_ih_l[k], bias_hh_l[k], weight_hr_l[k]:
            as in :class:`torch.nn.LSTM` (gate order i, f, g, o; same shapes).
        weight_ci_l[k], weight_cf_l[k], weight_co_l[k]: the peepholes of the input,
            forget and output gates of the :math:`\text{k}^{th}` layer, of shape
            `(hidden_size)` (``"diagonal"``) or `(hidden_size, hidden_size)` (``"full"``).
        weight_cc_l[k]: the candidate peephole, with ``candidate_peephole=True``.
        *_reverse: the same parameters of the reverse direction of a bidirectional layer,
            as in ``nn.LSTM``.

    .. note::
        All the weights and biases are initialized from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`
        where :math:`k = \frac{1}{\text{hidden\_size}}`, peepholes included.

    .. note::
        Implementation: by default each layer's time loop is one fused op with a hand-written
        backward (C++ on CPU, compiled on first use; vectorised PyTorch elsewhere), for every
        peephole form and packed input (step t runs on its ``batch_sizes[t]`` sequences only).
        TorchScript uses the reference autograd loop. See :func:`peephole_lstm.set_backend`
        and ``PEEPHOLE_LSTM_BACKEND``.

    Examples::

        >>> rnn = PeepholeLSTM(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> c0 = torch.randn(2, 3, 20)
        >>> output, (hn, cn) = rnn(input, (h0, c0))
        >>> output.shape
        torch.Size([5, 3, 20])
    """

    __constants__ = [
        "input_size",
        "hidden_size",
        "num_layers",
        "bias",
        "batch_first",
        "dropout",
        "bidirectional",
        "proj_size",
        "peephole",
        "candidate_peephole",
        "cell_clip",
    ]
    __jit_unused_properties__ = ["all_weights"]

    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    proj_size: int
    peephole: str
    candidate_peephole: bool
    cell_clip: Optional[float]
    _flat_weights: list[Optional[Tensor]]
    _flat_weights_names: list[str]
    _all_weights: list[list[str]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        peephole: str = "diagonal",
        candidate_peephole: bool = False,
        cell_clip: Optional[float] = None,
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        # Validation and messages as in torch.nn.RNNBase.__init__.
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError(
                "dropout should be a number in range [0, 1] "
                "representing the probability of an element being "
                "zeroed"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last "
                "recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and "
                f"num_layers={num_layers}",
                stacklevel=2,
            )
        if not isinstance(bias, bool):
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        if not isinstance(input_size, int):
            raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
        if input_size <= 0:
            raise ValueError("input_size must be greater than zero")
        if not isinstance(hidden_size, int):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if not isinstance(num_layers, int):
            # nn.LSTM fails later with "'float' object cannot be interpreted as an integer".
            raise TypeError(f"'{type(num_layers).__name__}' object cannot be interpreted as an integer")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if not isinstance(proj_size, int):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__}")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        check_peephole_args(peephole, candidate_peephole)
        cell_clip = check_cell_clip(cell_clip)

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.peephole = peephole
        self.candidate_peephole = candidate_peephole
        self.cell_clip = cell_clip

        num_directions = 2 if bidirectional else 1
        real_hidden_size = proj_size if proj_size > 0 else hidden_size
        gate_size = 4 * hidden_size
        p_shape = peephole_shape(peephole, hidden_size)
        self._flat_weights_names = []
        self._all_weights = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                shapes: dict[str, Optional[tuple[int, ...]]] = {
                    "weight_ih": (gate_size, layer_input_size),
                    "weight_hh": (gate_size, real_hidden_size),
                    "bias_ih": (gate_size,) if bias else None,
                    "bias_hh": (gate_size,) if bias else None,
                    "weight_hr": (proj_size, hidden_size) if proj_size > 0 else None,
                    "weight_ci": p_shape,
                    "weight_cf": p_shape,
                    "weight_co": p_shape,
                    "weight_cc": p_shape if candidate_peephole else None,
                }
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for slot in _SLOTS:
                    name = f"{slot}_l{layer}{suffix}"
                    self._flat_weights_names.append(name)
                    shape = shapes[slot]
                    if shape is not None:
                        setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                        names.append(name)
                self._all_weights.append(names)
        self._init_flat_weights()
        self.reset_parameters()

    # ------------------------------------------------------------------ weights
    def _init_flat_weights(self) -> None:
        # For TorchScript, which cannot getattr by a computed name; eager rebuilds it on
        # every call (see _weights) so torch.func.functional_call and .to() just work.
        self._flat_weights = [getattr(self, n, None) for n in self._flat_weights_names]

    def _apply(self, fn, recurse=True):
        ret = super()._apply(fn, recurse)
        self._init_flat_weights()
        return ret

    def __setattr__(self, attr, value) -> None:
        if "_flat_weights" in self.__dict__ and attr in self._flat_weights_names:
            # keep self._flat_weights up to date if you do self.weight = ...
            self._flat_weights[self._flat_weights_names.index(attr)] = value
        super().__setattr__(attr, value)

    @torch.jit.unused
    def _current_weights(self) -> list[Optional[Tensor]]:
        return [getattr(self, n, None) for n in self._flat_weights_names]

    def _weights(self) -> list[Optional[Tensor]]:
        if torch.jit.is_scripting():
            return self._flat_weights
        return self._current_weights()

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, weight) for weight in weights] for weights in self._all_weights]

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def flatten_parameters(self) -> None:
        """No-op, for code written against ``nn.LSTM`` (there is no cuDNN weight buffer)."""

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
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
        self._init_flat_weights()

    @classmethod
    def from_lstm(
        cls,
        lstm: nn.LSTM,
        *,
        peephole: str = "diagonal",
        candidate_peephole: bool = False,
        cell_clip: Optional[float] = None,
    ) -> "PeepholeLSTM":
        """A ``PeepholeLSTM`` with ``lstm``'s configuration, device, dtype and weights, and
        zero peepholes: its outputs equal ``lstm``'s until the peepholes are trained."""
        if not isinstance(lstm, nn.LSTM):
            raise TypeError(f"from_lstm expects a torch.nn.LSTM, got {type(lstm).__name__}")
        w = lstm.weight_ih_l0
        model = cls(
            lstm.input_size,
            lstm.hidden_size,
            lstm.num_layers,
            lstm.bias,
            lstm.batch_first,
            lstm.dropout,
            lstm.bidirectional,
            lstm.proj_size,
            device=w.device,
            dtype=w.dtype,
            peephole=peephole,
            candidate_peephole=candidate_peephole,
            cell_clip=cell_clip,
        )
        missing, _ = model.load_state_dict(lstm.state_dict(), strict=False)  # all of nn.LSTM's names exist here
        with torch.no_grad():
            for name in missing:
                getattr(model, name).zero_()
        model.train(lstm.training)
        return model

    @classmethod
    def _from_state(cls, kwargs: dict, state: dict[str, Tensor], dtype: torch.dtype) -> "PeepholeLSTM":
        model = cls(**kwargs, dtype=dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        return model.eval()

    @classmethod
    def from_onnx(
        cls, model_or_path, *, dtype: torch.dtype = torch.float32, batch_first: Optional[bool] = None
    ) -> "PeepholeLSTM":
        """A ``PeepholeLSTM`` holding the weights of the ``LSTM`` node(s) of an ONNX model (path,
        bytes, file or ``ModelProto``), peepholes ``P`` included (needs ``onnx``); also
        ``peephole_lstm.interop.from_onnx``.

        Consecutive ``LSTM`` nodes become the layers (in graph order); ``P`` present gives
        ``peephole="diagonal"``, absent ``"none"``. ``layout=1`` gives ``batch_first=True``.
        Refused with a clear error: non-default activations, ``clip``, ``input_forget=1``, and
        weights that are not initializers. ``batch_first=None`` takes it from a model written by
        ``export_onnx``, else from the first node's ``layout``.
        """
        from ..interop.readers import read_onnx

        return cls._from_state(*read_onnx(model_or_path, batch_first=batch_first), dtype)

    @classmethod
    def from_tensorflow(
        cls, kernel, bias, w_i_diag, w_f_diag, w_o_diag, forget_bias: float = 1.0, cell_clip=None, *,
        batch_first: bool = False, dtype: torch.dtype = torch.float32,
    ) -> "PeepholeLSTM":
        """A one-layer ``PeepholeLSTM`` equal to TensorFlow v1
        ``tf.compat.v1.nn.rnn_cell.LSTMCell(num_units, use_peepholes=True)``, from its weights given
        as arrays; also ``peephole_lstm.interop.from_tensorflow``.

        TF computes ``[i, j, f, o] = concat([x, h]) @ kernel + bias`` (kernel ``(I + H, 4H)``),
        ``c = σ(f + forget_bias + w_f_diag c_prev) c_prev + σ(i + w_i_diag c_prev) tanh(j)``,
        ``c = clip(c, -cell_clip, cell_clip)`` when ``cell_clip`` is set,
        ``h = σ(o + w_o_diag c) tanh(c)``: our cell with ``g = j``, ``forget_bias`` folded into
        the forget gate's bias and the same ``cell_clip``. ``num_proj`` cells are not supported.
        """
        from ..interop.readers import read_tensorflow

        kwargs, state = read_tensorflow(kernel, bias, w_i_diag, w_f_diag, w_o_diag, forget_bias, cell_clip,
                                        batch_first=batch_first)
        return cls._from_state(kwargs, state, dtype)

    # ------------------------------------------------------------------ forward
    def _check_hidden(self, hx: tuple[Tensor, Tensor], mini_batch: int) -> None:
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        expected_h = (self.num_layers * num_directions, mini_batch, real_hidden_size)
        expected_c = (self.num_layers * num_directions, mini_batch, self.hidden_size)
        if hx[0].size() != expected_h:
            raise RuntimeError(f"Expected hidden[0] size {expected_h}, got {list(hx[0].size())}")
        if hx[1].size() != expected_c:
            raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(hx[1].size())}")

    def _check_input(self, input: Tensor, expected_dim: int, weight: Tensor) -> None:
        if not torch.jit.is_scripting():
            if input.dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
                raise ValueError(
                    f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
                    f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"
                )
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _check_state_dtype(self, hx: tuple[Tensor, Tensor], input: Tensor) -> None:
        for idx, state in enumerate(hx):
            if state.dtype != input.dtype:
                raise RuntimeError(
                    f"hidden[{idx}] dtype ({state.dtype}) does not match input dtype ({input.dtype})"
                )
            if state.device != input.device:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor at "
                    f"{input.device} and hidden tensor at {state.device}"
                )

    def _zero_state(self, input: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        num_directions = 2 if self.bidirectional else 1
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        h = torch.zeros(
            self.num_layers * num_directions, batch, real_hidden_size, dtype=input.dtype, device=input.device
        )
        c = torch.zeros(
            self.num_layers * num_directions, batch, self.hidden_size, dtype=input.dtype, device=input.device
        )
        return h, c

    def _use_fused(self) -> bool:
        return backend.get_backend() != "reference"

    @torch.jit.unused
    def _fused_layer(
        self,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        w: list[Optional[Tensor]],
        reverse: bool,
        batch_sizes: Optional[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh, w_hr, w_ci, w_cf, w_co, w_cc = w
        assert w_ih is not None and w_hh is not None
        bias = b_ih + b_hh if b_ih is not None and b_hh is not None else None  # added in the op
        # Save the activations for a backward only when one can follow.
        save = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, w_ih, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc)
        )
        if not save and projection.projects_in_kernel(x, w_ih, h0):
            # large inference steps: the C++ kernel projects each step's rows itself
            return recurrence.recurrence_from_input(
                x, w_ih, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, w_cc, batch_sizes, reverse, self.cell_clip
            )
        # (T, B, 4H), or packed (N, 4H): one GEMM for every step; consumed by the op right away
        xw = projection.input_projection(x, w_ih, scratch=True)
        out, h_n, c_n, _, _ = recurrence.recurrence(
            xw, h0, c0, w_hh, bias, w_hr, w_ci, w_cf, w_co, reverse, save, w_cc, batch_sizes, self.cell_clip
        )
        return out, h_n, c_n

    def _layer(
        self,
        x: Tensor,
        h0: Tensor,
        c0: Tensor,
        weights: list[Optional[Tensor]],
        layer: int,
        use_fused: bool,
        lengths: Optional[Tensor],
        batch_sizes: Optional[Tensor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer, every direction: ``x`` (T, B, H_in) or packed (N, H_in), the states of all
        layers (L*D, B, *). Returns ``(out (T, B, D*H_out), h (D, B, H_out), c (D, B, H))``."""
        num_directions = 2 if self.bidirectional else 1
        outs: list[Tensor] = []
        hs: list[Tensor] = []
        cs: list[Tensor] = []
        for direction in range(num_directions):
            idx = layer * num_directions + direction
            w = weights[idx * 9 : (idx + 1) * 9]  # the 9 _SLOTS (TorchScript takes no global)
            if use_fused:
                out, h, c = self._fused_layer(x, h0[idx], c0[idx], w, direction == 1, batch_sizes)
            else:
                w_ih, w_hh = w[0], w[1]
                assert w_ih is not None and w_hh is not None
                out, h, c = peephole_lstm_layer(
                    x, h0[idx], c0[idx], w_ih, w_hh, w[2], w[3], w[4], w[5], w[6], w[7], w[8],
                    direction == 1, lengths, self.cell_clip,
                )
            outs.append(out)
            hs.append(h)
            cs.append(c)
        out = outs[0] if num_directions == 1 else torch.cat(outs, -1)  # (T, B, D*H_out)
        return out, torch.stack(hs, 0), torch.stack(cs, 0)

    def _run(
        self, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor], batch_sizes: Optional[Tensor] = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All layers over a time-major batch ``x`` (T, B, H_in), padded with per-sequence
        ``lengths`` (reference loop), or packed (N, H_in) with ``batch_sizes`` (fused op);
        states (L*D, B, *)."""
        weights = self._weights()
        use_fused = False
        if not torch.jit.is_scripting():
            use_fused = self._use_fused()
            if batch_sizes is None and lengths is None and onnx_export.exporting():
                return onnx_export.run(self, x, h0, c0, weights)  # LSTM nodes with P, or a loop over time
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for layer in range(self.num_layers):
            x, h, c = self._layer(x, h0, c0, weights, layer, use_fused, lengths, batch_sizes)
            h_n.append(h)
            c_n.append(c)
            if self.dropout > 0.0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.cat(h_n, 0), torch.cat(c_n, 0)

    @torch.jit.unused
    def _check_cell_growth(self, c_n: Tensor) -> None:
        """Warn once when the cell state of a peephole model has grown past 1000 in magnitude.

        With peepholes, a large cell state holds the input and forget gates open (w ⊙ c
        saturates them), so in a model whose state is carried across batches the cell can keep
        growing by up to 1 per step: measured in a stateful word LM (benchmarks/stateful_lm.py),
        |c| reached 10^4 and validation perplexity was 1.39x nn.LSTM's; ``cell_clip=10`` brought
        it to 1.07x. Checked on CPU only (elsewhere reading the value would synchronise)."""
        if (
            self.__dict__.get("_growth_warned", False)
            or self.peephole == "none"
            or self.cell_clip is not None
            or c_n.device.type != "cpu"
            or c_n.numel() == 0
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
            or onnx_export.exporting()
        ):
            return
        peak = float(c_n.detach().abs().max())
        if peak > _CELL_GROWTH_WARN:
            self.__dict__["_growth_warned"] = True
            warnings.warn(
                f"PeepholeLSTM: the cell state reached |c| = {peak:.0f}. With peepholes a large cell state "
                "holds the input and forget gates open, so in a model that carries its state across batches "
                "the cell can grow without bound and training suffers; PeepholeLSTM(..., cell_clip=10) bounds "
                "it (see the README, 'Long stateful runs').",
                RuntimeWarning,
                stacklevel=3,
            )

    @torch.jit.unused
    def _forward_packed(
        self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]]
    ) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._check_input(data, 2, self._current_weights()[0])
        max_batch_size = int(batch_sizes[0])
        if hx is None:
            hx = self._zero_state(data, max_batch_size)
        else:
            self._check_hidden(hx, max_batch_size)
            self._check_state_dtype(hx, data)
            if sorted_indices is not None:
                # Each batch of the hidden state should match the input sequence that
                # the user believes he/she is passing in.
                hx = (hx[0].index_select(1, sorted_indices), hx[1].index_select(1, sorted_indices))
        if self._use_fused():
            # The fused op runs step t on its first batch_sizes[t] sequences, in place in the packed rows.
            out_data, h, c = self._run(data, hx[0], hx[1], None, batch_sizes)  # (N, D*H_out)
        else:
            # Pad in sorted order (longest first), run with per-sequence lengths, repack.
            padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))  # (T, B, H_in)
            out, h, c = self._run(padded, hx[0], hx[1], lengths)
            out_data = pack_padded_sequence(out, lengths, enforce_sorted=True).data
        output = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
        if unsorted_indices is not None:
            h, c = h.index_select(1, unsorted_indices), c.index_select(1, unsorted_indices)
        return output, (h, c)

    def forward(
        self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if not torch.jit.is_scripting():
            if isinstance(input, PackedSequence):
                return self._forward_packed(input, hx)  # type: ignore[return-value]
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        first_weight = self._weights()[0]
        assert first_weight is not None
        self._check_input(input, 3, first_weight)
        max_batch_size = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            hx = self._zero_state(input, max_batch_size)
        else:
            if is_batched:
                if hx[0].dim() != 3 or hx[1].dim() != 3:
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should "
                        f"also be 3-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
            else:
                if hx[0].dim() != 2 or hx[1].dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should "
                        f"also be 2-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                    )
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            self._check_hidden(hx, max_batch_size)
            self._check_state_dtype(hx, input)
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, H_in)
        if x.size(0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        out, h_n, c_n = self._run(x, hx[0], hx[1], None)  # (T, B, D*H_out)
        if not torch.jit.is_scripting():
            self._check_cell_growth(c_n)
        if self.batch_first:
            out = out.transpose(0, 1)  # (B, T, D*H_out)
        if not is_batched:
            out = out.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1)
        return out, (h_n, c_n)
