"""Preprocessing of one volume: canonical RAS grid at the target spacing and shape, robust
intensity normalisation.

Orientation, resampling and crop/pad are one operation here: the output is a RAS grid with
the target spacing and shape, centred on the input's field of view, and every output voxel is
interpolated once from the input through the input's affine. Resampling in separate steps
(reorient, zoom, crop) interpolates twice and blurs twice. Before downsampling, each input
axis is smoothed with a Gaussian matched to its zoom factor, so thin structures alias less.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

SPEC_VERSION = 1


@dataclass(frozen=True)
class PreprocessSpec:
    """The exact preprocessing; it travels with the model so prediction repeats it."""

    target_spacing_mm: tuple[float, float, float]
    target_shape: tuple[int, int, int]
    clip_percentiles: tuple[float, float]
    interpolation_order: int
    orientation: str = "RAS"
    normalization: str = "clip-percentiles, z-score over the foreground's 1-99% core"
    foreground_fraction: float = 0.1
    version: int = SPEC_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        if data.get("version") != SPEC_VERSION:
            raise ValueError(
                f"preprocess spec version {data.get('version')!r} is not supported; "
                f"expected {SPEC_VERSION}"
            )
        return cls(
            target_spacing_mm=tuple(data["target_spacing_mm"]),
            target_shape=tuple(data["target_shape"]),
            clip_percentiles=tuple(data["clip_percentiles"]),
            interpolation_order=int(data["interpolation_order"]),
            orientation=data["orientation"],
            normalization=data["normalization"],
            foreground_fraction=float(data["foreground_fraction"]),
        )


def target_affine(affine: np.ndarray, in_shape, spec: PreprocessSpec) -> np.ndarray:
    """The RAS output grid's affine, centred on the centre of the input's field of view."""
    center_world = affine[:3, :3] @ ((np.asarray(in_shape, dtype=float) - 1) / 2) + affine[:3, 3]
    out = np.diag([*spec.target_spacing_mm, 1.0])
    out[:3, 3] = center_world - out[:3, :3] @ ((np.asarray(spec.target_shape, float) - 1) / 2)
    return out


def antialias_sigmas(affine: np.ndarray, spec: PreprocessSpec) -> list[float]:
    """Per input axis, a Gaussian sigma (in input voxels) for the zoom factor along it."""
    sigmas = []
    for axis in range(3):
        column = affine[:3, axis]
        world_axis = int(np.argmax(np.abs(column)))
        factor = spec.target_spacing_mm[world_axis] / float(np.linalg.norm(column))
        sigmas.append(max(0.0, (factor - 1.0) / 2.0))
    return sigmas


def resample(data: np.ndarray, affine: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Interpolates the volume once onto the spec's RAS grid (outside the input: its minimum)."""
    sigmas = antialias_sigmas(affine, spec)
    if any(sigma > 0 for sigma in sigmas):
        data = ndimage.gaussian_filter(data, sigmas, mode="nearest")
    out_affine = target_affine(affine, data.shape, spec)
    voxel_to_voxel = np.linalg.inv(affine) @ out_affine
    return ndimage.affine_transform(
        data,
        voxel_to_voxel[:3, :3],
        offset=voxel_to_voxel[:3, 3],
        output_shape=tuple(spec.target_shape),
        order=spec.interpolation_order,
        mode="constant",
        cval=float(data.min()),
        prefilter=spec.interpolation_order > 1,
    ).astype(np.float32)


def normalize(data: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Clips to the spec's percentiles, then z-scores with the foreground's robust mean and std.

    The foreground is every voxel above ``foreground_fraction`` of the clipped range, so
    the air around the head does not dominate the statistics; the mean and std come from the
    foreground's 1st-99th percentile core, so a small bright or dark finding (a lesion) does
    not shift the normalisation of the whole volume.
    """
    low, high = np.percentile(data, spec.clip_percentiles)
    if high <= low:
        raise ValueError(f"cannot normalise a volume whose percentiles coincide ({low} == {high})")
    clipped = np.clip(data, low, high)
    foreground = clipped > low + spec.foreground_fraction * (high - low)
    if foreground.mean() < 0.01:
        foreground = np.ones_like(foreground)
    values = clipped[foreground]
    core_low, core_high = np.percentile(values, (1.0, 99.0))
    core = values[(values >= core_low) & (values <= core_high)]
    mean = float(core.mean())
    std = float(core.std()) or 1.0
    return ((clipped - mean) / std).astype(np.float32)


def preprocess_volume(data: np.ndarray, affine: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Preprocesses one volume: the array the models see, of shape ``spec.target_shape``."""
    return normalize(resample(np.asarray(data, dtype=np.float32), affine, spec), spec)
