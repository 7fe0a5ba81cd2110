"""The dialect of a user's CSV, guessed from its first lines: the delimiter (comma, semicolon,
tab or bar: the one that splits the header into the most fields), the decimal mark (a comma
when the delimiter is not one and the numbers are written ``3,14``, as spreadsheets in most
of Europe export them) and a thousands separator (``"1,234.5"`` quoted in a comma file,
``1.234,5`` beside decimal commas). Reading with pandas' defaults instead turns ``date;value`` with
``2020-01-01;10,5`` into one column of garbage (pandas takes the extra field for an index)."""

from __future__ import annotations

import csv
import re
from typing import Optional

__all__ = ["DELIMITERS", "head_lines", "sniff"]

DELIMITERS = (",", ";", "\t", "|")
_COMMA_DECIMAL = re.compile(r"^[+-]?(?:\d+|\d{1,3}(?:\.\d{3})+),\d+$")  # 3,14 or 1.234,5
_DOT_DECIMAL = re.compile(r"^[+-]?\d*\.\d+(?:[eE][+-]?\d+)?$")
_DOT_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:\.\d{3})+(?:,\d+)?$")  # 1.234 or 1.234,5
_COMMA_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")  # 1,234 or 1,234.5


def head_lines(text: str, n: int = 50, complete: bool = True) -> list[str]:
    """The first ``n`` non-blank lines of ``text`` (without the last one if it may be cut off,
    ``complete=False``)."""
    lines = text.splitlines()
    if not complete and len(lines) > 1:
        lines = lines[:-1]
    return [ln for ln in lines if ln.strip()][:n]


def _fields(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep), [])


def sniff(lines: list[str]) -> tuple[str, str, Optional[str]]:
    """``(delimiter, decimal, thousands)`` for a CSV whose first non-blank lines (the header
    first) are ``lines``; ``(",", ".", None)`` when nothing says otherwise. A decimal comma
    needs numbers written with one and no dot that can only be a decimal point (``1.5``; a
    ``1.234`` beside ``3,5`` is a thousands dot)."""
    if not lines:
        return ",", ".", None
    counts = {sep: len(_fields(lines[0], sep)) for sep in DELIMITERS}
    sep = max(DELIMITERS, key=lambda d: (counts[d], d == ","))  # ties go to the comma
    if counts[sep] == 1:
        sep = ","
    cells = [c.strip() for ln in lines[1:] for c in _fields(ln, sep)]
    if sep != ",":
        dots = [c for c in cells if _DOT_DECIMAL.match(c) and not _DOT_THOUSANDS.match(c)]
        if any(_COMMA_DECIMAL.match(c) for c in cells) and not dots:
            return sep, ",", "." if any(_DOT_THOUSANDS.match(c) for c in cells) else None
    return sep, ".", "," if any(_COMMA_THOUSANDS.match(c) for c in cells) else None
