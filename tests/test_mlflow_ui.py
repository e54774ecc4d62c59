"""`fuserank ui`: the MLflow UI over the configured store, bound to 127.0.0.1, serves the runs."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from fuserank import tracking
from fuserank.config import RunConfig, with_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        text = response.read().decode()
    return json.loads(text) if text.startswith("{") else {"text": text}


def test_ui_command_is_local_single_worker_without_jobs():
    command, env = tracking.ui_command(RunConfig().tracking, 5123)
    assert command[1] == "ui" and command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123" and command[command.index("--workers") + 1] == "1"
    assert command[command.index("--backend-store-uri") + 1] == "sqlite:///mlruns/mlflow.db"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


@pytest.mark.slow  # the server takes 10-70 s to start on 2 busy cores
def test_ui_serves_the_recorded_runs_over_rest(tmp_path):
    store = tmp_path / "mlruns"
    config = with_overrides(RunConfig(), [f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}",
                                          f"tracking.artifact_root={store / 'artifacts'}", "tracking.experiment=ui"])
    with tracking.tracked_run(config.tracking, "planted-run", {"kind": "test"}) as run_id:
        tracking.log_metrics({"test_ndcg_at_10": 0.123})
    port = free_port()
    command, env = tracking.ui_command(config.tracking, port)
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if request(f"{base}/health").get("text", "").strip() == "OK":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "MLflow UI did not come up within 120 s"
            time.sleep(0.5)
        experiment = request(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=ui")["experiment"]
        found = request(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
        runs = found["runs"]
        assert [r["info"]["run_id"] for r in runs] == [run_id]
        assert runs[0]["info"]["run_name"] == "planted-run"
        assert {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]} == {"test_ndcg_at_10": 0.123}
        # Bound to loopback only: the port is closed on any other local address.
        other = socket.gethostbyname(socket.gethostname())
        if not other.startswith("127."):
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((other, port)) != 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
