"""`voxelflow serve` against a real Prefect server process: the deployment and its cron."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows.server import start_server
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(url: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{url}/api{path}",
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_serve_creates_a_scheduled_deployment_with_one_run_at_a_time(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with start_server(port=port, home=tmp_path / "prefect-home"):
        env = {
            **os.environ,
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_HOME": str(tmp_path / "client-home"),
            "PYTHONPATH": str(REPO),
        }
        serving = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("voxelflow")),
                "serve",
                "--cron",
                "0 2 * * 1",
                "--root",
                str(tmp_path),
                "--name",
                "nightly",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deployments = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not deployments:
                assert serving.poll() is None, serving.stdout.read()
                deployments = api(
                    url, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}}
                )
                time.sleep(1)
            assert deployments, "the deployment never appeared"
            deployment = deployments[0]
            crons = [item["schedule"].get("cron") for item in deployment["schedules"]]
            assert crons == ["0 2 * * 1"]
            assert deployment["parameters"] == {"root": str(tmp_path.resolve())}
            limit = deployment.get("global_concurrency_limit") or {}
            assert deployment.get("concurrency_limit") == 1 or limit.get("limit") == 1
            flows = api(url, "/flows/filter", {})
            assert [flow["name"] for flow in flows] == ["voxelflow-retrain"]
        finally:
            serving.terminate()
            serving.wait(timeout=60)


def test_deploy_creates_a_work_pool_deployment(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with start_server(port=port, home=tmp_path / "prefect-home"):
        api(url, "/work_pools/", {"name": "gpu-nodes", "type": "process"})
        env = {
            **os.environ,
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_HOME": str(tmp_path / "client-home"),
        }
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("voxelflow")),
                "deploy",
                "--pool",
                "gpu-nodes",
                "--cron",
                "30 3 * * *",
                "--root",
                str(REPO),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "on work pool gpu-nodes" in result.stdout
        (deployment,) = api(
            url, "/deployments/filter", {"deployments": {"name": {"any_": ["retrain"]}}}
        )
        assert deployment["work_pool_name"] == "gpu-nodes"
        assert deployment["entrypoint"] == "flows/retrain.py:retrain"
        assert [item["schedule"]["cron"] for item in deployment["schedules"]] == ["30 3 * * *"]
        limit = deployment.get("global_concurrency_limit") or {}
        assert deployment.get("concurrency_limit") == 1 or limit.get("limit") == 1
