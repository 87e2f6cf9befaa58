"""The whole pipeline under ``dvc repro``, killed with SIGKILL at random moments (inside the
data stages and inside training), then rerun: it completes, and every output equals the
output of an uninterrupted run of the pipeline flow in another workspace (determinism and
crash-resume at once)."""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time

import pytest

from tests import e2e
from tests.reliability.helpers import kill_group, start

TIMINGS = ("seconds", "date")
"""Keys whose values are wall-clock times: with the report's "written" time, the only bytes
allowed to differ."""


def without_timings(path: str, data: bytes) -> object:
    """A file's content for comparison: JSON without wall-clock values, else the bytes."""

    def strip(node):
        if isinstance(node, dict):
            return {key: strip(value) for key, value in node.items() if key not in TIMINGS}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return node

    if path.endswith(".json"):
        return strip(json.loads(data))
    if path.endswith(".jsonl"):
        return [strip(json.loads(line)) for line in data.splitlines() if line.strip()]
    if path.endswith(".html"):  # the report says when it was written, and training's time
        data = re.sub(rb"written \d{4}-\d\d-\d\d \d\d:\d\d", b"written <time>", data)
        return re.sub(rb"seconds</td><td>[\d.]+<", b"seconds</td><td><time><", data)
    return data


def differences(mine: dict[str, bytes], reference: dict[str, bytes]) -> list[str]:
    found = [f"{path}: only in one run" for path in sorted(set(mine) ^ set(reference))]
    for path in sorted(set(mine) & set(reference)):
        ours, theirs = without_timings(path, mine[path]), without_timings(path, reference[path])
        if ours != theirs:
            if isinstance(ours, bytes):
                at = next(
                    (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
                    min(len(ours), len(theirs)),
                )
                ours, theirs = ours[max(0, at - 80) : at + 40], theirs[max(0, at - 80) : at + 40]
            found.append(f"{path}: differs: {ours!r} != {theirs!r}"[:600])
    return found


class Watched:
    """``dvc repro`` as a process group whose output lines are collected as they come."""

    def __init__(self, root):
        self.process = start([sys.executable, "-m", "dvc", "repro"], root)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def _stage_start(self) -> int | None:
        """The index of the last "Running stage" line (None: no stage has started)."""
        starts = [i for i, line in enumerate(self.lines) if line.startswith("Running stage")]
        return starts[-1] if starts else None

    def running(self) -> str | None:
        start = self._stage_start()
        return None if start is None else self.lines[start].split("'")[1]

    def training(self) -> bool:
        """Whether the stage now running has started to train (its device line is out)."""
        start = self._stage_start() or 0
        return any("voxelflow.devices: training on" in line for line in self.lines[start:])

    def kill_after(self, condition, timeout: float = 300) -> str | None:
        """SIGKILLs the group once ``condition()`` holds; returns the stage it was running
        (None: dvc finished first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            if condition():
                stage = self.running()
                kill_group(self.process)
                self.reader.join(10)
                return stage
            time.sleep(0.05)
        self.reader.join(10)
        assert self.process.poll() is not None, "dvc repro neither finished nor was killed"
        return None


@pytest.mark.slow
def test_dvc_repro_killed_repeatedly_ends_identical_to_an_uninterrupted_run(
    repro_reference, tmp_path
):
    root = e2e.make_repository(tmp_path, repro_reference["params"])
    rng = random.Random(2026)
    killed_in = []
    # 1: at a random moment of the data stages; 2, 3: a random moment into a training stage
    run = Watched(root)
    started, delay = time.monotonic(), rng.uniform(2.0, 8.0)
    killed_in.append(run.kill_after(lambda: time.monotonic() - started > delay))
    # A training stage of these tiny params lasts a few seconds, mostly TensorFlow's import:
    # the clock starts when the stage says it trains, not when dvc starts it, so the kill
    # lands inside training on a fast machine as on a slow one.
    for stage in ("pretrain", "finetune"):
        run = Watched(root)
        seen, delay = [], rng.uniform(0.0, 1.0)

        def inside(run=run, stage=stage, seen=seen, delay=delay):
            if not seen and run.running() == stage and run.training():
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] > delay

        killed_in.append(run.kill_after(inside))
    assert None not in killed_in and {"pretrain", "finetune"} & set(killed_in), killed_in
    final = e2e.dvc("repro", cwd=root)
    assert "Running stage" in final.stdout, killed_in
    status = e2e.dvc("status", cwd=root).stdout
    assert status.strip().startswith("Data and pipelines are up to date"), status
    assert differences(e2e.output_bytes(root), repro_reference["outputs"]) == [], killed_in
    assert not list(root.rglob("*.partial")) and not list(root.rglob(".*.tmp*")), killed_in
