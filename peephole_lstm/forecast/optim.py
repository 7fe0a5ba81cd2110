"""The optimizer of the forecasting model: Adam, with per-series tables updated lazily.

A panel model has a table with one row per series (the series embedding). Dense Adam moves
every row at every step, through its momentum and weight decay, even the rows of series not
in the batch: a step then costs the number of series (at 100,000 series and 4 numbers each,
about 3.5 ms of a 10 ms step on a 2-core machine). :class:`PanelAdam` updates a table only
in the rows whose gradient is not zero, the series in the batch ("lazy" Adam, as
``torch.optim.SparseAdam`` and TensorFlow Addons' ``LazyAdam``); its other parameters are
plain ``torch.optim.Adam``. The gradient stays dense, so gradient clipping and DDP's
all-reduce see an ordinary tensor.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

__all__ = ["PanelAdam"]


class PanelAdam(torch.optim.Adam):
    """``torch.optim.Adam`` whose ``lazy`` parameters (tables ``(rows, ...)``) are updated only
    in the rows with a non-zero gradient.

    Those rows follow Adam's update exactly: their moments decay and take the gradient (plus
    ``weight_decay`` times the row, L2 as in Adam), and the bias corrections use the table's
    step count, which counts every step with a gradient (as ``torch.optim.SparseAdam``). The
    other rows, their moments included, are left as they are. A step where every row has a
    gradient (a one-series model's one-row table) is Adam's own step. The state has Adam's
    keys, so a checkpoint of either loads into the other.

    Args:
        params: the parameters (or parameter groups), as for ``torch.optim.Adam``.
        lazy: the parameters among them to update by rows (an ``nn.Embedding``'s ``weight``).
        **kwargs: ``lr``, ``betas``, ``eps``, ``weight_decay`` as for ``torch.optim.Adam``
            (``amsgrad``, ``maximize`` and the other options are not supported for ``lazy``
            parameters).
    """

    def __init__(self, params: Iterable, lazy: Iterable[Tensor] = (), **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._lazy_ids = {id(p) for p in lazy}
        for group in self.param_groups:
            if any(id(p) in self._lazy_ids for p in group["params"]) and (
                    group["amsgrad"] or group["maximize"] or group.get("decoupled_weight_decay")):
                raise ValueError("PanelAdam: amsgrad, maximize and decoupled weight decay are not "
                                 "supported for lazy parameters")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []  # the lazy parameters with rows outside the batch, hidden from Adam's step
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in self._lazy_ids and p.grad is not None:
                    if p.grad.is_sparse:
                        raise ValueError("PanelAdam: the gradient of a lazy parameter must be dense "
                                         "(an nn.Embedding with sparse=False)")
                    rows = _rows_with_gradient(p.grad)
                    if len(rows) < len(p.grad):  # else every row: Adam's own step, the same update
                        held.append((group, p, p.grad, rows))
                        p.grad = None
        super().step()
        for group, p, grad, rows in held:
            p.grad = grad
            self._rows_step(group, p, grad, rows)
        return loss

    def _rows_step(self, group: dict, p: Tensor, grad: Tensor, rows: Tensor) -> None:
        """Adam's update of the ``rows`` ``(R,)`` of ``p``."""
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        g = grad[rows]  # (R, ...)
        if group["weight_decay"]:
            g = g.add(p[rows], alpha=group["weight_decay"])
        m = state["exp_avg"][rows].mul_(beta1).add_(g, alpha=1 - beta1)
        v = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        state["exp_avg"][rows] = m
        state["exp_avg_sq"][rows] = v
        bias1 = 1 - beta1**step
        denom = (v.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        p[rows] = p[rows].addcdiv_(m, denom, value=-group["lr"] / bias1)


def _rows_with_gradient(grad: Tensor) -> Tensor:
    """The rows of ``grad`` ``(rows, ...)`` with a non-zero entry, ascending."""
    nonzero = grad.reshape(len(grad), -1).ne(0)  # (rows, D)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}.get(nonzero.shape[1])
    # a row of D flags read as one integer of D bytes: about half the time of any(dim=1)
    flags = nonzero.view(as_int).flatten() if as_int is not None else nonzero.any(1)  # (rows,)
    return flags.nonzero().flatten()
