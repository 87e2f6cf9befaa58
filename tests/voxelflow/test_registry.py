import json

import pytest

from voxelflow import changes, registry


def _bundle(folder, content: bytes = b"weights"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.keras").write_bytes(content)
    (folder / "bundle.json").write_text(json.dumps({"params_hash": "p1", "classes": ["a", "b"]}))
    return folder


def test_decide_by_metric_and_margin():
    assert registry.decide({"balanced_accuracy": 0.7}, None, "balanced_accuracy", 0.05)[0]
    promote, reason = registry.decide(
        {"balanced_accuracy": 0.74}, {"balanced_accuracy": 0.70}, "balanced_accuracy", 0.05
    )
    assert not promote and "not more than the margin" in reason and "0.7400" in reason
    # a tie keeps the champion
    assert not registry.decide(
        {"balanced_accuracy": 0.7}, {"balanced_accuracy": 0.7}, "balanced_accuracy", 0.0
    )[0]
    assert registry.decide(
        {"balanced_accuracy": 0.76}, {"balanced_accuracy": 0.70}, "balanced_accuracy", 0.05
    )[0]
    # a loss: lower wins
    assert registry.decide({"log_loss": 0.4}, {"log_loss": 0.5}, "log_loss", 0.05)[0]
    assert not registry.decide({"log_loss": 0.5}, {"log_loss": 0.4}, "log_loss", 0.0)[0]
    assert not registry.decide({}, None, "brier", 0.0)[0]


def test_promote_copies_the_bundle_and_records_the_champion(tmp_path):
    models = tmp_path / "models"
    first = registry.promote_bundle(
        models, _bundle(tmp_path / "c1"), {"balanced_accuracy": 0.6}, "d1", "no champion yet"
    )
    second = registry.promote_bundle(
        models, _bundle(tmp_path / "c2", b"better"), {"balanced_accuracy": 0.7}, "d2", "better"
    )
    assert (first["version"], second["version"]) == ("v1", "v2")
    assert (models / "registry" / "v1" / "model.keras").read_bytes() == b"weights"
    assert (models / "registry" / "v2" / "bundle.json").is_file()
    saved = registry.read_registry(models)
    assert saved["champion"] == "v2" and registry.champion(models)["data_version"] == "d2"
    assert [d["decision"] for d in saved["decisions"]] == ["promoted", "promoted"]
    assert second["params_hash"] == "p1" and len(second["model_hash"]) == 64

    registry.set_champion(models, "v1", "v2 misbehaves in production")
    saved = registry.read_registry(models)
    assert saved["champion"] == "v1"
    assert saved["decisions"][-1] == {
        **saved["decisions"][-1],
        "decision": "manual promotion",
        "previous_champion": "v2",
        "reason": "v2 misbehaves in production",
    }
    with pytest.raises(ValueError, match="no model version 'v9'.*v1, v2"):
        registry.set_champion(models, "v9", "typo")


def test_a_folder_that_is_not_a_bundle_is_refused_and_nothing_recorded(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model.keras: missing"):
        registry.promote_bundle(tmp_path / "models", tmp_path / "empty", {}, "d", "r")
    assert registry.read_registry(tmp_path / "models")["versions"] == []


def test_a_corrupt_registry_is_a_clear_error(tmp_path):
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(ValueError, match="registry.json: not valid JSON"):
        registry.read_registry(tmp_path)


def test_changes_between_fingerprints(tmp_path):
    (tmp_path / "a.nii").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.nii").write_bytes(b"2")
    (tmp_path / ".hidden").write_bytes(b"x")
    before = changes.fingerprint(tmp_path)
    assert set(before) == {"a.nii", "sub/b.nii"}
    assert changes.compare(before, before) == {"added": [], "changed": [], "removed": []}
    assert changes.summary(changes.compare(before, before)) == "nothing new"
    (tmp_path / "a.nii").write_bytes(b"changed")
    (tmp_path / "c.nii").write_bytes(b"3")
    (tmp_path / "sub" / "b.nii").unlink()
    found = changes.compare(before, changes.fingerprint(tmp_path))
    assert found == {"added": ["c.nii"], "changed": ["a.nii"], "removed": ["sub/b.nii"]}
    assert changes.summary(found) == "1 added, 1 changed, 1 removed"
    assert changes.compare(None, before)["added"] == ["a.nii", "sub/b.nii"]
