"""The real-data example: AdrenalMNIST3D imported from ../shared and run through `dvc repro`
with the example params and its official splits (short training: this checks the plumbing;
the README reports the full run)."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest
import yaml

from tests import e2e
from voxelflow.dataset import read_rows

NPZ = e2e.REPO.parent / "shared" / "data" / "medmnist3d" / "adrenalmnist3d.npz"
FAST = {
    "augment": {"copies": 1},
    "model": {"width": 4, "blocks_per_stage": [1, 1], "head_units": 8},
    "pretrain": {"epochs": 1, "batch_size": 16},
    "finetune": {"epochs": 1, "batch_size": 32, "patience": 1},
    "evaluate": {"batch_size": 32},
}


@pytest.mark.slow
@pytest.mark.skipif(not NPZ.is_file(), reason=f"{NPZ} not present (../shared/data)")
def test_adrenalmnist3d_through_dvc_repro_with_official_splits(tmp_path):
    example = yaml.safe_load((e2e.REPO / "examples" / "adrenalmnist3d" / "params.yaml").read_text())
    root = e2e.make_repository(tmp_path, e2e.merged(example, FAST))
    e2e.run(
        [
            sys.executable,
            "-m",
            "voxelflow.cli",
            "import-npz",
            str(NPZ),
            "data/adrenalmnist3d",
            "--classes",
            "normal,hyperplasia",
        ],
        root,
    )
    result = e2e.dvc("repro", "evaluate", cwd=root)
    assert "Running stage 'synth'" not in result.stdout  # not upstream of the real data

    manifest = read_rows(root / "data" / "ingested" / "manifest.csv")
    assert read_rows(root / "data" / "ingested" / "rejected.csv") == []
    counts = Counter((row["split"], row["label"]) for row in manifest)
    assert counts == {
        ("train", "normal"): 1188 - 259,
        ("train", "hyperplasia"): 259,
        ("val", "normal"): 98 - 22,
        ("val", "hyperplasia"): 22,
        ("test", "normal"): 298 - 69,
        ("test", "hyperplasia"): 69,
    }
    assert all(row["id"].startswith(row["split"] + "_") for row in manifest)  # official split
    spec = json.loads((root / "data" / "preprocessed" / "preprocess.json").read_text())
    assert spec["classes"] == ["normal", "hyperplasia"] and spec["normalization"] == "minmax"
    metrics = json.loads((root / "metrics" / "eval.json").read_text())
    assert metrics["test_volumes"] == 298
