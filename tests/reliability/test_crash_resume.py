"""SIGKILL at random moments in the per-volume stages, then a rerun: the same bytes as a run
that was never interrupted, with the finished volumes reused (verified by checksum)."""

from __future__ import annotations

import random
import time

import pytest

from tests.reliability.helpers import (
    journal_lines,
    kill_when,
    leftovers,
    stage_command,
    start,
    tree_bytes,
    write_params,
)

# 32^3 arrays from ~64^3 scans: slow enough (~10 ms a volume) for a kill to land mid-work.
PARAMS = {
    "seed": 7,
    "synth": {"subjects_per_class": 5, "rescan_fraction": 0.3, "unlabelled": 3},
    "ingest": {
        "classes": ["normal", "lesion", "atrophy"],
        "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
    },
    "preprocess": {"target_spacing_mm": [2.0, 2.0, 2.0], "target_shape": [32, 32, 32]},
    "augment": {"copies": 3, "shard_size": 4},
}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    from stages import ingest, synth
    from voxelflow.params import parse_params

    root = tmp_path_factory.mktemp("scans")
    params = parse_params(PARAMS, "reliability")
    synth.run(root / "raw", params, workers=1)
    ingest.run(root / "raw", root / "raw" / "labels.csv", root / "ingested", params, workers=1)
    write_params(root / "params.yaml", PARAMS)
    return root


def _run(command, workspace) -> str:
    process = start(command, workspace)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return output


def _kill_repeatedly(command, workspace, out, reference, items: int, seed: int, kills: int = 3):
    """Starts the stage ``kills`` times and SIGKILLs it each time: first after a random delay
    from its start (often still importing), then after a random number of finished items.
    After each kill the output is absent or complete (the previous one). Returns the
    finished items the staging folder held after each kill (None: not killed)."""
    staging = out.with_name(f".{out.name}.partial")
    rng = random.Random(seed)
    seen = []
    for attempt in range(kills):
        process = start(command, workspace)
        if attempt == 0:
            started, delay = time.monotonic(), rng.uniform(0.0, 1.5)
            killed = kill_when(process, lambda s=started, d=delay: time.monotonic() - s > d)
        else:
            target = rng.randint(1, items - 1)
            killed = kill_when(process, lambda target=target: journal_lines(staging) >= target)
        seen.append(journal_lines(staging) if killed else None)
        assert not out.exists() or tree_bytes(out) == tree_bytes(reference), seen
    if not staging.exists():  # the last run finished before its kill: one more, early
        process = start(command, workspace)
        kill_when(process, lambda: journal_lines(staging) >= 1)
        seen.append(journal_lines(staging))
    return seen


def _check_resumed(command, workspace, out, reference, seen, items):
    assert any(count and count < items for count in seen), f"no kill landed mid-work: {seen}"
    output = _run(command, workspace)
    assert "resuming" in output, output
    assert tree_bytes(out) == tree_bytes(reference)
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_preprocess_killed_repeatedly_resumes_to_identical_bytes(scans, tmp_path):
    def command(out):
        return stage_command(
            "preprocess",
            *("--params", str(scans / "params.yaml")),
            *("--manifest", str(scans / "ingested" / "manifest.csv")),
            *("--data", str(scans / "raw")),
            *("--out", str(out), "--workers", "1"),
        )

    reference = tmp_path / "reference" / "preprocessed"
    _run(command(reference), tmp_path)
    items = len(list((reference / "arrays").iterdir()))
    out = tmp_path / "killed" / "preprocessed"
    seen = _kill_repeatedly(command(out), tmp_path, out, reference, items, seed=11)
    _check_resumed(command(out), tmp_path, out, reference, seen, items)


@pytest.mark.slow
def test_augment_cache_killed_repeatedly_resumes_to_identical_bytes(scans, tmp_path):
    preprocessed = tmp_path / "preprocessed"
    _run(
        stage_command(
            "preprocess",
            *("--params", str(scans / "params.yaml")),
            *("--manifest", str(scans / "ingested" / "manifest.csv")),
            *("--data", str(scans / "raw"), "--out", str(preprocessed)),
        ),
        tmp_path,
    )

    def command(out):
        return stage_command(
            "augment_cache",
            *("--params", str(scans / "params.yaml")),
            *("--preprocessed", str(preprocessed), "--out", str(out), "--workers", "1"),
        )

    reference = tmp_path / "reference" / "augmented"
    _run(command(reference), tmp_path)
    items = len(list((reference / "shards").iterdir()))
    out = tmp_path / "killed" / "augmented"
    seen = _kill_repeatedly(command(out), tmp_path, out, reference, items, seed=5)
    _check_resumed(command(out), tmp_path, out, reference, seen, items)
