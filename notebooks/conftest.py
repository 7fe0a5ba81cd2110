"""The notebooks run as tests (nbmake) with ``CI`` set: the quickstart trains 2 epochs instead
of the 12 a reader runs (its text says so), the same code either way."""

import os

os.environ.setdefault("CI", "1")
