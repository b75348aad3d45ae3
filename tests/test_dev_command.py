"""`giapranh dev` as a developer runs it: starts, serves the demo, refuses a twin, stops."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from giapranh.demo import EXAMPLE_SIGHTING, EXAMPLE_SIGHTING_UNIT
from giapranh.embedded import free_port
from tests.conftest import ROOT


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_dev_starts_everything_raises_the_example_alert_and_stops_on_ctrl_c(tmp_path):
    ports = {name: free_port() for name in ("ingest", "notifier", "matcher", "broker")}
    command = [sys.executable, "-m", "giapranh.cli", "dev", "--data-dir", str(tmp_path / "data"),
               *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]]
    output = tmp_path / "dev.out"
    with open(output, "wb") as sink:
        dev = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for(lambda: b"giapranh is running" in output.read_bytes() or dev.poll() is not None,
                 60, "the ready banner")
        assert dev.poll() is None, output.read_text()
        banner = output.read_text()
        assert f"http://127.0.0.1:{ports['ingest']}/docs" in banner
        keys = json.loads((tmp_path / "data" / "demo-keys.json").read_text())
        assert keys["CA-30307"] in banner

        accepted = httpx.post(f"http://127.0.0.1:{ports['ingest']}/v1/sightings",
                              json=EXAMPLE_SIGHTING,
                              headers={"Authorization": f"Bearer {keys[EXAMPLE_SIGHTING_UNIT]}"})
        assert accepted.status_code == 202, accepted.text

        def alert_visible():
            response = httpx.get(f"http://127.0.0.1:{ports['notifier']}/v1/alerts",
                                 headers={"Authorization": f"Bearer {keys['CA-30307']}"})
            return response.status_code == 200 and len(response.json()) == 1

        wait_for(alert_visible, 10, "the example alert")

        def alert_visible_list():
            return httpx.get(f"http://127.0.0.1:{ports['notifier']}/v1/alerts",
                             headers={"Authorization": f"Bearer {keys['CA-30307']}"}).json()

        bench = subprocess.run(
            [sys.executable, "-m", "giapranh.cli", "bench", "--data-dir", str(tmp_path / "data"),
             "--rate", "20", "--seconds", "2", "--hit-ratio", "0.5", "--pursuits", "3",
             "--checks", "20"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert bench.returncode == 0, bench.stdout + bench.stderr
        # Half the sightings are of people on no list: 20 alerts expected, not 40.
        assert "20 sightings/s (50% matching): 20/20 alerts" in bench.stdout
        assert "highest sustained rate: 20 sightings/s" in bench.stdout
        # Where the CPU went, per alert, each part of the stack found and counted.
        [cpu] = [line for line in bench.stdout.splitlines() if "CPU per alert:" in line]
        for part in ("load generator", "ingest", "matcher", "notifier", "broker", "PostgreSQL"):
            assert re.search(rf"{part} [1-9][\d,]* µs", cpu), (part, cpu)
        assert "pursuit: incident → alert at the neighbour: 3/3" in bench.stdout
        assert "pursuit: incident → hot list matches a plate read: 3/3" in bench.stdout
        assert "checks (POST /v1/checks, one at a time): 20" in bench.stdout

        # A child that dies is restarted, and the console says so.
        before = {alert["alert_id"] for alert in alert_visible_list()}
        details = json.loads((tmp_path / "data" / "dev.lock").read_text())
        os.kill(details["children"]["notifier"], signal.SIGKILL)
        wait_for(lambda: b"notifier restarted" in output.read_bytes(), 30, "the restart")

        def notifier_back():
            try:
                response = httpx.get(f"http://127.0.0.1:{ports['notifier']}/readyz", timeout=1)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        wait_for(notifier_back, 60, "the restarted notifier to be ready")
        assert b"notifier exited with code -9; restarting in 1 s" in output.read_bytes()
        # The restarted notifier serves the same alerts (PostgreSQL kept them).
        assert {alert["alert_id"] for alert in alert_visible_list()} == before

        twin = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert twin.returncode == 1
        assert "already running" in twin.stderr and str(ports["ingest"]) in twin.stderr
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            code = dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
            raise
    assert code == 0, output.read_text()[-3000:]
    assert "stopping giapranh dev" in output.read_text()
    for port in ports.values():
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
