"""The fused recurrence's kernels, one family each: ``cpu/`` (C++, CPU float32/float64, built on
first use by :mod:`peephole_lstm.ops.build`), ``triton.py`` (Triton, CUDA; CPU under Triton's
interpreter) and ``python.py`` (vectorised PyTorch, every device). The op that calls them, with
its autograd formula, is :mod:`peephole_lstm.ops.recurrence`; which one runs is decided in
:mod:`peephole_lstm.ops.backend`."""
