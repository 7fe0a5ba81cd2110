"""Helpers shared by the test files (fixtures are in ``conftest.py``)."""

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (peephole, candidate_peephole): every configuration of the cell
MODES = [("diagonal", False), ("diagonal", True), ("full", False), ("full", True), ("none", False)]


def randomized(module: torch.nn.Module, scale: float = 0.6) -> torch.nn.Module:
    """``module`` with every parameter drawn from U(-scale, scale): non-zero and larger than
    the default initialisation, so that peepholes matter."""
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-scale, scale)
    return module


def run_python(args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """``python *args`` in a new process (a script, ``-m module`` or ``-c code``), output captured
    as text; ``env``: variables added to this process's environment."""
    full = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)
