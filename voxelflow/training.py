"""Helpers shared by the training stages: determinism, the history file, the bundle files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import keras
import numpy as np

from voxelflow.atomic import write_csv
from voxelflow.params import Params, params_dict


def set_determinism(seed: int, ops: bool = True) -> None:
    """Seeds Python, numpy and the backend; with ``ops``, asks TensorFlow for deterministic
    kernels too (``training.deterministic``: bit-identical reruns, somewhat slower on GPUs)."""
    keras.utils.set_random_seed(seed)
    if ops and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def params_hash(params: Params) -> str:
    """A short stable hash of the full params, recorded with every model."""
    text = json.dumps(params_dict(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_history(
    path: str | Path, history: dict[str, list[float]], extra: dict | None = None
) -> None:
    """The per-epoch history as CSV (epoch first), the format DVC plots read."""
    keys = sorted(history)
    epochs = len(history[keys[0]]) if keys else 0
    rows = []
    for epoch in range(epochs):
        row = {"epoch": epoch + 1, **(extra or {})}
        row.update({key: round(float(history[key][epoch]), 6) for key in keys})
        rows.append(row)
    write_csv(path, rows, ["epoch", *(extra or {}), *keys])


def run_key(params: Params, data: str, stage: str) -> str:
    """What makes two training runs the same: the params, the data read, the stage."""
    return hashlib.sha256(f"{stage}|{params_hash(params)}|{data}".encode()).hexdigest()


def class_weights(labels: list[int], classes: list[str]) -> dict[int, float]:
    """Weights inversely proportional to class frequency (mean weight 1 over the samples)."""
    counts = np.bincount(np.asarray(labels), minlength=len(classes)).astype(float)
    if np.any(counts == 0):
        missing = [classes[index] for index, count in enumerate(counts) if count == 0]
        raise ValueError(f"classes {missing} have no training volume")
    return {index: float(len(labels) / (len(classes) * n)) for index, n in enumerate(counts)}


def training_seed(params) -> int:
    """The seed of everything random in training (``training.seed``, else ``seed``)."""
    return params.seed if params.training.seed is None else params.training.seed
