"""A local Prefect server: the dashboard (UI) and the API the flows report to.

SQLite under ``PREFECT_HOME`` by default; a team sets ``PREFECT_API_DATABASE_CONNECTION_URL``
(e.g. ``postgresql+asyncpg://user:pass@host/prefect``) and it is passed through.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server at {url} did not answer within {timeout:.0f} s")


@contextmanager
def start_server(
    host: str = "127.0.0.1", port: int = 4200, home: str | Path | None = None
) -> Iterator[subprocess.Popen]:
    """Runs ``prefect server start`` until the block ends; yields once the API answers."""
    environment = dict(os.environ)
    environment.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if home is not None:
        environment["PREFECT_HOME"] = str(home)
    # the UI asks the API at PREFECT_UI_API_URL, which otherwise stays at the default port
    environment["PREFECT_SERVER_API_HOST"] = host
    environment["PREFECT_SERVER_API_PORT"] = str(port)
    environment["PREFECT_UI_API_URL"] = f"http://{host}:{port}/api"
    command = [
        str(Path(sys.executable).with_name("prefect")),
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
    ]
    home = Path(environment.get("PREFECT_HOME", Path.home() / ".prefect"))
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"server-{port}.log"  # not a pipe: a long-running server never blocks
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, env=environment, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
    try:
        try:
            wait_until_healthy(f"http://{host}:{port}", process)
        except (RuntimeError, TimeoutError) as error:
            tail = log_path.read_text()[-3000:]
            raise RuntimeError(f"{error}; its log ({log_path}) ends:\n{tail}") from None
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
