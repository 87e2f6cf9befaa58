"""The real `dvc repro` of dvc.yaml on tiny params, in a temporary git repository."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests import e2e

pytestmark = pytest.mark.slow


def _local_imports(module: Path, root: Path, seen: set[str]) -> set[str]:
    for node in ast.walk(ast.parse(module.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            path = root / (name.replace(".", "/") + ".py")
            if name.startswith("voxelflow") and path.is_file() and str(path) not in seen:
                seen.add(str(path))
                _local_imports(path, root, seen)
    return seen


def test_every_stage_lists_the_modules_it_imports():
    spec = yaml.safe_load((e2e.REPO / "dvc.yaml").read_text())
    for name, stage in spec["stages"].items():
        module = e2e.REPO / "stages" / f"{name.replace('-', '_')}.py"
        assert f"stages/{module.name}" in stage["deps"], name
        needed = {
            str(Path(p).relative_to(e2e.REPO)) for p in _local_imports(module, e2e.REPO, set())
        }
        missing = needed - set(stage["deps"])
        assert not missing, (
            f"stage {name} imports {sorted(missing)} but dvc.yaml does not list them"
        )


def test_dvc_repro_end_to_end(repro_reference, tmp_path):
    root = tmp_path / "repository"  # a copy: the reference stays as the pipeline left it
    shutil.copytree(repro_reference["root"], root, symlinks=True)
    for output in e2e.declared_outputs(root):
        assert output.exists(), f"{output} was not written"
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    assert metrics["test_volumes"] > 0

    second = e2e.dvc("repro", cwd=root)
    assert "Running stage" not in second.stdout
    assert (
        e2e.dvc("status", cwd=root).stdout.strip().startswith("Data and pipelines are up to date")
    )

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["label_smoothing"] = 0.1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = e2e.dvc("repro", cwd=root)
    ran = {
        line.split("'")[1] for line in third.stdout.splitlines() if line.startswith("Running stage")
    }
    assert ran == {"finetune", "evaluate", "report"}

    shown = json.loads(e2e.dvc("metrics", "show", "--json", cwd=root).stdout)
    assert "balanced_accuracy" in json.dumps(shown)
    plots = json.loads(e2e.dvc("plots", "show", "--json", cwd=root).stdout)["data"]
    for name in ("Reliability diagram (test)", "plots/pr", "reports/figures/errors.png"):
        assert any(name in key for key in plots), (name, list(plots))
    gallery = next(value for key, value in plots.items() if key.endswith("errors.png"))
    assert gallery[0]["type"] == "image"
    assert (root / "reports" / "index.html").read_text().count("data:image/png;base64,") == 7
