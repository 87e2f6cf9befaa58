"""Batched prediction of preprocessed volumes, and test-time augmentation.

One function predicts for both the evaluate stage and ``voxelflow predict``
(:mod:`voxelflow.predictor`), so the two give the same probabilities for the same
preprocessed volume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from voxelflow.augment import Transform, apply_spatial

Variant = tuple[str, Callable[[np.ndarray], np.ndarray]]


def _identity(volume: np.ndarray) -> np.ndarray:
    return volume


def _flip(axis: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda volume: np.ascontiguousarray(np.flip(volume, axis=axis))


def _rotate(axis: int, degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    angles = [0.0, 0.0, 0.0]
    angles[axis] = float(degrees)
    transform = Transform(rotation_degrees=tuple(angles))
    return lambda volume: apply_spatial(volume, transform)


def tta_variants(flip_axes: Sequence[int] = (), rotation_degrees: Sequence[float] = ()) -> list:
    """The test-time augmentation passes: the volume itself, each flip, and each rotation
    about each axis (linear interpolation about the centre)."""
    variants: list[Variant] = [("identity", _identity)]
    variants += [(f"flip{axis}", _flip(axis)) for axis in flip_axes]
    variants += [
        (f"rotate{axis}_{degrees:+g}", _rotate(axis, degrees))
        for degrees in rotation_degrees
        for axis in range(3)
        if degrees
    ]
    return variants


def predict_arrays(
    model,
    read: Callable[[int], np.ndarray],
    count: int,
    batch_size: int = 16,
    variants: Sequence[Variant] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Class probabilities of ``count`` preprocessed volumes (``read(i)``: one (D, H, W)
    array), averaged over the ``variants`` (default: the volume as it is), shape
    ``(count, classes)``."""
    from tqdm import tqdm

    variants = list(variants or [("identity", _identity)])
    batches = range(0, count, batch_size)
    out = []
    for start in tqdm(batches, desc="predicting", unit="batch", disable=not progress):
        volumes = [read(index) for index in range(start, min(start + batch_size, count))]
        total = None
        for _, transform in variants:
            batch = np.stack([transform(volume) for volume in volumes])[..., None]
            probabilities = np.asarray(model.predict_on_batch(batch.astype(np.float32)))
            total = probabilities if total is None else total + probabilities
        out.append(total / len(variants))
    if not out:
        return np.zeros((0, model.output_shape[-1]), dtype=np.float32)
    return np.concatenate(out).astype(np.float64)
