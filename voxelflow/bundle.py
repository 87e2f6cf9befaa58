"""The model bundle: ``model.keras`` + ``bundle.json`` (classes, preprocessing spec, params)."""

from __future__ import annotations

import json
from pathlib import Path

import keras

import voxelflow.models  # also registers the custom layers for safe_mode loading
import voxelflow.optimizers  # noqa: F401  (registers LayerwiseAdamW, saved with phase-2 models)
from voxelflow.atomic import file_sha256, write_json

MODEL = "model.keras"
BUNDLE = "bundle.json"


def bundle_checksums(model_dir: str | Path) -> dict[str, str]:
    """SHA-256 of every file of a bundle but ``bundle.json`` (which records them)."""
    model_dir = Path(model_dir)
    return {
        path.name: file_sha256(path)
        for path in sorted(model_dir.iterdir())
        if path.is_file() and path.name != BUNDLE
    }


def verify_bundle(model_dir: str | Path, bundle: dict) -> None:
    """Refuses a bundle whose files changed after training (``ValueError`` naming the file).

    The checksums guard against a model swapped or damaged after training (a copy gone
    wrong, a file edited by hand); they are not a signature: whoever can rewrite
    ``bundle.json`` can rewrite them too.
    """
    model_dir = Path(model_dir)
    recorded = bundle.get("files")
    if not isinstance(recorded, dict) or MODEL not in recorded:
        raise ValueError(
            f"{model_dir / BUNDLE}: no checksums of the bundle's files (expected a 'files' "
            "entry written by the finetune stage); refusing a bundle that cannot be verified"
        )
    for name, digest in recorded.items():
        path = model_dir / name
        if Path(name).name != name or not path.is_file():
            raise ValueError(f"{path}: listed in {BUNDLE} but missing from the bundle")
        actual = file_sha256(path)
        if actual != digest:
            raise ValueError(
                f"{path}: modified after training (SHA-256 {actual[:12]}..., {BUNDLE} "
                f"recorded {digest[:12]}...); refusing to use it: restore the bundle or "
                "retrain"
            )


def add_checksums(model_dir: str | Path, model_hash: str) -> bool:
    """Gives a bundle made before bundles carried checksums its ``files`` entry, once its
    model is verified against ``model_hash`` (the SHA-256 the registry recorded when it
    promoted it). Returns whether bundle.json was rewritten."""
    model_dir = Path(model_dir)
    bundle = json.loads((model_dir / BUNDLE).read_text())
    if isinstance(bundle.get("files"), dict):
        return False
    actual = file_sha256(model_dir / MODEL)
    if actual != model_hash:
        raise ValueError(
            f"{model_dir / MODEL}: modified after it was registered (SHA-256 {actual[:12]}..., "
            f"the registry recorded {model_hash[:12]}...); refusing to use it"
        )
    write_json(model_dir / BUNDLE, {**bundle, "files": bundle_checksums(model_dir)})
    return True


def load_bundle(model_dir: str | Path) -> tuple[keras.Model, dict]:
    """The bundle's model (loaded with ``safe_mode=True``, computing in float32 whatever
    precision it was trained in) and its ``bundle.json``, once its files match the
    checksums recorded at training (:func:`verify_bundle`)."""
    model_dir = Path(model_dir)
    for name in (MODEL, BUNDLE):
        if not (model_dir / name).is_file():
            raise ValueError(f"{model_dir / name}: missing; run the finetune stage first")
    bundle = json.loads((model_dir / BUNDLE).read_text())
    verify_bundle(model_dir, bundle)
    model = keras.saving.load_model(model_dir / MODEL, safe_mode=True)
    return voxelflow.models.set_precision(model, "float32"), bundle
