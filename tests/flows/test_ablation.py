"""The ablation flow on the tiny pipeline: real ``dvc exp run``s, the table from
``dvc exp show``, and a rerun that runs nothing new."""

import json
import shutil

import pytest
import yaml

from tests import e2e

pytestmark = pytest.mark.slow


def test_ablation_runs_experiments_and_tabulates_them_from_dvc(repro_reference, tmp_path):
    from flows.ablation import ablate, read_runs

    root = tmp_path / "repository"
    shutil.copytree(repro_reference["root"], root, symlinks=True)
    design = {
        "seeds": [repro_reference["params"]["seed"]],  # the baseline is what is already run
        "levers": {  # a lever that reruns only evaluate and report: the mechanics, quickly
            "level": {
                "c80": {"evaluate.confidence": 0.8},
                "c95": {"evaluate.confidence": 0.95},
            }
        },
        "bootstrap_resamples": 200,
    }
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "ablation.yaml").write_text(yaml.safe_dump(design))
    e2e.run(["git", "add", "-A"], root)
    e2e.run(["git", "commit", "-q", "-m", "pipeline run and the ablation design"], root)

    result = ablate(root=str(root))
    assert result["ran"] == 2 and result["failed"] == []
    found = {name: runs[0] for name, runs in read_runs(str(root)).items()}
    seed = design["seeds"][0]
    baseline = found[f"abl-all-baseline-baseline-s{seed}"]
    other = found[f"abl-all-level-c80-s{seed}"]
    reference = json.loads(repro_reference["outputs"]["metrics/eval.json"])
    assert baseline["balanced_accuracy"] == reference["balanced_accuracy"]  # deterministic
    assert other["balanced_accuracy"] == baseline["balanced_accuracy"]  # same model
    assert other["minutes"] > 0 and other["rev"] != baseline["rev"]
    table = (root / "benchmarks" / "ablation.md").read_text()
    cells = f"{other['val_auc']:.3f} | {other['balanced_accuracy']:.3f}"
    assert f"| all | level | c80 | 1 | {cells}" in table
    assert 0 < other["val_auc"] <= 1 and other["val_loss"] > 0
    assert (root / "benchmarks" / "ablation.png").stat().st_size > 1000
    rows = json.loads((root / "benchmarks" / "ablation.json").read_text())
    effect = next(row for row in rows if row["level"] == "c80")["balanced_accuracy"]["effect"]
    assert effect == pytest.approx(0.0)
    assert e2e.run(["git", "status", "--porcelain", "params.yaml"], root).stdout == ""
    e2e.dvc("repro", "--force", "--single-item", "report", cwd=root)  # DVC empties reports/
    assert (root / "benchmarks" / "ablation.md").read_text() == table

    again = ablate(root=str(root))
    assert again["ran"] == 0  # every experiment is in dvc exp show already


def test_the_plan_takes_its_baselines_from_the_committed_params(tmp_path):
    """While an experiment runs, the workspace's params.yaml holds its overrides; --plan
    and --collect must still measure every level against the committed baseline."""
    from flows.ablation import plan

    root = tmp_path / "repository"
    root.mkdir()
    design = {
        "seeds": [1],
        "levers": {
            "pretraining": {
                "none": {"pretrain.mode": "none"},
                "ssl": {"pretrain.mode": "self_supervised"},
            }
        },
    }
    (root / "ablation.yaml").write_text(yaml.safe_dump(design))
    (root / "params.yaml").write_text("pretrain:\n  mode: self_supervised\n")
    e2e.run(["git", "init", "-q"], root)
    e2e.run(["git", "add", "-A"], root)
    e2e.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "p"], root)
    (root / "params.yaml").write_text("pretrain:\n  mode: none\n")  # a running experiment's
    _, experiments = plan(str(root), "ablation.yaml")
    assert [e.name for e in experiments] == [
        "abl-all-baseline-baseline-s1",
        "abl-all-pretraining-none-s1",
    ]


def test_an_experiment_still_running_is_not_read(monkeypatch):
    """``dvc exp show`` lists a running experiment under its name with the workspace's
    metrics, which are those of the previous experiment: it must not count."""
    import subprocess

    from flows import ablation as flow_module

    def node(name, rev, auc, state="success"):
        metrics = {"metrics/eval.json": {"data": {"balanced_accuracy": auc, "macro_auc_ovr": auc}}}
        return {
            "revs": [{"rev": rev, "name": name, "data": {"rev": rev, "metrics": metrics}}],
            "executor": {"state": state, "name": "workspace"} if state != "success" else None,
            "name": name,
        }

    shown = [
        {"rev": "workspace", "name": None, "data": {"metrics": {}}},
        {
            "rev": "abc123",
            "name": "main",
            "experiments": [
                node("abl-all-baseline-baseline-s2", "workspace", 0.5, state="running"),
                node("abl-all-baseline-baseline-s1", "f00d", 0.7),
            ],
        },
    ]
    earlier = {"rev": "beef", "experiments": [node("abl-all-baseline-baseline-s1", "cafe", 0.1)]}
    earlier["experiments"].append(node("abl-all-baseline-baseline-s3", "d00d", 0.6))
    calls = []

    def run(command, **options):
        calls.append(command)
        listed = shown + ([earlier] if "-A" in command else [])
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps(listed), stderr="")

    monkeypatch.setattr(flow_module.subprocess, "run", run)
    found = {name: runs[0] for name, runs in flow_module.read_runs(".").items()}
    assert list(found) == ["abl-all-baseline-baseline-s1"]
    assert found["abl-all-baseline-baseline-s1"]["balanced_accuracy"] == 0.7
    # --all-commits: earlier commits' experiments count too; the current commit's win
    runs = flow_module.read_runs(".", all_commits=True)
    found = {name: listed[0] for name, listed in runs.items()}
    assert "-A" in calls[-1] and "-A" not in calls[0]
    assert sorted(found) == ["abl-all-baseline-baseline-s1", "abl-all-baseline-baseline-s3"]
    assert found["abl-all-baseline-baseline-s1"]["balanced_accuracy"] == 0.7
