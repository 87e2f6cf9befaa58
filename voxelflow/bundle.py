"""The model bundle: ``model.keras`` + ``bundle.json`` (classes, preprocessing spec, params)."""

from __future__ import annotations

import json
from pathlib import Path

import keras

import voxelflow.models  # also registers the custom layers for safe_mode loading
import voxelflow.optimizers  # noqa: F401  (registers LayerwiseAdamW, saved with phase-2 models)

MODEL = "model.keras"
BUNDLE = "bundle.json"


def load_bundle(model_dir: str | Path) -> tuple[keras.Model, dict]:
    """The bundle's model (loaded with ``safe_mode=True``, computing in float32 whatever
    precision it was trained in) and its ``bundle.json``."""
    model_dir = Path(model_dir)
    for name in (MODEL, BUNDLE):
        if not (model_dir / name).is_file():
            raise ValueError(f"{model_dir / name}: missing; run the finetune stage first")
    bundle = json.loads((model_dir / BUNDLE).read_text())
    model = keras.saving.load_model(model_dir / MODEL, safe_mode=True)
    return voxelflow.models.set_precision(model, "float32"), bundle
