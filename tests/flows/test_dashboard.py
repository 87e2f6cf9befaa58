"""`voxelflow dashboard`: a real server, a tiny flow reporting to it, and its flow-run page
in headless Chromium showing the metrics artifact (skipped without Chromium/Playwright)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from flows.server import wait_until_healthy
from tests.conftest import REPO
from tests.flows.test_serve import free_port
from voxelflow.metrics import classification_metrics

pytestmark = pytest.mark.slow

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
ARTIFACTS = Path(os.environ.get("VOXELFLOW_TEST_ARTIFACTS", REPO / "test-artifacts"))
FLOW = """
from prefect import flow
from flows.pipeline import publish_metrics

@flow(name="dashboard-check")
def check(root):
    publish_metrics(root)

print(check(root={root!r}, return_state=True).state_details.flow_run_id)
"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (README: apt install chromium)"
)
def test_the_dashboard_shows_a_runs_metrics_artifact(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    (tmp_path / "metrics").mkdir()
    labels = np.arange(30) % 3
    probabilities = np.full((30, 3), 0.2)
    probabilities[np.arange(30), labels] = 0.6
    metrics = classification_metrics(labels, probabilities, ["a", "b", "c"], 50, 0)
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps(metrics))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).with_name("voxelflow")), "dashboard", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_healthy(url, dashboard)
        assert dashboard.stdout.readline().startswith(f"dashboard: {url}")
        flow = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FLOW.format(root=str(tmp_path)))],
            env={**env, "PREFECT_API_URL": f"{url}/api", "PREFECT_HOME": str(tmp_path / "c")},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert flow.returncode == 0, flow.stderr[-3000:]
        run_id = flow.stdout.strip().splitlines()[-1]

        with playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/runs/flow-run/{run_id}")
            tab = page.get_by_text("Artifacts", exact=True).first
            tab.wait_for(timeout=60_000)
            tab.click()
            page.get_by_text("evaluation-metrics").first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "Completed" in body and "bootstrap intervals" in body
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            browser.close()
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        dashboard.terminate()
        try:
            dashboard.wait(timeout=60)
        except subprocess.TimeoutExpired:
            dashboard.kill()
    with pytest.raises(OSError):  # stopping the command stopped the server too
        urllib.request.urlopen(f"{url}/api/health", timeout=5)
