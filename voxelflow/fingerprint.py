"""The data fingerprint: what the volumes of a dataset look like, and the ``auto`` values of
the preprocess params derived from it (the idea of nnU-Net's dataset fingerprint).

Ingest computes :func:`volume_stats` for every accepted volume while it has the voxels in
memory, and :func:`summarize` pools the training split into ``fingerprint.json``.
Preprocess fills ``auto`` params from it with :func:`resolve_spec`:

- ``target_spacing_mm: auto``: the median voxel size along each RAS axis.
- ``target_shape: auto``: the median foreground extent (or field of view, without the
  foreground crop) at that spacing, rounded up to a multiple of 8, at most
  ``max_auto_shape``.
- ``window: auto``: the 0.5 and 99.5 percentiles of the foreground intensities, pooled over
  the training volumes.

Only the training split feeds it, so nothing about validation or test data leaks into
preprocessing.
"""

from __future__ import annotations

import math

import numpy as np

from voxelflow.params import PreprocessParams
from voxelflow.preprocess import PreprocessSpec, foreground_box, foreground_mask, world_axes

SAMPLES_PER_VOLUME = 2000
INTENSITY_PERCENTILES = (0.5, 50.0, 99.5)


def volume_stats(data: np.ndarray, affine: np.ndarray, seed: int) -> dict:
    """Spacing, shape and foreground extent along R, A, S, and a sample of foreground voxels.

    The sample (``SAMPLES_PER_VOLUME`` voxels, drawn with ``seed``) keeps the pooled
    intensity percentiles cheap for any number of volumes.
    """
    axes = world_axes(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    mask = foreground_mask(data)
    first, last = foreground_box(data, mask=mask)
    spacing_ras, shape_ras, extent_ras = [0.0] * 3, [0] * 3, [0.0] * 3
    for voxel_axis, world_axis in enumerate(axes):
        spacing_ras[world_axis] = float(spacing[voxel_axis])
        shape_ras[world_axis] = int(data.shape[voxel_axis])
        extent_ras[world_axis] = float(
            (last[voxel_axis] - first[voxel_axis] + 1) * spacing[voxel_axis]
        )
    values = data[mask]
    rng = np.random.default_rng(seed)
    if values.size > SAMPLES_PER_VOLUME:
        values = rng.choice(values, SAMPLES_PER_VOLUME, replace=False)
    return {
        "spacing_mm": spacing_ras,
        "shape": shape_ras,
        "foreground_extent_mm": extent_ras,
        "samples": values.astype(np.float32),
    }


def _describe(values: np.ndarray) -> dict:
    return {
        "median": np.median(values, axis=0).round(4).tolist(),
        "min": np.min(values, axis=0).round(4).tolist(),
        "max": np.max(values, axis=0).round(4).tolist(),
    }


def summarize(stats: list[dict]) -> dict:
    """The fingerprint of a set of volumes (JSON-ready)."""
    if not stats:
        raise ValueError("cannot fingerprint an empty set of volumes")
    pooled = np.concatenate([item["samples"] for item in stats]).astype(np.float64)
    percentiles = dict(
        zip(INTENSITY_PERCENTILES, np.percentile(pooled, INTENSITY_PERCENTILES), strict=True)
    )
    return {
        "volumes": len(stats),
        "spacing_mm": _describe(np.array([item["spacing_mm"] for item in stats])),
        "shape": _describe(np.array([item["shape"] for item in stats])),
        "field_of_view_mm": _describe(
            np.array([np.multiply(item["shape"], item["spacing_mm"]) for item in stats])
        ),
        "foreground_extent_mm": _describe(
            np.array([item["foreground_extent_mm"] for item in stats])
        ),
        "foreground_intensity": {
            **{f"p{q:g}": round(float(value), 6) for q, value in percentiles.items()},
            "mean": round(float(pooled.mean()), 6),
            "std": round(float(pooled.std()), 6),
        },
    }


def _auto_shape(extent_mm, spacing, limit: int) -> tuple[int, int, int]:
    sizes = []
    for extent, step in zip(extent_mm, spacing, strict=True):
        size = 8 * math.ceil(extent / step / 8 - 1e-9)
        sizes.append(int(min(max(size, 8), limit - limit % 8)))
    return tuple(sizes)


def resolve_spec(
    params: PreprocessParams, fingerprint: dict | None
) -> tuple[PreprocessSpec, list[str]]:
    """The concrete spec: ``auto`` params filled from the fingerprint; and which were filled.

    Raises:
        ValueError: a param is ``auto`` and there is no fingerprint to fill it from.
    """
    auto = [
        name
        for name in ("target_spacing_mm", "target_shape", "window")
        if getattr(params, name) == "auto"
        and (name != "window" or params.normalization == "window")
    ]
    if auto and fingerprint is None:
        raise ValueError(
            f"preprocess params {auto} are 'auto' but there is no fingerprint.json from "
            "ingest; rerun ingest or give explicit values"
        )
    spacing = params.target_spacing_mm
    if spacing == "auto":
        spacing = tuple(float(value) for value in fingerprint["spacing_mm"]["median"])
    shape = params.target_shape
    if shape == "auto":
        key = "foreground_extent_mm" if params.crop_foreground else "field_of_view_mm"
        shape = _auto_shape(fingerprint[key]["median"], spacing, params.max_auto_shape)
    window = None
    if params.normalization == "window":
        window = params.window
        if window == "auto":
            intensity = fingerprint["foreground_intensity"]
            window = (intensity["p0.5"], intensity["p99.5"])
        window = tuple(float(value) for value in window)
    spec = PreprocessSpec(
        target_spacing_mm=tuple(float(value) for value in spacing),
        target_shape=tuple(int(value) for value in shape),
        clip_percentiles=tuple(params.clip_percentiles),
        interpolation_order=params.interpolation_order,
        normalization=params.normalization,
        window=window,
        crop_foreground=params.crop_foreground,
    )
    return spec, auto
