"""The Prefect flow over the DVC stages, under a temporary Prefect server."""

import asyncio
import json

import pytest

from flows.pipeline import pipeline, stage_order
from tests import e2e

pytestmark = pytest.mark.slow

STAGES = [
    "synth",
    "ingest",
    "preprocess",
    "augment-cache",
    "pretrain",
    "finetune",
    "evaluate",
    "report",
]


def test_stage_order_comes_from_dvc(tmp_path, tiny_params_dict):
    root = e2e.make_repository(tmp_path, tiny_params_dict)
    order = stage_order(root)
    assert sorted(order) == sorted(STAGES)
    for before, after in [
        ("synth", "ingest"),
        ("ingest", "preprocess"),
        ("preprocess", "augment-cache"),
        ("preprocess", "pretrain"),
        ("pretrain", "finetune"),
        ("augment-cache", "finetune"),
        ("finetune", "evaluate"),
        ("evaluate", "report"),
    ]:
        assert order.index(before) < order.index(after)


def test_flow_runs_each_stage_as_a_task_and_publishes_metrics(repro_reference):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    root, state = repro_reference["root"], repro_reference["state"]
    assert state.is_completed()
    result = state.result()
    assert result["stages"] == {name: "ran" for name in STAGES}
    assert result["metrics"]["test_volumes"] > 0

    async def inspect():
        async with get_client() as client:
            flow_run_id = state.state_details.flow_run_id
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            artifact = await client.read_artifacts()
            return tasks, artifact

    tasks, artifacts = asyncio.run(inspect())
    names = {task.name.rsplit("-", 1)[0] for task in tasks}
    assert {f"stage-{name}" for name in STAGES} <= names
    completed = [
        task for task in tasks if task.name.startswith("stage-") and task.state.is_completed()
    ]
    assert len(completed) == len(STAGES)
    progress = next(artifact for artifact in artifacts if artifact.key == "progress-finetune")
    assert progress.type == "progress" and float(progress.data) == 100.0
    table = next(artifact for artifact in artifacts if artifact.key == "evaluation-metrics")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    balanced = next(row for row in rows if row["metric"] == "balanced_accuracy")
    assert balanced["interval_low"] <= balanced["value"] <= balanced["interval_high"]

    again = pipeline(root=str(root))
    assert set(again["stages"].values()) == {"skipped"}


def test_transient_failures_are_told_apart():
    from flows.pipeline import is_transient

    assert is_transient(-9, "")  # killed by a signal
    assert is_transient(1, "OSError: [Errno 28] No space left on device")
    assert is_transient(255, "ERROR: failed to reproduce 'finetune': ... exited with -9")
    assert not is_transient(1, "ValueError: params.yaml: invalid params")


def test_a_deterministic_failure_fails_the_flow_without_retries(
    tmp_path, tiny_params_dict, prefect_harness
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    root = e2e.make_repository(tmp_path, tiny_params_dict)
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "typo_section: 1\n")
    state = pipeline(root=str(root), return_state=True)
    assert state.is_failed()
    assert "unknown key" in str(state.result(raise_on_failure=False))

    async def synth_runs():
        async with get_client() as client:
            flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            return [
                t
                for t in await client.read_task_runs(flow_run_filter=flow_filter)
                if t.name.startswith("stage-synth")
            ]

    runs = asyncio.run(synth_runs())
    assert len(runs) == 1 and runs[0].run_count == 1
    assert not (root / "data").exists()
