"""The Prefect flow over the DVC stages, under a temporary Prefect server."""

import asyncio

import pytest

from flows.pipeline import pipeline, stage_order
from tests import e2e

pytestmark = pytest.mark.slow

STAGES = ["synth", "ingest", "preprocess", "augment-cache", "pretrain", "finetune", "evaluate"]


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
    ]:
        assert order.index(before) < order.index(after)


def test_flow_runs_each_stage_as_a_task_and_publishes_metrics(
    tmp_path, tiny_params_dict, prefect_harness
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    root = e2e.make_repository(tmp_path, tiny_params_dict)
    state = pipeline(root=str(root), return_state=True)
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
    assert any(artifact.key == "evaluation-metrics" for artifact in artifacts)

    again = pipeline(root=str(root))
    assert set(again["stages"].values()) == {"skipped"}
