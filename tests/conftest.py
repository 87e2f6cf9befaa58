"""Shared fixtures: tiny params and a tiny dataset built once per test session."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from voxelflow.params import Params, parse_params  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# 16^3 volumes at 4 mm, a handful of subjects, one epoch: the whole pipeline in seconds.
TINY = {
    "seed": 7,
    "synth": {
        "subjects_per_class": 4,
        "rescan_fraction": 0.3,
        "unlabelled": 3,
        "spacing_mm": [3.0, 4.0],
    },
    "ingest": {
        "classes": ["normal", "lesion", "atrophy"],
        "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
    },
    "preprocess": {"target_spacing_mm": [4.0, 4.0, 4.0], "target_shape": [16, 16, 16]},
    "augment": {"copies": 2, "shard_size": 5},
    "model": {"width": 4, "blocks_per_stage": [1, 1], "head_units": 8},
    "pretrain": {"epochs": 1, "batch_size": 4},
    "finetune": {"epochs": 1, "batch_size": 4, "patience": 1, "min_steps_per_epoch": 0},
    "evaluate": {"batch_size": 4},
}


@pytest.fixture(scope="session")
def tiny_params_dict() -> dict:
    return yaml.safe_load(yaml.safe_dump(TINY))


@pytest.fixture(scope="session")
def tiny_params(tiny_params_dict) -> Params:
    return parse_params(tiny_params_dict, "tiny")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_params) -> dict[str, Path]:
    """raw -> ingested -> preprocessed -> augmented, built once with the stage run() functions."""
    from stages import augment_cache, ingest, preprocess, synth

    root = tmp_path_factory.mktemp("tiny")
    paths = {name: root / name for name in ("raw", "ingested", "preprocessed", "augmented")}
    synth.run(paths["raw"], tiny_params, workers=1)
    ingest.run(paths["raw"], paths["raw"] / "labels.csv", paths["ingested"], tiny_params, workers=1)
    preprocess.run(
        paths["ingested"] / "manifest.csv",
        paths["raw"],
        paths["preprocessed"],
        tiny_params,
        workers=1,
    )
    augment_cache.run(paths["preprocessed"], paths["augmented"], tiny_params, workers=1)
    return paths


@pytest.fixture(scope="session")
def trained(tiny_data, tiny_params, tmp_path_factory):
    """The tiny pipeline trained once per session: pretrained encoder, bundle, metrics."""
    from stages import evaluate, finetune, pretrain

    root = tmp_path_factory.mktemp("trained")
    pretrain.run(tiny_data["preprocessed"], root / "pretrained", tiny_params)
    finetune.run(
        root / "pretrained",
        tiny_data["augmented"],
        tiny_data["preprocessed"],
        root / "classifier",
        tiny_params,
    )
    evaluate.run(
        root / "classifier",
        tiny_data["preprocessed"],
        root / "metrics",
        root / "plots",
        tiny_params,
    )
    return root


@pytest.fixture(scope="session")
def repro_reference(tmp_path_factory, tiny_params_dict, prefect_harness) -> dict:
    """The pipeline flow (every stage of the real dvc.yaml through ``dvc repro``) on tiny
    params, uninterrupted, in a temporary git repository: its root, params, flow state, and
    the bytes of every output (taken before any test changes the repository). Fine-tuning
    runs two epochs: Keras prints "Epoch k/n", the progress artifact's source, only for n > 1.
    """
    from flows.pipeline import pipeline
    from tests import e2e

    params = e2e.merged(tiny_params_dict, {"finetune": {"epochs": 2}})
    root = e2e.make_repository(tmp_path_factory.mktemp("repro"), params)
    state = pipeline(root=str(root), return_state=True)
    return {"root": root, "params": params, "state": state, "outputs": e2e.output_bytes(root)}


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
