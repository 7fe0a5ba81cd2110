"""The fused recurrence's implementations, one file each: ``cpu.cpp`` (C++, CPU, built on
first use) and ``python.py`` (vectorised PyTorch, every device). The op that calls them,
with its autograd formula, is in :mod:`peephole_lstm._fused`; which one runs is decided in
:mod:`peephole_lstm._backend`."""
