"""``python -m peephole_lstm`` is the ``peephole-lstm`` command."""

from .cli import main

main()
