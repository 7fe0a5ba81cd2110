"""Split-conformal prediction intervals, recalibrated as a backtest rolls forward.

An interval is ``forecast ± q × scale``: ``q`` is, per horizon step, the conformal quantile of
absolute residuals in scaled units (each window's scale is its series'). The pool those
residuals come from: the validation residuals, plus, for a window of series ``s`` whose first
target is row ``e`` (its origin is ``e - 1``), every residual of ``s`` already scored whose
target row is before ``e`` — what a forecaster who recalibrates as actuals arrive knows at that
origin; nothing from the window's own or later targets. So the backtest's coverage stays an
honest out-of-sample check, and the future forecast, after every backtest target, is
calibrated on all residuals up to the end of the data, the most recent included. On small
validation sets (15-30 targets) this halved the mean distance of 80% test coverage from 80%
(benchmarks/quality.py, six series, three seeds).

On a panel each series starts from its own validation residuals where it has enough of them
for every level's quantile to be finite (``n + 1 >= 1 / (1 - level)``: 19 for 95%), otherwise
from everyone's: scaled residuals are not exchangeable across series (on the quality panel one
pool gave El Nino 94% and sunspots 67-70% at 80%). One pool per series for all levels keeps
the intervals nested (an 80% interval from a series' own pool could be wider than a 95% one
from everyone's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LEVELS", "RollingCalibration", "check_levels", "conformal_quantiles", "level_name"]

LEVELS = (0.8, 0.95)  # the central prediction intervals every forecast carries by default


def check_levels(levels) -> tuple[float, ...]:
    """``levels`` as a sorted tuple of distinct floats in (0, 1); a ``ValueError`` otherwise."""
    try:
        out = tuple(sorted(float(lv) for lv in levels))
    except (TypeError, ValueError):
        raise ValueError(f"interval_levels must be a list of numbers in (0, 1), got {levels!r}") from None
    if not out or not all(0.0 < lv < 1.0 for lv in out) or len(set(out)) < len(out):
        raise ValueError(f"interval_levels must be distinct numbers in (0, 1), e.g. [0.8, 0.95], got {list(levels)}")
    return out


def level_name(level: float) -> str:
    """A level as it names columns and metrics: 0.8 -> ``"80"``, 0.975 -> ``"97.5"``."""
    return f"{level * 100:.6g}"


def _rank(n: int, level: float) -> int:
    """The 1-based rank of the split-conformal quantile of ``n`` residuals: ``ceil((n + 1)
    level)``, at most ``n`` (the largest residual, where theory would give an unbounded
    interval)."""
    return min(n, math.ceil((n + 1) * level - 1e-9))


def conformal_quantiles(residuals: Tensor, levels=LEVELS) -> Tensor:
    """Split-conformal half-widths: per horizon step, the ``ceil((n + 1) level)``-th smallest of
    ``n`` absolute (scaled) residuals ``(n, horizon)``; returns ``(len(levels), horizon)``."""
    r = residuals.sort(dim=0).values  # (n, horizon)
    return torch.stack([r[_rank(len(r), lv) - 1] for lv in levels])


def _ranks(n: Tensor, levels) -> Tensor:
    """:func:`_rank` for counts ``n`` (any shape): ``(*n.shape, len(levels))``, 0 where ``n``
    is 0."""
    lv = torch.tensor(levels, dtype=torch.float64)
    r = torch.ceil((n[..., None].double() + 1) * lv - 1e-9).long()
    return torch.minimum(r, n[..., None])


class RollingCalibration:
    """The pool of residuals behind each window's interval (see the module's docstring).

    ``calibration`` ``(n, horizon)``: the validation residuals; ``series`` ``(n,)``: their
    series (None: one pool for all). Call it with each batch of windows in order (the windows
    of one series in time order).

    Per series and horizon step the residuals scored so far are kept in the order they came,
    after the series' own validation residuals where it has a pool of its own, so what a
    window may see (targets before its first) is a prefix of that sequence. For a batch, the
    sequences of the batch's series are ranked and put in a wavelet matrix, which gives the
    ``r``-th smallest of any prefix in ``log2(length)`` steps. A series without a pool of its
    own merges its prefix with every validation residual (sorted once) by a binary search
    over the split, ``log2(length)`` such steps more. A batch costs its series' residuals
    times that logarithm (ranked in chunks of at most ``CHUNK`` residuals), whatever the
    number of series; with batches of at least the windows of a series, each series is
    ranked about twice in a pass.

    Memory: the validation residuals twice (sorted per step, and the own pools series after
    series); the residuals scored so far with their first target rows, in one buffer where
    each series has room for a power of two of windows.
    """

    CHUNK = 1 << 20  # residuals ranked together at most (plus one series)
    _SPAN = 1 << 40  # row numbers are below this: (series, row) as one sortable key

    def __init__(self, calibration: Tensor, levels=LEVELS, series: Tensor | None = None) -> None:
        cal = calibration.detach().double().cpu()  # (n, horizon)
        self.levels = tuple(levels)
        self.horizon = cal.shape[1]
        self.base = cal.sort(dim=0).values.T.contiguous()  # (horizon, n): every residual, sorted per step
        # a series' own validation residuals where they are enough for every level
        need = max(math.ceil(1.0 / (1.0 - lv) - 1e-9) - 1 for lv in levels)
        self.own_of = torch.zeros(0, dtype=torch.long)  # series -> its row of own, -1: none
        self.own = torch.zeros(0, self.horizon, dtype=torch.float64)  # (n_own, horizon), series after series
        self.own_n = torch.zeros(0, dtype=torch.long)  # (S_own,)
        self.own_start = torch.zeros(0, dtype=torch.long)  # (S_own,)
        if series is not None and len(cal):
            sid = series.detach().cpu().long()
            counts = torch.bincount(sid)
            mine = (counts >= need).nonzero().flatten()  # (S_own,) series with a pool of their own
            if len(mine):
                self.own_of = torch.full((len(counts),), -1, dtype=torch.long)
                self.own_of[mine] = torch.arange(len(mine))
                rows = self.own_of[sid] >= 0
                sid, cal_own = self.own_of[sid[rows]], cal[rows]
                order = torch.argsort(sid, stable=True)
                self.own = cal_own[order]
                self.own_n = torch.bincount(sid, minlength=len(mine))
                self.own_start = _starts(self.own_n)
        # the windows scored so far: series s's are at offset[s] + (0 .. count[s]), in the order they came
        self.offset = torch.zeros(0, dtype=torch.long)  # (S,)
        self.room = torch.zeros(0, dtype=torch.long)  # (S,)
        self.count = torch.zeros(0, dtype=torch.long)  # (S,)
        self.res = torch.zeros(0, self.horizon, dtype=torch.float64)  # (capacity, horizon), NaN: never known
        self.first = torch.zeros(0, dtype=torch.long)  # (capacity,) each window's first target row
        self.used = 0

    def _observe(self, s: Tensor, e: Tensor, residual: Tensor) -> None:
        """The windows' absolute scaled residuals ``(B, horizon)`` join their series' sequences
        (NaN: no target, never known); a series that outgrows its room moves to the end of the
        buffer with twice the room it needs."""
        S = max(len(self.count), int(s.max()) + 1)
        if S > len(self.count):
            grow = S - len(self.count)
            self.offset = torch.cat([self.offset, torch.zeros(grow, dtype=torch.long)])
            self.room = torch.cat([self.room, torch.zeros(grow, dtype=torch.long)])
            self.count = torch.cat([self.count, torch.zeros(grow, dtype=torch.long)])
        added = torch.bincount(s, minlength=S)
        full = (self.count + added > self.room).nonzero().flatten()
        if len(full):
            need = self.count[full] + added[full]
            room = torch.clamp(2 ** torch.ceil(torch.log2(need.double())).long(), min=8)  # (F,)
            start = self.used + _starts(room)
            top = self.used + int(room.sum())
            if top > len(self.first):
                cap = max(top, 2 * len(self.first))
                self.res = torch.cat([self.res, torch.empty(cap - len(self.res), self.horizon, dtype=torch.float64)])
                self.first = torch.cat([self.first, torch.empty(cap - len(self.first), dtype=torch.long)])
            n = self.count[full]
            within = torch.arange(int(n.sum())) - _starts(n).repeat_interleave(n)
            src = self.offset[full].repeat_interleave(n) + within
            dst = start.repeat_interleave(n) + within
            self.res[dst], self.first[dst] = self.res[src], self.first[src]
            self.offset[full], self.room[full], self.used = start, room, top
        order = torch.argsort(s, stable=True)
        rank = torch.empty_like(s)  # each window's place among the batch's windows of its series
        rank[order] = torch.arange(len(s)) - _starts(added).repeat_interleave(added)
        slot = self.offset[s] + self.count[s] + rank
        self.res[slot], self.first[slot] = residual, e
        self.count += added

    def __call__(self, series: Tensor, first_target: Tensor, residual: Tensor) -> Tensor:
        """A batch in order: ``(B, len(levels), horizon)`` half-widths of windows of ``series``
        whose first target is row ``first_target``, from the validation residuals and the
        series' residuals of targets before that row; then each window's residuals ``(B,
        horizon)`` (NaN where the target is unknown) join the pool."""
        s = series.detach().cpu().long()
        e = first_target.detach().cpu().long()
        res = residual.detach().double().cpu()
        L = len(self.levels)
        if len(s) == 0:
            return torch.zeros(0, L, self.horizon, dtype=residual.dtype, device=residual.device)
        # a window's own targets are at rows >= e, so adding the batch first hides them from it,
        # and of the batch's other windows it sees exactly the targets before its first one
        self._observe(s, e, res)
        u, row = torch.unique(s, return_inverse=True)  # (U,), (B,)
        n = self.count[u]
        # chunks of consecutive series of at most CHUNK residuals (or one series)
        chunk = torch.unique_consecutive(_starts(n * self.horizon) // self.CHUNK, return_counts=True)[1]
        order = torch.argsort(row, stable=True)
        cuts = torch.searchsorted(row[order], torch.cumsum(chunk, 0) - chunk).tolist() + [len(s)]
        out = torch.empty(len(s), L, self.horizon, dtype=torch.float64)
        a = 0
        for c, width in enumerate(chunk.tolist()):
            w = order[cuts[c]: cuts[c + 1]]
            out[w] = self._half_widths(u[a: a + width], s[w], e[w], row[w] - a)
            a += width
        return out.to(dtype=residual.dtype, device=residual.device)

    def _half_widths(self, u: Tensor, s: Tensor, e: Tensor, row: Tensor) -> Tensor:
        """``(B, len(levels), horizon)`` for windows ``s``/``e`` of the series ``u`` (ascending;
        ``row``: each window's place in ``u``), all of whose residuals are observed."""
        h, U = self.horizon, len(u)
        n = self.count[u]  # (U,) residuals scored per series
        start = _starts(n)
        M = int(n.sum())
        grp = torch.arange(U).repeat_interleave(n)  # (M,)
        idx = self.offset[u].repeat_interleave(n) + torch.arange(M) - start.repeat_interleave(n)  # (M,)
        key = grp * self._SPAN + self.first[idx]  # (M,) ascending when each series came in time order
        if M > 1 and bool((key[1:] < key[:-1]).any()):
            raise ValueError("RollingCalibration: the windows of a series must come in time order")
        # a series' own validation residuals, if it has a pool of its own, head its sequences
        own = torch.full((U,), -1, dtype=torch.long)
        if len(self.own_of):
            inside = u < len(self.own_of)
            own[inside] = self.own_of[u[inside]]
        n_own = torch.where(own >= 0, self.own_n[own.clamp(min=0)] if len(self.own_n) else 0, 0)  # (U,)
        size = n_own + n
        head = _starts(size)  # (U,) each series' place in the flat sequences
        N = int(size.sum())
        g2 = torch.arange(U).repeat_interleave(size)  # (N,)
        within = torch.arange(N) - head.repeat_interleave(size)
        mine = within < n_own[g2]
        values = torch.empty(N, h, dtype=torch.float64)
        values[mine] = self.own[self.own_start[own[g2[mine]]] + within[mine]]
        values[~mine] = self.res[idx]
        # one sequence per (step, series): step t of series row r at t * N + head[r]
        flat = values.T.reshape(-1)  # (h * N,)
        steps = torch.arange(h)
        at = (steps[:, None] * N + head[g2][None, :]).reshape(-1)  # (h * N,) each place's sequence start
        group = (steps[:, None] * U + g2[None, :]).reshape(-1)  # (h * N,) ascending
        by_value = torch.argsort(torch.nan_to_num(flat, nan=math.inf), stable=True)  # NaN last
        perm = by_value[torch.argsort(group[by_value], stable=True)]  # by sequence, then value
        vals = flat[perm]  # (h * N,) each sequence sorted, in its own places
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(len(perm)) - at  # rank within its sequence
        wm = _WaveletMatrix(rank, max(1, int(size.max() - 1).bit_length()))
        finite = torch.zeros(len(flat) + 1, dtype=torch.long)
        torch.cumsum((~torch.isnan(flat)).long(), 0, out=finite[1:])
        # what window b may see at step t: its sequence's head (own validation residuals) and the
        # first p scored, those whose first target + t < e, i.e. first target < e - t
        lo = steps[None, :] * N + head[row][:, None]  # (B, h)
        p = torch.searchsorted(key, row[:, None] * self._SPAN + (e[:, None] - steps)) - start[row][:, None]
        hi = lo + n_own[row][:, None] + p.clamp(min=0)
        known = finite[hi] - finite[lo]  # (B, h) finite values there (NaN ranks last in a sequence)
        lo3 = lo[..., None].expand(-1, -1, len(self.levels))  # (B, h, L)
        hi3 = hi[..., None].expand_as(lo3)

        def from_known(i: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
            """The i-th smallest (1-based; 0: -inf) of the sequence places [lo, hi): what a window may see."""
            place = lo + wm.select(lo, hi, (i - 1).clamp(min=0))
            return torch.where(i > 0, vals[place.clamp(max=len(vals) - 1)], -math.inf)

        has = (own >= 0)[row]  # (B,): the pool is the prefix, else everyone's validation residuals too
        r = _ranks(known + torch.where(has, 0, self.base.shape[1])[:, None], self.levels)  # (B, h, L)
        out = torch.empty(r.shape, dtype=torch.float64)
        g = has.nonzero().flatten()  # the r-th smallest of the prefix
        if len(g):
            out[g] = from_known(r[g], lo3[g], hi3[g])
        g = (~has).nonzero().flatten()  # merged with every validation residual
        if len(g):
            out[g] = self._merged(r[g], known[g], lo3[g], hi3[g], from_known)
        return torch.where(r > 0, out, math.nan).transpose(1, 2)  # (B, L, h)

    def _merged(self, r: Tensor, m: Tensor, lo: Tensor, hi: Tensor, from_known) -> Tensor:
        """The ``r``-th smallest ``(B, h, L)`` of the union of ``m`` ``(B, h)`` known residuals
        (``from_known(i, lo, hi)``: the ``i``-th smallest) and every validation residual."""
        n_a = self.base.shape[1]
        steps = torch.arange(self.horizon)[None, :, None].expand_as(r)

        def from_base(j: Tensor) -> Tensor:  # the j-th smallest validation residual (1-based; 0: -inf)
            if not n_a:
                return torch.where(j > 0, math.inf, -math.inf).double()
            return torch.where(j > 0, self.base[steps, (j - 1).clamp(0, n_a - 1)], -math.inf)

        # min over the splits i (i from the known, r - i from the base) of the larger last
        # element; that is falling, then rising in i, so a binary search finds the first i whose
        # known element is not below the base's
        m3 = m[..., None].expand_as(r)
        first = (r - n_a).clamp(min=0)
        last = torch.minimum(m3, r)
        a, b = first.clone(), last + 1  # the first i in [first, last] with from_known(i) >= from_base(r - i), else last + 1
        while bool((a < b).any()):
            mid = (a + b) // 2
            up = from_known(mid, lo, hi) >= from_base(r - mid)
            go = a < b
            b = torch.where(go & up, mid, b)
            a = torch.where(go & ~up, mid + 1, a)
        best = torch.full(r.shape, math.inf, dtype=torch.float64)
        for i in (a, a - 1):
            ok = (i >= first) & (i <= last)
            g = torch.maximum(from_known(i, lo, hi), from_base(r - i))
            best = torch.where(ok, torch.minimum(best, g), best)
        return best


def _starts(counts: Tensor) -> Tensor:
    """Where each of consecutive groups of ``counts`` starts: the exclusive cumulative sum."""
    return torch.cumsum(counts, 0) - counts


class _WaveletMatrix:
    """The ``k``-th smallest value in any range of an integer array, in ``bits`` steps per
    query (the wavelet matrix: Claude, Navarro & Ordóñez 2015).

    ``values`` ``(M,)``: integers in ``[0, 2**bits)``. Level by level, from the top bit, the
    array is partitioned stably by that bit (zeros first); ``zeros[level]`` ``(M + 1,)`` counts
    the zeros before each place. Memory: ``bits * (M + 1)`` counts.
    """

    def __init__(self, values: Tensor, bits: int) -> None:
        M = len(values)
        self.bits = bits
        self.zeros = torch.zeros(bits, M + 1, dtype=torch.long)  # (bits, M + 1)
        self.n_zeros: list[int] = []
        places = torch.arange(M)
        cur = values
        for i, level in enumerate(range(bits - 1, -1, -1)):
            one = (cur >> level) & 1  # (M,)
            torch.cumsum(1 - one, 0, out=self.zeros[i, 1:])
            z = self.zeros[i, :-1]
            nz = int(self.zeros[i, -1])
            nxt = torch.empty_like(cur)
            nxt[torch.where(one == 0, z, nz + places - z)] = cur
            self.n_zeros.append(nz)
            cur = nxt

    def select(self, lo: Tensor, hi: Tensor, k: Tensor) -> Tensor:
        """The ``k``-th smallest (0-based) of ``values[lo:hi]``, for ``lo``, ``hi``, ``k`` of one
        shape; where ``k >= hi - lo`` some value in ``[0, 2**bits)``."""
        out = torch.zeros_like(k)
        for i, level in enumerate(range(self.bits - 1, -1, -1)):
            z = self.zeros[i]
            zl, zh = z[lo], z[hi]
            n = zh - zl  # zeros in the range at this level
            left = k < n
            nz = self.n_zeros[i]
            lo = torch.where(left, zl, nz + lo - zl)
            hi = torch.where(left, zh, nz + hi - zh)
            k = torch.where(left, k, k - n)
            out = out | ((~left).long() << level)
        return out
