"""The pipeline flow: every DVC stage as its own Prefect task, in the order DVC gives.

The flow does not restate the DAG: it asks DVC for the stages of ``dvc.yaml`` and their
dependencies, and runs each with ``dvc repro --single-item`` (which skips a stage whose deps,
params and outs are unchanged). The evaluation metrics are published as a table artifact.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import networkx as nx
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from voxelflow.lock import workspace_lock

SKIPPED_MARKER = "didn't change, skipping"
EPOCH = re.compile(r"^Epoch (\d+)/(\d+)")  # Keras's per-epoch line (verbose=2)
METRICS_FILE = Path("metrics/eval.json")
TRANSIENT_MARKERS = (
    "No space left on device",
    "Resource temporarily unavailable",
    "Unable to acquire lock",
    "Connection reset",
    "Connection refused",
    "timed out",
    "Stale file handle",
)


class StageError(RuntimeError):
    """A stage's dvc run failed; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def is_transient(return_code: int, output: str) -> bool:
    """Killed by a signal, or failed on I/O, locks or the network: worth a retry. Bad data,
    bad params or a bug fail the same way again, so they are not retried."""
    killed = return_code < 0 or re.search(r"exited with -\d+", output) is not None
    return killed or any(marker in output for marker in TRANSIENT_MARKERS)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageError as error:
        return error.transient
    except Exception:
        return False
    return False


def stage_order(root: str | Path) -> list[str]:
    """The stages DVC knows (``dvc.yaml`` stages, ``.dvc`` files) in dependency order, as
    ``dvc repro`` addresses them from ``root`` (ties broken by name)."""
    from dvc.repo import Repo

    previous = os.getcwd()
    os.chdir(root)  # DVC addresses stages relative to the working directory
    try:
        with Repo(".") as repo:
            graph = repo.index.graph
            names = {stage: stage.addressing for stage in graph.nodes}
            # DVC's edges point from a stage to the stages it depends on.
            upstream_first = graph.reverse(copy=True)
            order = nx.lexicographical_topological_sort(upstream_first, key=lambda s: names[s])
            return [names[stage] for stage in order]
    finally:
        os.chdir(previous)


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = bin_dir + os.pathsep + environment.get("PATH", "")
    environment.setdefault("DVC_NO_ANALYTICS", "1")
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    environment.setdefault("PYTHONUNBUFFERED", "1")
    return environment


@task(retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_transient)
def run_stage(root: str, stage: str, force: bool = False) -> str:
    """Runs one stage through DVC; returns ``"ran"`` or ``"skipped"`` (nothing changed)."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        command.append("--force")
    logger.info("running %s", " ".join(command[2:]))
    output = []
    with subprocess.Popen(
        command,
        cwd=root,
        env=_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as process:
        progress = None  # a progress artifact for a training stage: epochs done / planned
        for line in process.stdout:
            line = line.rstrip()
            output.append(line)
            if line.strip():
                logger.info(line)
            epoch = EPOCH.match(line.strip())
            if epoch:
                done, planned = int(epoch.group(1)) - 1, int(epoch.group(2))
                text = f"{stage}: epoch {done + 1} of {planned} (at most: early stopping)"
                if progress is None:
                    progress = create_progress_artifact(
                        100 * done / planned, key=f"progress-{stage}", description=text
                    )
                else:
                    update_progress_artifact(progress, 100 * done / planned, description=text)
        if progress is not None and process.wait() == 0:
            update_progress_artifact(progress, 100.0, description=f"{stage}: done")
    if process.returncode != 0:
        tail = "\n".join(output[-20:])
        transient = is_transient(process.returncode, "\n".join(output))
        raise StageError(
            f"stage {stage!r} failed (dvc exit code {process.returncode}, "
            f"{'transient: will retry' if transient else 'not transient'}):\n{tail}",
            transient,
        )
    return "skipped" if any(SKIPPED_MARKER in line for line in output) else "ran"


@task
def publish_metrics(root: str) -> dict:
    """Publishes ``metrics/eval.json`` as a Prefect table artifact (the dashboard shows it):
    each headline metric with its bootstrap interval, then recall and precision per class."""
    metrics = json.loads((Path(root) / METRICS_FILE).read_text())
    intervals = metrics.get("confidence_intervals", {})

    def row(name: str, value, interval) -> dict:
        low, high = interval if interval else (None, None)
        return {"metric": name, "value": value, "interval_low": low, "interval_high": high}

    keys = (
        "balanced_accuracy",
        "accuracy",
        "macro_auc_ovr",
        "cohen_kappa",
        "log_loss",
        "brier",
        "ece",
        "sensitivity",
        "specificity",
    )
    rows = [row(key, metrics[key], intervals.get(key)) for key in keys if key in metrics]
    rows.append(row("test_volumes", metrics.get("test_volumes"), None))
    for name, values in metrics.get("per_class", {}).items():
        per_class = intervals.get("per_class", {}).get(name, {})
        rows.append(row(f"{name} recall", values["recall"], per_class.get("recall")))
        rows.append(row(f"{name} precision", values["precision"], per_class.get("precision")))
    level = intervals.get("level")
    create_table_artifact(
        key="evaluation-metrics",
        table=rows,
        description="Test-split metrics of the current model"
        + (f" with {int(level * 100)}% bootstrap intervals" if level else ""),
    )
    return metrics


@flow(name="voxelflow-pipeline", log_prints=True)
def pipeline(root: str = ".", force: bool = False) -> dict:
    """Runs every DVC stage of the repository at ``root`` as a Prefect task, in DAG order.

    Returns:
        ``{"stages": {name: "ran" | "skipped"}, "metrics": eval.json}``.
    """
    root = str(Path(root).resolve())
    outcomes = {}
    with workspace_lock(root, "voxelflow pipeline"):  # the stages run as part of this run
        for stage in stage_order(root):
            outcomes[stage] = run_stage.with_options(name=f"stage-{stage}")(root, stage, force)
        metrics = publish_metrics(root) if (Path(root) / METRICS_FILE).is_file() else {}
    return {"stages": outcomes, "metrics": metrics}
