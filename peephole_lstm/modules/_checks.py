"""Validation shared by the cell and the layer: the peephole options."""

from typing import Optional

__all__ = ["PEEPHOLE_MODES", "check_cell_clip", "check_peephole_args", "peephole_shape"]

PEEPHOLE_MODES = ("diagonal", "full", "none")


def check_peephole_args(peephole: str, candidate_peephole: bool) -> None:
    if not isinstance(peephole, str) or peephole not in PEEPHOLE_MODES:
        raise ValueError(f"peephole must be one of {', '.join(map(repr, PEEPHOLE_MODES))}, got {peephole!r}")
    if not isinstance(candidate_peephole, bool):
        raise TypeError(
            f"candidate_peephole should be of type bool, got: {type(candidate_peephole).__name__}"
        )
    if candidate_peephole and peephole == "none":
        raise ValueError('candidate_peephole=True needs peephole="diagonal" or "full", got "none"')


def check_cell_clip(cell_clip: Optional[float]) -> Optional[float]:
    """``None`` or a positive, finite number (returned as a float)."""
    import math
    import numbers

    if cell_clip is None:
        return None
    if isinstance(cell_clip, bool) or not isinstance(cell_clip, numbers.Real):
        raise TypeError(f"cell_clip should be None or a number, got: {type(cell_clip).__name__}")
    if not (math.isfinite(cell_clip) and cell_clip > 0):
        raise ValueError(f"cell_clip must be a positive, finite number or None, got {cell_clip}")
    return float(cell_clip)


def peephole_shape(peephole: str, hidden_size: int) -> Optional[tuple[int, ...]]:
    """Shape of one peephole weight, or None when there are none."""
    if peephole == "diagonal":
        return (hidden_size,)
    if peephole == "full":
        return (hidden_size, hidden_size)
    return None
