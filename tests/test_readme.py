"""The README's quick start runs as written and ends in its shape check."""

import os
import re

import numpy as np

from .helpers import ROOT  # noqa: E402


def _quick_start() -> str:
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quick_start_runs(backend):
    code = _quick_start()
    assert len(code.strip().splitlines()) <= 10
    assert "assert" in code.strip().splitlines()[-1]
    exec(compile(code, "README.md", "exec"), {})


def test_readme_commands_are_the_ci_commands():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    test_cmd = 'pip install torch==2.13.0 && pip install -e ".[dev]" && pytest'
    assert test_cmd in text and test_cmd in ci


def test_readme_deploy_section_runs(tmp_path, monkeypatch):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = re.search(r"## Deploy\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md#deploy", "exec"), {})
    assert (tmp_path / "lstm.onnx").exists() and (tmp_path / "lstm.pt2").exists()


def test_readme_python_forecast_runs(tmp_path, monkeypatch):
    """The README's "From Python" example (a known-ahead promotion plan) runs as written; its
    forecast follows the plan (+3 on promotion days; ignoring it would miss by 3)."""
    import pytest

    pytest.importorskip("lightning")
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    code = re.search(r"\*\*From Python\*\*.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md#from-python", "exec"), scope)
    out, frame, dm = scope["out"], scope["frame"], scope["dm"]
    assert dm.future_labels(0) == ["2025-02-01", "2025-02-02", "2025-02-03"]
    plan = frame["promo"].to_numpy()[397:]
    want = 50 + np.sin(np.arange(397, 400) * 2 * np.pi / 7) + 3 * plan  # the rule that made the data
    assert np.abs(out["forecast"][0].numpy() - want).max() < 0.3  # 0.02-0.04 over five seeds
