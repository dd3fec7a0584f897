"""`make ui`: mlflow ui on the tracking store, bound to 127.0.0.1, with its URL printed first."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest_mlflow import free_port

REPO = Path(__file__).resolve().parent.parent
START_SECONDS = 90


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port`, from /proc/net/tcp{,6} (hex, little-endian IPv4)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                addresses.add(address)
    return addresses


@pytest.mark.slow
def test_make_ui_serves_the_store_on_loopback_and_prints_the_url(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = MlflowClient(tracking_uri=store).create_experiment("ui-probe", (tmp_path / "artifacts").as_uri())
    seed_dir = tmp_path / "runs" / "ui-probe" / "abcd1234" / "seed_0"  # a run directory that tracked into it
    seed_dir.mkdir(parents=True)
    (seed_dir / "tracking.json").write_text(json.dumps({store: {"ui-probe": {"experiment_id": experiment_id,
                                                                              "runs": {}}}}))
    port = free_port()
    # -o: treat the install stamp as up to date; BIN: this interpreter's mlflow.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "ui", f"PORT={port}",
               f"TRACKING_URI={store}", f"BIN={Path(sys.executable).parent}", f"RUNS={tmp_path / 'runs'}"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        first_line = process.stdout.readline()
        assert first_line.strip() == f"MLflow UI on http://127.0.0.1:{port} (store: {store}); the runs table of " \
                                     "each experiment:"
        assert process.stdout.readline().strip() == f"ui-probe: http://127.0.0.1:{port}/#/experiments/" \
                                                    f"{experiment_id}/runs?workflowType=machine_learning"
        deadline, experiments = time.monotonic() + START_SECONDS, None
        while experiments is None and time.monotonic() < deadline:
            assert process.poll() is None, f"make ui exited with {process.returncode}: {process.stdout.read()}"
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=2) as response:
                    experiments = json.load(response)["experiments"]
            except OSError:
                time.sleep(0.5)
        assert experiments is not None, f"mlflow ui did not answer on port {port} within {START_SECONDS} s"
        assert "ui-probe" in {experiment["name"] for experiment in experiments}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only, never 0.0.0.0
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        process.stdout.close()
