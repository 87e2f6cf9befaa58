"""The workspace lock: one pipeline run at a time writes a workspace's artifacts.

The lock is an advisory ``flock`` on ``<workspace>/.voxelflow.lock``. The kernel releases it
when its holder exits, however it exits (SIGKILL included), so a crashed run never leaves a
stale lock behind. The file holds who took it (pid, host, command, time), so a refused run
can say which process is in the way.

A run that holds the lock passes a token to its child processes through the environment
(``VOXELFLOW_LOCK_TOKEN``): the pipeline flow takes the lock, and the stages that DVC starts
for it see their own run's token and go on, while any other run is refused. Every stage
process also takes a lock of its own (``.voxelflow.stage.lock``, never shared): should the
run that started it die while the stage goes on, a new run's stage is still refused until
the orphan ends.

Forked children (a stage's process pool) close their copy of a held lock at once, so the
lock never outlives the process that took it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

LOCK_FILE = ".voxelflow.lock"
STAGE_LOCK_FILE = ".voxelflow.stage.lock"
TOKEN_VARIABLE = "VOXELFLOW_LOCK_TOKEN"

_held: set[int] = set()  # descriptors of the locks this process holds


def _close_held_in_child() -> None:
    for descriptor in list(_held):
        with suppress(OSError):
            os.close(descriptor)
    _held.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class WorkspaceBusyError(RuntimeError):
    """Another run holds the workspace; the message names it."""


def read_holder(workspace: str | Path = ".", lock_file: str = LOCK_FILE) -> dict:
    """What the lock file says about its holder ({} when empty or unreadable)."""
    try:
        return json.loads((Path(workspace) / lock_file).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "a process that has not yet recorded itself"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('purpose')}: "
        f"`{holder.get('command')}`), since {holder.get('since')}"
    )


def _acquire(
    descriptor: int, workspace: Path, wait_seconds: float, lock_file: str, shared: bool
) -> dict | None:
    """Takes the flock (None), or returns the holder when this process's run holds it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
        holder = read_holder(workspace, lock_file)
        token = os.environ.get(TOKEN_VARIABLE)
        if shared and token and holder.get("token") == token:
            return holder
        if time.monotonic() >= deadline:
            raise WorkspaceBusyError(
                f"{workspace.resolve()}: the workspace is in use by {describe(holder)}. "
                "Two runs must not write the same artifacts at once: wait for it to finish "
                "or stop it, then rerun (the lock is released when that process exits, even "
                "if it is killed)"
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))


@contextmanager
def workspace_lock(
    workspace: str | Path = ".",
    purpose: str = "voxelflow",
    wait_seconds: float = 0.0,
    lock_file: str = LOCK_FILE,
    shared: bool = True,
) -> Iterator[dict]:
    """Holds the workspace lock for the block; yields the holder record.

    Inside a run that holds it already (same token in the environment, when ``shared``),
    the block runs as part of that run. Otherwise, if another process holds it, waits up to
    ``wait_seconds`` and then raises :class:`WorkspaceBusyError` naming the holder.
    """
    workspace = Path(workspace)
    path = workspace / lock_file
    # O_NOFOLLOW: a symlink planted as the lock file is refused, not truncated
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        holder = _acquire(descriptor, workspace, wait_seconds, lock_file, shared)
        if holder is not None:  # part of the run that holds the lock
            yield holder
            return
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
            "command": " ".join(sys.argv)[:300],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": uuid.uuid4().hex,
        }
        _held.add(descriptor)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        previous = os.environ.get(TOKEN_VARIABLE)
        if shared:
            os.environ[TOKEN_VARIABLE] = holder["token"]
        try:
            yield holder
        finally:
            if shared and previous is None:
                os.environ.pop(TOKEN_VARIABLE, None)
            elif shared:
                os.environ[TOKEN_VARIABLE] = previous
            os.ftruncate(descriptor, 0)
    finally:
        _held.discard(descriptor)
        os.close(descriptor)  # releases the flock


@contextmanager
def stage_lock(workspace: str | Path = ".", stage: str = "stage") -> Iterator[dict]:
    """The workspace lock (shared with the run that started the stage), then the stage lock
    (never shared: one stage process at a time, even if the run that started it died)."""
    with (
        workspace_lock(workspace, f"stage {stage}") as holder,
        workspace_lock(workspace, f"stage {stage}", lock_file=STAGE_LOCK_FILE, shared=False),
    ):
        yield holder
