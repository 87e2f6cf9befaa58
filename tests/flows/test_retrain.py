"""The retraining flow end to end under a temporary Prefect server: promote, stop early,
retrain on new data and reject by the margin, retry a transient failure, and leave the
champion untouched when a stage keeps failing."""

import asyncio
import csv
import shutil
from pathlib import Path

import pytest
import yaml

from tests import e2e
from voxelflow import registry
from voxelflow.params import parse_params
from voxelflow.synthdata import write_dataset

pytestmark = pytest.mark.slow

FAIL_ONCE = """import pathlib, sys
marker = pathlib.Path(".failed-once")
if not marker.exists():
    marker.write_text("x")
    sys.exit("Connection reset by peer (injected, transient)")
"""


def _set_params(root, **sections):
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _report_command(root, prefix: str):
    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    command = spec["stages"]["report"]["cmd"].split("&& ")[-1]
    spec["stages"]["report"]["cmd"] = f"{prefix} && {command}" if prefix else command
    (root / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def _add_volumes(root, tiny_params_dict, tmp_path):
    """New subjects from another synthetic draw, appended to the data folder and its table."""
    extra = tmp_path / "extra"
    more = e2e.merged(tiny_params_dict, {"seed": 99, "synth": {"subjects_per_class": 2}})
    write_dataset(
        extra,
        parse_params(e2e.merged(yaml.safe_load((root / "params.yaml").read_text()), more)),
        workers=1,
    )
    with open(extra / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(root / "incoming" / "labels.csv", "a", newline="") as handle:
        writer = csv.writer(handle)
        for row in rows:
            shutil.copy2(extra / row["path"], root / "incoming" / f"new-{row['path']}")
            writer.writerow(
                [f"new-{row['id']}", f"new-{row['path']}", row["label"], f"new-{row['subject']}"]
            )
    return len(rows)


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=50
            )
            return sorted(found, key=lambda a: a.created)[-1]

    return asyncio.run(read())


def test_retraining_promotes_stops_rejects_retries_and_keeps_the_champion(
    tmp_path, tiny_params_dict, prefect_harness
):
    from flows.retrain import STATE, retrain

    root = e2e.make_repository(
        tmp_path / "repo", {**tiny_params_dict, "data": {"raw_dir": "incoming"}}
    )
    write_dataset(
        root / "incoming",
        parse_params(yaml.safe_load((root / "params.yaml").read_text())),
        workers=1,
    )
    models = root / "models"

    # 1. first run: everything is new, no champion: promoted
    first = retrain(root=str(root))
    assert first["decision"] == "promoted" and first["version"] == "v1"
    assert registry.read_registry(models)["champion"] == "v1"
    assert (models / "registry" / "v1" / "model.keras").is_file()
    assert (root / STATE).is_file()
    assert "promoted" in _artifact("retraining-summary").data
    assert _artifact("champion-challenger").key == "champion-challenger"

    # 2. nothing new: stops early, recorded, champion kept
    second = retrain(root=str(root))
    assert second["decision"] == "skipped"
    saved = registry.read_registry(models)
    assert saved["champion"] == "v1" and saved["decisions"][-1]["decision"] == "skipped"
    assert "nothing new" in _artifact("retraining-summary").data

    # 3. new volumes, and a margin no model can clear: retrained, then rejected
    added = _add_volumes(root, tiny_params_dict, tmp_path)
    _set_params(root, retrain={"min_margin": 1.0})
    third = retrain(root=str(root))
    assert third["decision"] == "rejected" and third["stages"]["ingest"] == "ran"
    assert third["champion_version"] == "v1" and third["champion"] is not None
    saved = registry.read_registry(models)
    assert saved["champion"] == "v1" and len(saved["versions"]) == 1
    rejected = saved["decisions"][-1]
    assert rejected["decision"] == "rejected"
    assert "not more than the margin 1.0000" in rejected["reason"]
    assert f"{added} added" in _artifact("retraining-summary").data

    # 4. a stage that fails once with a transient error: retried, then promoted (margin -1)
    (root / "fail_once.py").write_text(FAIL_ONCE)
    _report_command(root, "python fail_once.py")
    _set_params(root, retrain={"min_margin": -1.0, "git_commit": True, "git_tag": True})
    e2e.run(["git", "config", "user.name", "retrain test"], root)  # the flow commits as it
    e2e.run(["git", "config", "user.email", "retrain@test"], root)
    e2e.dvc("remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=root)
    e2e.run(["git", "add", "-A"], root)
    e2e.run(["git", "commit", "-q", "-m", "injected failure, a DVC remote"], root)
    fourth = retrain(root=str(root), force=True)
    assert (root / ".failed-once").is_file()  # it did fail once
    assert fourth["decision"] == "promoted" and fourth["version"] == "v2"
    assert fourth["pulled"] is True  # a remote is configured: dvc pull ran first
    assert fourth["published"] == ["dvc push", "git commit", "git tag model-v2"]
    assert any((tmp_path / "remote").rglob("*"))  # the artifacts are in the remote
    assert e2e.run(["git", "tag"], root).stdout.split() == ["model-v2"]
    committed = e2e.run(["git", "show", "--stat", "--format=%s", "model-v2"], root).stdout
    assert "promote model v2" in committed and "models/registry.json" in committed

    # 5. a stage that always fails: the flow fails, the champion and registry are untouched
    before = (models / "registry.json").read_bytes()
    state_before = (root / STATE).read_bytes()
    _report_command(root, "python -c \"import sys; sys.exit('bad input (injected)')\"")
    state = retrain(root=str(root), force=True, return_state=True)
    assert state.is_failed()
    assert (models / "registry.json").read_bytes() == before
    assert (root / STATE).read_bytes() == state_before
    assert registry.read_registry(models)["champion"] == "v2"


def test_the_fingerprint_is_of_the_data_the_run_trained_on(tmp_path, monkeypatch, prefect_harness):
    """With the default data/raw (written by the synth stage during the run), the second
    run finds nothing new; a forced run that retrains nothing never promotes the champion
    again. The pipeline and the champion's evaluation are stand-ins here."""
    import json

    import flows.retrain as flow_module

    root = tmp_path
    (root / "params.yaml").write_text(yaml.safe_dump({"retrain": {"min_margin": 0.0}}))

    def fake_pipeline(root):
        raw = Path(root) / "data" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "sub-1.nii").write_bytes(b"volume")  # as the synth stage writes it
        bundle = Path(root) / "models" / "classifier"
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "model.keras").write_bytes(b"same weights")
        (bundle / "bundle.json").write_text(json.dumps({"params_hash": "p"}))
        manifest = Path(root) / "data" / "ingested" / "manifest.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text("id,path,label,split\nsub-1,sub-1.nii,a,test\n")
        index = Path(root) / "data" / "preprocessed" / "index.csv"
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text("id,split,array\nsub-1,test,arrays/sub-1.npy\n")
        return {"stages": {"synth": "ran"}, "metrics": {"balanced_accuracy": 0.8}}

    monkeypatch.setattr(flow_module, "pipeline", fake_pipeline)
    monkeypatch.setattr(
        flow_module.registry, "evaluate_on_split", lambda *a, **k: {"balanced_accuracy": 0.8}
    )
    assert flow_module.retrain(root=str(root))["decision"] == "promoted"
    assert flow_module.retrain(root=str(root))["decision"] == "skipped"
    forced = flow_module.retrain(root=str(root), force=True)
    assert forced["decision"] == "rejected" and "champion v1 itself" in forced["reason"]
    assert registry.read_registry(root / "models")["champion"] == "v1"
    assert len(registry.read_registry(root / "models")["versions"]) == 1
