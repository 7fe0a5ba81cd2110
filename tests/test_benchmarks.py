"""Smoke tests of the benchmark scripts (their numbers live in the READMEs, not in tests)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_timing_quick(tmp_path):
    res = _run([os.path.join(ROOT, "benchmarks", "timing.py"), "--quick"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for mode in ("diagonal", "none", "full"):
        assert f"| {mode} |" in res.stdout
    assert (tmp_path / "runs" / "timing_quick.png").stat().st_size > 10_000


def test_speed_table(tmp_path):
    res = _run([os.path.join(ROOT, "benchmarks", "speed.py"), "--sizes", "S1", "--runs", "1", "--variants",
                "fused/python", "fused/cpp"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| S1")]
    assert len(rows) == 2 and all(line.count("×") == 2 for line in rows)


def test_speed_table_every_config(tmp_path):
    for config in ("article", "packed", "bidir"):
        res = _run([os.path.join(ROOT, "benchmarks", "speed.py"), "--sizes", "S1", "--runs", "1", "--variants",
                    "fused/cpp", "--config", config], tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        rows = [line for line in res.stdout.splitlines() if line.startswith("| S1")]
        assert len(rows) == 2 and all(line.count("×") == 1 for line in rows), res.stdout
        assert "GEMM paths" in res.stdout


def test_busy_cpu_table(tmp_path):
    res = _run([os.path.join(ROOT, "benchmarks", "busy_cpu.py"), "--steps", "3", "--hogs", "1", "--hog-kinds", "spin"],
               tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| none |") or line.startswith("| 1 x")]
    assert len(rows) == 2 and rows[1].count("x |") == 2, res.stdout


def test_stateful_lm_tiny(tmp_path):
    res = _run([os.path.join(ROOT, "benchmarks", "stateful_lm.py"), "--cells", "lstm", "clip10", "--tokens", "4000",
                "--vocab", "200", "--nhid", "16", "--epochs", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [line for line in res.stdout.splitlines() if line.startswith("| nn.LSTM") or line.startswith("| Peep")]
    assert len(rows) == 2 and "1.00x" in rows[0], res.stdout
    assert "| 10 |" in rows[1]  # the clip bounds max |c|


def test_startup_table(tmp_path):
    res = _run([os.path.join(ROOT, "benchmarks", "startup.py"), "--repeat", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| PeepholeLSTM |" in res.stdout and "| nn.LSTM |" in res.stdout
