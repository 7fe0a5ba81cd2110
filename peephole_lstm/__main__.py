"""``python -m peephole_lstm`` is the ``peephole-lstm`` command."""

from .forecast.cli import main

main()
