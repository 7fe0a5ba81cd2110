"""The forecasting network, a plain ``nn.Module`` free of Lightning: ``PeepholeLSTMNet`` (the
LSTM, the linear autoregressive term, series embeddings, known-ahead inputs) and the AR
term's closed-form fit (:func:`ridge_ar`) and size (:func:`auto_lags`)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..modules import PeepholeLSTM

__all__ = ["PeepholeLSTMNet", "auto_lags", "ridge_ar", "ridge_ar_groups"]


RIDGES = tuple(10.0**k for k in range(-3, 4))  # the penalties ridge_ar chooses from


def auto_lags(season: int, window: int, n_train: int, horizon: int = 1) -> int:
    """``ar_window="auto"`` for one series: ``2 season + 1`` lags (a seasonal ARIMA's reach: the
    last season and the one before it, so a seasonal difference and its change; 3 without a
    season), but no more than half the series' training rows unless the window holds them
    anyway (so a short series keeps most of its training windows). A ``horizon`` longer than
    the season needs the same two seasons before the last observed value of the farthest
    step's phase: ``(ceil(horizon / season) + 1) season + 1`` lags, taken where the training
    rows give at least two windows per lag (else the one-season rule's)."""
    want = 2 * season + 1 if season > 1 else 3
    lags = min(want, max(min(window, want), n_train // 2))
    if 1 < season < horizon:
        far = (math.ceil(horizon / season) + 1) * season + 1
        if n_train - max(window, far) - horizon + 1 >= 2 * far:  # two training windows per lag
            lags = max(lags, far)
    return lags


def ridge_ar(lags: Tensor, target: Tensor, ridges: tuple[float, ...] = RIDGES) -> tuple[Tensor, Tensor, float]:
    """Ridge regression of ``target`` ``(N, horizon)`` on ``lags`` ``(N, p)``, in closed form
    (float64, one SVD), the penalty chosen from ``ridges`` by leave-one-out squared error, which
    the hat matrix gives without refitting. The intercept is not penalised; rows with a NaN are
    left out. Returns ``(weight (horizon, p), bias (horizon,), penalty)``."""
    if lags.dim() != 2 or target.dim() != 2 or len(target) != len(lags):
        raise ValueError(f"ridge_ar expects lags (N, p) and target (N, horizon), got {tuple(lags.shape)} and "
                         f"{tuple(target.shape)}")
    X, Y = lags.double(), target.double()
    keep = torch.isfinite(X).all(1) & torch.isfinite(Y).all(1)
    X, Y = X[keep], Y[keep]
    n = len(X)
    if n < 3:
        raise ValueError(f"the autoregressive term needs at least 3 complete training windows, got {n}")
    mx, my = X.mean(0), Y.mean(0)  # centred: the intercept is fitted apart, unpenalised
    U, S, Vh = torch.linalg.svd(X - mx, full_matrices=False)  # (n, r), (r,), (r, p)
    UtY = U.T @ (Y - my)  # (r, horizon)
    loo = []
    for lam in ridges:
        f = S**2 / (S**2 + lam)  # shrinkage of each singular direction
        resid = (Y - my) - U @ (f[:, None] * UtY)  # (n, horizon)
        lev = (U**2 * f).sum(1) + 1.0 / n  # the hat matrix's diagonal, intercept included
        loo.append((resid / (1 - lev).clamp(min=1e-9)[:, None]).pow(2).mean().item())
    lam = ridges[min(range(len(ridges)), key=loo.__getitem__)]
    W = Vh.T @ ((S / (S**2 + lam))[:, None] * UtY)  # (p, horizon)
    return W.T, my - mx @ W, lam


def ridge_ar_groups(X: Tensor, Y: Tensor, keep: Tensor, ridges: tuple[float, ...] = RIDGES
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`ridge_ar` for ``G`` independent groups at once (one batched SVD): group ``g``
    regresses ``Y[g]`` ``(n, horizon)`` on ``X[g]`` ``(n, q)`` over the rows where ``keep[g]``
    ``(n,)`` is true (at least 3; the other rows are padding), each with its own penalty
    from ``ridges`` by leave-one-out error. A column that is zero in every kept row of a group
    gets weight 0 there. Returns ``(weight (G, horizon, q), bias (G, horizon), penalty (G,))``."""
    X, Y = X.double(), Y.double()
    w = keep.double()[..., None]  # (G, n, 1)
    n = w.sum(1)  # (G, 1)
    mx, my = (X * w).sum(1) / n, (Y * w).sum(1) / n  # (G, q), (G, horizon)
    Xc, Yc = (X - mx[:, None]) * w, (Y - my[:, None]) * w  # centred, padding rows zero
    U, S, Vh = torch.linalg.svd(Xc, full_matrices=False)  # (G, n, r), (G, r), (G, r, q)
    UtY = U.mT @ Yc  # (G, r, horizon)
    lams = torch.tensor(ridges, dtype=torch.float64)
    f = S[:, None] ** 2 / (S[:, None] ** 2 + lams[None, :, None])  # (G, L, r): each penalty's shrinkage
    resid = Yc[:, None] - U[:, None] @ (f[..., None] * UtY[:, None])  # (G, L, n, horizon)
    lev = ((U**2) @ f.mT).mT + 1.0 / n[:, None]  # (G, L, n): the hat matrix's diagonal
    loo = ((resid / (1 - lev).clamp(min=1e-9)[..., None]) ** 2 * w[:, None]).sum((2, 3)) / (n * Y.size(-1))
    lam = lams[loo.argmin(1)]  # (G,): the first of equal errors, as ridge_ar
    W = Vh.mT @ ((S / (S**2 + lam[:, None]))[..., None] * UtY)  # (G, q, horizon)
    W = W * (Xc != 0).any(1)[..., None]  # (G, q, horizon): columns absent from a group weigh 0
    return W.mT, my - (mx[:, None] @ W)[:, 0], lam


def _groups_of(series: Tensor, num: int) -> tuple[Tensor, Tensor, Tensor]:
    """The rows of each of ``num`` series: ``order`` (rows sorted by series, stable), ``counts``
    and ``first`` ``(num,)`` (where each series' rows begin in ``order``) and each sorted row's
    position within its series."""
    order = torch.argsort(series, stable=True)
    counts = torch.bincount(series, minlength=num)
    first = torch.cumsum(counts, 0) - counts  # (num,): each series' first place in order
    pos = torch.arange(len(series)) - first.repeat_interleave(counts)
    return order, counts, first, pos


class PeepholeLSTMNet(nn.Module):
    """Stacked peephole LSTM → dropout → linear head, plus (``ar_window > 0``) a linear
    autoregressive term on the last ``ar_window`` values of input channel 0, the target: the
    "highway" of LSTNet (Lai et al. 2018), which carries what a linear model of the recent
    values explains (a trend, a season as long as the lags) at any scale, and leaves the LSTM
    the rest. :meth:`fit_ar` sets it to the ridge regression on training windows in closed
    form (the hybrid of Zhang 2003: the linear model first, the network on what it leaves);
    it starts at zero otherwise. A plain ``nn.Module`` (no Lightning).

    With ``future_size > 0`` each window also comes with ``future`` ``(N, horizon,
    future_size)``, the inputs known ahead at every forecast step (a holiday flag, a planned
    price), whose past values are the last ``future_size`` input channels: the future values
    join the LSTM's last state at the head, both directly (linear) and through a hidden layer
    of ``hidden_size`` ReLU units on the two together (an effect that is not linear, such as
    demand against temperature, heating below and cooling above a comfort range); and the AR
    term regresses on them and on the last ``ar_window`` values of those channels too (an ARX
    model: the covariate now and in the window, as regression with autoregressive errors
    is), so a covariate's effect at the target's own time needs no detour through the
    recurrence.

    Input ``(N, L, input_size)`` (batch first, ``L >= ar_window``), output ``(N, horizon)``.
    The LSTM reads the last ``lstm_window`` steps of it (0, the default: all of them), so the
    AR term's lags may reach further back than the LSTM's window.
    """

    def __init__(
        self,
        input_size: int = 1,
        hidden_size: int = 50,
        num_layers: int = 3,
        dropout: float = 0.2,
        horizon: int = 1,
        peephole: str = "diagonal",
        bidirectional: bool = False,
        cell_clip: Optional[float] = None,
        ar_window: int = 0,
        future_size: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(future_size, bool) or not isinstance(future_size, int) or future_size < 0:
            raise ValueError(f"future_size must be a non-negative integer, got {future_size!r}")
        self.lstm = PeepholeLSTM(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,  # between layers
            bidirectional=bidirectional,
            peephole=peephole,
            cell_clip=cell_clip,
        )
        self.input_size = input_size
        self.future_size = future_size
        self.horizon = horizon
        # the LSTM reads the last lstm_window steps of the input (0: all); the AR term may read
        # further back (its lags beyond the window: PeepholeLSTMRegressor sets this)
        self.lstm_window = 0
        self.emb: Optional[nn.Embedding] = None  # see set_series_embedding
        self.dropout = nn.Dropout(dropout)  # after the last layer
        last = hidden_size * (2 if bidirectional else 1)
        # (future_size > 0) a hidden ReLU layer on the LSTM's last state and the known-ahead inputs
        self.future_net: Optional[nn.Sequential] = None
        if future_size:
            self.future_net = nn.Sequential(nn.Linear(last + horizon * future_size, hidden_size), nn.ReLU())
        # the top layer's last state (each direction), then the known-ahead inputs of every step
        # and that layer's units
        self.head = nn.Linear(last + (horizon * future_size + hidden_size if future_size else 0), horizon)
        self.ar: Optional[nn.Linear] = None
        self.set_ar_window(ar_window)

    def set_series_embedding(self, series: int, dim: int) -> None:
        """Give each of ``series`` series a learned ``dim``-number vector that enters the LSTM
        with every input step, so that one global model can tell the series of a panel apart
        (DeepAR's and TFT's categorical embeddings); ``forward`` then takes each window's
        series. Rebuilds the LSTM for the wider input (fresh weights: call before training);
        ``dim`` 0 or one series: none."""
        for name, v in (("series", series), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"set_series_embedding: {name} must be a non-negative integer, got {v!r}")
        extra = dim if series > 1 else 0
        old = self.lstm
        ref = old.weight_ih_l0
        self.emb = nn.Embedding(series, extra, device=ref.device, dtype=ref.dtype) if extra else None
        if old.input_size != self.input_size + extra:
            self.lstm = PeepholeLSTM(
                self.input_size + extra, old.hidden_size, old.num_layers, batch_first=True, dropout=old.dropout,
                bidirectional=old.bidirectional, peephole=old.peephole, cell_clip=old.cell_clip,
                device=ref.device, dtype=ref.dtype,
            )

    def set_ar_window(self, ar_window: int, series: int = 1) -> None:
        """(Re)create the autoregressive term for ``ar_window`` lags (and the ``horizon *
        future_size`` known-ahead inputs), starting at zero (0 lags: none); ``series > 1``: one
        term per series (``forward`` then takes each window's series)."""
        if isinstance(ar_window, bool) or not isinstance(ar_window, int) or ar_window < 0:
            raise ValueError(f"ar_window must be a non-negative integer, got {ar_window!r}")
        if isinstance(series, bool) or not isinstance(series, int) or series < 1:
            raise ValueError(f"the number of series must be a positive integer, got {series!r}")
        self.ar_window = ar_window
        self.ar_series = series
        self.ar = None
        if ar_window > 0:
            horizon = self.head.out_features
            # (series * horizon, ar_window * (1 + nf) + horizon * nf), nf = future_size: series s
            # owns output rows s*horizon .. (s+1)*horizon; the columns: the target's lags (oldest
            # first), each known-ahead channel's lags, then their values at the horizon steps
            nf = self.future_size
            self.ar = nn.Linear(ar_window * (1 + nf) + horizon * nf, series * horizon,
                                device=self.head.weight.device, dtype=self.head.weight.dtype)
            nn.init.zeros_(self.ar.weight)  # starts as the LSTM alone
            nn.init.zeros_(self.ar.bias)

    @torch.no_grad()
    def fit_ar(self, lags: Tensor, target: Tensor, series: Optional[Tensor] = None,
               lags_per_series: Optional[list[int]] = None, future: Optional[Tensor] = None) -> list[float]:
        """Set the autoregressive term to the ridge regression of ``target`` ``(N, horizon)`` on
        ``lags`` ``(N, ar_window)``, the last values of input channel 0 (:func:`ridge_ar`); with
        ``future_size > 0`` ``lags`` is ``(N, ar_window, 1 + future_size)``, channel 0 and the
        known-ahead ones (the last input channels), and ``future`` ``(N, horizon, future_size)``
        their values at the forecast steps joins the regression. With one term per series,
        ``series`` ``(N,)`` says whose each row is and each series is fitted on its own rows,
        on its last ``lags_per_series[s]`` lags of each channel (default all; the older ones get
        weight 0); a series with fewer than 3 rows gets the fit of all rows together on its
        number of lags. Returns the penalty chosen for each term."""
        S = self.ar_series if self.ar is not None else 0
        nf, A = self.future_size, self.ar_window
        if lags.dim() == 2 and nf == 0:
            lags = lags[:, :, None]  # (N, A, 1)
        if self.ar is None or lags.dim() != 3 or lags.shape[1:] != (A, 1 + nf):
            want = f"(N, ar_window={A})" if nf == 0 else f"(N, ar_window={A}, 1 + future_size={1 + nf})"
            raise ValueError(f"fit_ar expects lags {want}, got {tuple(lags.shape)}")
        h = self.ar.out_features // S
        if target.dim() != 2 or target.size(1) != h:
            raise ValueError(f"fit_ar expects target (N, horizon={h}), got {tuple(target.shape)}")
        if S > 1 and (series is None or series.shape != (len(lags),)):
            raise ValueError(f"this network has an AR term for each of {S} series: fit_ar needs series (N,)")
        known = self._future_flat(future, len(lags), "fit_ar").to(lags)  # (N, horizon * nf)

        def columns(p: int) -> list[int]:  # the weight's columns: the last p lags of every channel, then known
            ahead = range(A * (1 + nf), self.ar.in_features)
            return [c * A + j for c in range(1 + nf) for j in range(A - p, A)] + list(ahead)

        def design(rows, p: int) -> Tensor:  # (n, p * (1 + nf) + horizon * nf), in the order of columns(p)
            return torch.cat([lags[rows][:, -p:].transpose(1, 2).flatten(1), known[rows]], 1)

        weight = torch.zeros(S, h, self.ar.in_features, dtype=torch.float64)
        bias = torch.zeros(S, h, dtype=torch.float64)
        penalty = torch.zeros(S, dtype=torch.float64)
        p_of = torch.full((S,), A, dtype=torch.long) if lags_per_series is None else torch.tensor(
            [int(p) for p in lags_per_series], dtype=torch.long)
        if len(p_of) != S:
            raise ValueError(f"lags_per_series needs one number per series ({S}), got {len(p_of)}")
        for s, p in enumerate(p_of.tolist()):
            if not 1 <= p <= A:
                raise ValueError(f"lags_per_series[{s}] = {p} is not in 1 .. ar_window ({A})")
        if S == 1:
            p = int(p_of[0])
            W, b, lam = ridge_ar(design(slice(None), p), target)  # (h, p * (1 + nf) + h * nf), (h,)
            weight[0][:, columns(p)], bias[0], penalty[0] = W, b, lam
        else:
            sid = series.to(torch.long)
            order, counts, first, pos = _groups_of(sid, S)
            age = torch.arange(A).repeat(1 + nf)  # (A * (1 + nf),): the lag's place, oldest 0
            age = torch.cat([age, torch.full((self.ar.in_features - len(age),), A)])  # (in_features,)

            def full_design(src: Tensor) -> Tensor:
                """The rows ``src``' design ``(n, in_features)``, every lag of every channel; the
                lags older than a series' own count are zeroed (ridge_ar_groups gives such columns
                weight 0). Built per chunk: the whole design in float64 would be 2x the lags."""
                X = torch.cat([lags[src].transpose(1, 2).flatten(1), known[src]], 1).double()
                return X.masked_fill_(age[None] < (A - p_of[sid[src]])[:, None], 0.0)

            own = (counts >= 3).nonzero().flatten().tolist()
            # groups in chunks of ~4M padded design entries: the batched SVD's memory stays bounded
            n_max = int(counts.max())
            chunk = max(1, (1 << 22) // max(1, n_max * max(self.ar.in_features, len(RIDGES) * h)))
            for k in range(0, len(own), chunk):
                g = torch.tensor(own[k : k + chunk])  # (G,) series, ascending: their rows are one range of order
                span = torch.arange(int(first[g[0]]), int(first[g[-1]] + counts[g[-1]]))
                rows = span[torch.isin(sid[order[span]], g)]  # places in order (series between with < 3 rows out)
                local = torch.searchsorted(g, sid[order[rows]])  # (n_rows,): the group of each row
                Xg = torch.zeros(len(g), n_max, self.ar.in_features, dtype=torch.float64)
                Yg = torch.zeros(len(g), n_max, h, dtype=torch.float64)
                keep = torch.zeros(len(g), n_max, dtype=torch.bool)
                src = order[rows]
                Xg[local, pos[rows]] = full_design(src)
                Yg[local, pos[rows]] = target[src].double()
                keep[local, pos[rows]] = True
                keep &= torch.isfinite(Xg).all(-1) & torch.isfinite(Yg).all(-1)  # rows with a NaN are left out
                few = (keep.sum(1) < 3).nonzero().flatten()
                if len(few):
                    raise ValueError("the autoregressive term needs at least 3 complete training windows, got "
                                     f"{int(keep[few[0]].sum())} for series {int(g[few[0]])}")
                W, b, lam = ridge_ar_groups(torch.nan_to_num(Xg), torch.nan_to_num(Yg), keep)
                weight[g], bias[g], penalty[g] = W, b, lam
            pooled: dict[int, tuple[Tensor, Tensor, float]] = {}  # p -> the fit of every row on p lags
            for s in (counts < 3).nonzero().flatten().tolist():  # too few windows of its own: the pooled fit
                p = int(p_of[s])
                if p not in pooled:
                    pooled[p] = ridge_ar(design(slice(None), p), target)
                W, b, lam = pooled[p]
                weight[s][:, columns(p)], bias[s], penalty[s] = W, b, lam
        weight, bias, penalties = weight.flatten(0, 1), bias.flatten(), penalty.tolist()
        self.ar.weight.copy_(weight)
        self.ar.bias.copy_(bias)
        return penalties

    @property
    def per_series(self) -> bool:
        """Whether the network has per-series parts (an embedding, one AR term per series)."""
        return self.emb is not None or (self.ar is not None and self.ar_series > 1)

    def _future_flat(self, future: Optional[Tensor], n: int, where: str) -> Tensor:
        """``future`` ``(N, horizon, future_size)`` checked and flattened to ``(N, horizon *
        future_size)`` (``(N, 0)`` for a network without known-ahead inputs)."""
        want = (n, self.horizon, self.future_size)
        if self.future_size == 0:
            if future is not None and future.numel():
                raise ValueError(f"{where}: this network takes no known-ahead inputs (future_size=0), got future "
                                 f"{tuple(future.shape)}")
            return torch.zeros(n, 0)
        if future is None or tuple(future.shape) != want:
            got = "none" if future is None else str(tuple(future.shape))
            raise ValueError(f"{where}: this network takes the known-ahead inputs of every forecast step, future "
                             f"(N, horizon, future_size) = {want}; got {got}")
        return future.flatten(1)

    def forward(self, x: Tensor, series: Optional[Tensor] = None, future: Optional[Tensor] = None) -> Tensor:
        """``x`` ``(N, L, input_size)``; ``series`` ``(N,)``: each window's series, needed only by
        a network with per-series parts (an embedding, one AR term per series); ``future``
        ``(N, horizon, future_size)``: the known-ahead inputs, needed with ``future_size > 0``."""
        if self.ar is not None and x.size(1) < self.ar_window:
            raise ValueError(f"ar_window ({self.ar_window}) is longer than the input window ({x.size(1)} steps): "
                             f"the AR term reads the last {self.ar_window} steps")
        if series is None and self.per_series:
            n = self.emb.num_embeddings if self.emb is not None else self.ar_series
            raise ValueError(f"this network has per-series parts for {n} series: forward needs each window's "
                             "series (N,)")
        x_in = x[:, -self.lstm_window :] if self.lstm_window else x  # (N, L', input_size): the LSTM's steps
        if self.emb is not None:
            e = self.emb(series.to(device=x.device, dtype=torch.long))  # (N, dim)
            x_in = torch.cat([x_in, e[:, None].expand(-1, x_in.size(1), -1).to(x.dtype)], dim=-1)  # (N, L', in + dim)
        _, (h_n, _) = self.lstm(x_in)  # h_n: (num_layers * D, N, H)
        D = 2 if self.lstm.bidirectional else 1
        last = torch.cat(list(h_n[-D:]), dim=-1)  # (N, D*H): the top layer, each direction's end
        known = None  # (N, horizon * future_size): checked only where given or needed, off the plain path
        if self.future_size or future is not None:
            known = self._future_flat(future, len(x), "forward")
        feat = self.dropout(last)
        if self.future_net is not None:
            feat = torch.cat([feat, known.to(feat)], dim=-1)  # (N, D*H + horizon * future_size)
            feat = torch.cat([feat, self.future_net(feat)], dim=-1)  # (N, D*H + horizon * future_size + H)
        out = self.head(feat)  # (N, horizon)
        if self.ar is not None:
            lags = x[:, -self.ar_window :, 0]  # (N, ar_window)
            if self.future_size:
                past = x[:, -self.ar_window :, -self.future_size :].transpose(1, 2).flatten(1)  # (N, nf * ar_window)
                lags = torch.cat([lags, past, known.to(lags)], dim=-1)  # (N, ar_window * (1 + nf) + horizon * nf)
            if self.ar_series > 1:  # each window's own term, gathered: the cost is the batch's, not the panel's
                h = out.size(1)
                sid = series.to(device=lags.device, dtype=torch.long)
                w = self.ar.weight.view(self.ar_series, h, -1)[sid]  # (N, horizon, in_features)
                ar = (w @ lags.to(w.dtype)[:, :, None])[..., 0] + self.ar.bias.view(self.ar_series, h)[sid]  # (N, h)
            else:
                ar = self.ar(lags)  # (N, horizon)
            out = out + ar
        return out
