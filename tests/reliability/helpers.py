"""Helpers of the reliability suite: stages as real processes, killed and compared."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.e2e import environment


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_command(stage: str, *arguments: str) -> list[str]:
    return [sys.executable, "-m", f"stages.{stage}", *arguments]


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    """A process in its own process group (so a kill takes its pool workers with it)."""
    env = environment()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the process and every child: what a crash or the OOM killer does."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def journal_lines(staging: Path) -> int:
    path = staging / ".resume" / "journal.jsonl"
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def kill_when(
    process: subprocess.Popen, condition, timeout: float = 120, poll: float = 0.002
) -> bool:
    """Kills the process group as soon as ``condition()`` holds; False if the process ended
    first (nothing was killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            kill_group(process)
            return True
        time.sleep(poll)
    kill_group(process)
    raise AssertionError("the process neither finished nor reached the kill point in time")


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path (hidden leftovers included)."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial entries left in a folder."""
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name.startswith(".")
        and (".tmp" in entry.name or entry.name.endswith((".partial", ".old")))
    )
