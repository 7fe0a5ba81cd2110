"""The dialect of a user's CSV, guessed from its first lines: the delimiter (comma, semicolon,
tab or bar: the one that splits the header into the most fields) and the decimal mark (a
comma when the delimiter is not one and the numbers are written ``3,14``, as spreadsheets in
most of Europe export them). Reading with pandas' defaults instead turns ``date;value`` with
``2020-01-01;10,5`` into one column of garbage (pandas takes the extra field for an index)."""

from __future__ import annotations

import csv
import re

__all__ = ["DELIMITERS", "head_lines", "sniff"]

DELIMITERS = (",", ";", "\t", "|")
_COMMA_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")
_DOT_DECIMAL = re.compile(r"^[+-]?\d*\.\d+(?:[eE][+-]?\d+)?$")


def head_lines(text: str, n: int = 50, complete: bool = True) -> list[str]:
    """The first ``n`` non-blank lines of ``text`` (without the last one if it may be cut off,
    ``complete=False``)."""
    lines = text.splitlines()
    if not complete and len(lines) > 1:
        lines = lines[:-1]
    return [ln for ln in lines if ln.strip()][:n]


def _fields(line: str, sep: str) -> list[str]:
    return next(csv.reader([line], delimiter=sep), [])


def sniff(lines: list[str]) -> tuple[str, str]:
    """``(delimiter, decimal)`` for a CSV whose first non-blank lines (the header first) are
    ``lines``; ``(",", ".")`` when nothing says otherwise."""
    if not lines:
        return ",", "."
    counts = {sep: len(_fields(lines[0], sep)) for sep in DELIMITERS}
    sep = max(DELIMITERS, key=lambda d: (counts[d], d == ","))  # ties go to the comma
    if counts[sep] == 1:
        sep = ","
    decimal = "."
    if sep != ",":
        cells = [c.strip() for ln in lines[1:] for c in _fields(ln, sep)]
        if any(_COMMA_DECIMAL.match(c) for c in cells) and not any(_DOT_DECIMAL.match(c) for c in cells):
            decimal = ","
    return sep, decimal
