"""The workspace lock: a second run is refused with the holder named; a killed holder
leaves no stale lock; the stages of the run that holds it go on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.reliability.helpers import kill_group, stage_command, start, write_params
from voxelflow.lock import (
    LOCK_FILE,
    TOKEN_VARIABLE,
    WorkspaceBusyError,
    stage_lock,
    workspace_lock,
)

HOLD = (
    "import sys, time\n"
    "from voxelflow.lock import workspace_lock\n"
    "with workspace_lock(sys.argv[1], 'test holder'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path``."""
    process = start([sys.executable, "-c", HOLD, str(tmp_path)], tmp_path)
    assert process.stdout.readline().strip() == "held"
    yield process
    kill_group(process)


def test_a_second_run_is_refused_naming_the_holder(holder, tmp_path):
    with (
        pytest.raises(WorkspaceBusyError, match=rf"pid {holder.pid} .*test holder"),
        workspace_lock(tmp_path, "second"),
    ):
        pass


def test_a_stage_is_refused_while_another_run_holds_the_workspace(holder, tmp_path):
    params = write_params(tmp_path / "params.yaml", {"synth": {"subjects_per_class": 2}})
    out = tmp_path / "data" / "raw"
    process = subprocess.run(
        stage_command("synth", "--params", str(params), "--out", str(out)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert process.returncode == 1
    assert f"pid {holder.pid}" in process.stderr and "in use" in process.stderr
    assert not out.exists()


def test_the_lock_dies_with_its_holder(holder, tmp_path):
    kill_group(holder)  # SIGKILL: no clean-up code runs
    started = time.monotonic()
    with workspace_lock(tmp_path, "after the crash") as record:
        assert record["pid"] == os.getpid()
    assert time.monotonic() - started < 5


def test_waiting_for_the_lock(holder, tmp_path):
    started = time.monotonic()
    with pytest.raises(WorkspaceBusyError), workspace_lock(tmp_path, "patient", wait_seconds=1):
        pass
    assert 0.9 < time.monotonic() - started < 5


def test_the_holding_run_and_its_children_share_the_lock(tmp_path):
    with workspace_lock(tmp_path, "pipeline") as record:
        assert os.environ[TOKEN_VARIABLE] == record["token"]
        with workspace_lock(tmp_path, "a stage of it") as inner:  # same process
            assert inner["token"] == record["token"]
        child = subprocess.run(  # a stage that DVC starts for this run
            [sys.executable, "-c", HOLD.replace("time.sleep(600)", "pass"), str(tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert child.returncode == 0, child.stderr
        stranger = subprocess.run(  # any other run
            [sys.executable, "-c", HOLD, str(tmp_path)],
            capture_output=True,
            text=True,
            env={
                **{k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE},
                "PYTHONPATH": os.getcwd(),
            },
        )
        assert stranger.returncode != 0 and "in use by pid" in stranger.stderr
    assert TOKEN_VARIABLE not in os.environ
    assert (tmp_path / LOCK_FILE).read_text() == ""  # released: no holder recorded


def test_a_pipeline_run_is_refused_while_another_holds_the_workspace(
    holder, tmp_path, prefect_harness
):
    from flows.pipeline import pipeline

    with pytest.raises(WorkspaceBusyError, match=f"pid {holder.pid}"):
        pipeline(root=str(tmp_path))


POOL = (
    "import multiprocessing, sys, time\n"
    "from voxelflow.lock import workspace_lock\n"
    "def idle(_):\n"
    "    time.sleep(600)\n"
    "if __name__ == '__main__':\n"
    "    with workspace_lock(sys.argv[1], 'pool holder'):\n"
    "        pool = multiprocessing.get_context('fork').Pool(2)\n"
    "        pool.map_async(idle, range(2))\n"
    "        time.sleep(1)\n"
    "        print('held', flush=True)\n"
    "        time.sleep(600)\n"
)


def test_the_lock_dies_with_its_holder_even_if_its_pool_workers_live_on(tmp_path):
    """A stage killed alone leaves its forked workers behind; they must not keep the lock."""
    process = start([sys.executable, "-c", POOL, str(tmp_path)], tmp_path)
    try:
        assert process.stdout.readline().strip() == "held"
        os.kill(process.pid, signal.SIGKILL)  # the stage only, not its process group
        process.wait()
        with workspace_lock(tmp_path, "after the crash") as record:
            assert record["pid"] == os.getpid()
    finally:
        kill_group(process)


ORPHAN = (
    "import subprocess, sys, time\n"
    "from voxelflow.lock import workspace_lock\n"
    "stage = 'import sys, time\\nfrom voxelflow.lock import stage_lock\\n' \\\n"
    "    'with stage_lock(sys.argv[1], \"preprocess\"):\\n' \\\n"
    "    '    print(\"stage\", flush=True)\\n    time.sleep(600)\\n'\n"
    "with workspace_lock(sys.argv[1], 'flow'):\n"
    "    child = subprocess.Popen([sys.executable, '-c', stage, sys.argv[1]],\n"
    "                             stdout=subprocess.PIPE, text=True)\n"
    "    child.stdout.readline()\n"
    "    print(child.pid, flush=True)\n"
    "    time.sleep(600)\n"
)


def test_a_stage_orphaned_by_its_dead_run_still_blocks_a_new_runs_stage(tmp_path):
    process = start([sys.executable, "-c", ORPHAN, str(tmp_path)], tmp_path)
    try:
        orphan = int(process.stdout.readline())
        os.kill(process.pid, signal.SIGKILL)  # the run dies; its stage goes on
        process.wait()
        with (
            workspace_lock(tmp_path, "new run"),  # the run's lock is free again...
            pytest.raises(WorkspaceBusyError, match=f"pid {orphan} .*stage preprocess"),
            stage_lock(tmp_path, "preprocess"),  # ...but not the stage's
        ):
            pass
    finally:
        kill_group(process)
