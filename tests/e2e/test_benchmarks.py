"""`bench/run_all.py --quick` runs to the end and prints figures (not asserted against
time: benchmarks are not tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.run_all import BENCHES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_benchmarks_run(tmp_path: Path) -> None:
    log = tmp_path / "benchmarks.md"  # a test run must not add figures to the docs
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "FEDERATION_BENCH_LOG": str(log)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    figures = (
        "initial:",
        "ratio deploy/raw:",
        "all: p99",
        "server RSS:",
        "failover:",
        "flood:",
        "propagation, write -> line",
        "etcd in use",
        "audit entries:",
    )
    for figure in figures:
        assert figure in out, f"{figure!r} not printed:\n{out[-4000:]}"
    text = log.read_text()
    assert "## Results log" in text and text.count("\n- ") == len(BENCHES), text
