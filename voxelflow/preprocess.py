"""Preprocessing of one volume: canonical RAS grid at the target spacing and shape, intensity
normalisation.

Orientation, resampling and crop/pad are one operation here: the output is a RAS grid with
the target spacing and shape, centred on the foreground's bounding box (the body or head,
found by thresholding; or on the whole field of view when ``crop_foreground`` is off), and
every output voxel is interpolated once from the input through the input's affine.
Resampling in separate steps (reorient, zoom, crop) interpolates twice and blurs twice.
Before downsampling, each input axis is smoothed with a Gaussian matched to its zoom factor,
so thin structures alias less. Label maps are resampled with nearest neighbour and no
smoothing (:func:`resample_labels`).

Intensity normalisation, one of:

- ``zscore`` (MRI, default): clip to per-volume percentiles, then z-score with the robust
  statistics of the foreground.
- ``window`` (CT in Hounsfield units): clip to a fixed window, mapped linearly to [-1, 1];
  the same window for every volume keeps HU meaningful.
- ``minmax``: clip to per-volume percentiles, mapped to [0, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

SPEC_VERSION = 2
NORMALIZATIONS = ("zscore", "window", "minmax")


@dataclass(frozen=True)
class PreprocessSpec:
    """The exact preprocessing; it travels with the model so prediction repeats it."""

    target_spacing_mm: tuple[float, float, float]
    target_shape: tuple[int, int, int]
    clip_percentiles: tuple[float, float]
    interpolation_order: int
    normalization: str = "zscore"
    window: tuple[float, float] | None = None
    crop_foreground: bool = False
    orientation: str = "RAS"
    foreground_fraction: float = 0.1
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )
        if self.normalization == "window" and (
            self.window is None or not self.window[0] < self.window[1]
        ):
            raise ValueError(f"normalization 'window' needs window [low, high], got {self.window}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        """Reads a spec written by this or the previous version (version 1: z-score, no crop,
        anti-aliasing for any interpolation order, ``constant`` edge mode for cubic)."""
        version = data.get("version")
        if version not in (1, SPEC_VERSION):
            raise ValueError(
                f"preprocess spec version {version!r} is not supported; "
                f"expected 1 or {SPEC_VERSION}"
            )
        window = data.get("window")
        return cls(
            target_spacing_mm=tuple(data["target_spacing_mm"]),
            target_shape=tuple(data["target_shape"]),
            clip_percentiles=tuple(data["clip_percentiles"]),
            interpolation_order=int(data["interpolation_order"]),
            normalization=data["normalization"] if version == SPEC_VERSION else "zscore",
            window=tuple(window) if window is not None else None,
            crop_foreground=bool(data.get("crop_foreground", False)),
            orientation=data["orientation"],
            foreground_fraction=float(data["foreground_fraction"]),
            version=version,  # a version-1 spec resamples exactly as version 1 did
        )


def foreground_mask(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the robust (0.5-99.5 percentile) range.

    In MRI this is the head or body against the air around it; in CT (air at -1000 HU) the
    body. A volume with less than 1% foreground is all foreground (nothing to separate).
    The percentiles come from every 2nd voxel along each axis of a large volume (8x fewer
    voxels to sort, the same figures within noise).
    """
    sample = data[::2, ::2, ::2] if data.size > 1_000_000 else data
    low, high = np.percentile(sample, (0.5, 99.5))
    mask = data > low + fraction * (high - low)
    if mask.mean() < 0.01:
        return np.ones(data.shape, dtype=bool)
    return mask


def foreground_box(
    data: np.ndarray, fraction: float = 0.1, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The foreground's bounding box as (first, last) voxel indices per axis.

    Isolated bright voxels (noise, a hot pixel in the air) do not count: a plane must hold
    at least 0.1% of the foreground, and 3 voxels, to be inside the box. Pass ``mask``
    when :func:`foreground_mask` was already computed.
    """
    if mask is None:
        mask = foreground_mask(data, fraction)
    total = int(mask.sum())
    first, last = [], []
    for axis in range(3):
        other = tuple(index for index in range(3) if index != axis)
        counts = mask.sum(axis=other)
        inside = np.flatnonzero(counts >= max(3, total * 0.001))
        if inside.size == 0:
            inside = np.array([0, data.shape[axis] - 1])
        first.append(int(inside[0]))
        last.append(int(inside[-1]))
    return np.array(first), np.array(last)


def grid_center(data: np.ndarray, affine: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The world point (mm) the output grid is centred on: the foreground's or the FOV's."""
    if spec.crop_foreground:
        first, last = foreground_box(data, spec.foreground_fraction)
        center_voxel = (first + last) / 2
    else:
        center_voxel = (np.asarray(data.shape, dtype=float) - 1) / 2
    return affine[:3, :3] @ center_voxel + affine[:3, 3]


def target_affine(center_world: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The RAS output grid's affine, centred on ``center_world``."""
    out = np.diag([*spec.target_spacing_mm, 1.0])
    out[:3, 3] = center_world - out[:3, :3] @ ((np.asarray(spec.target_shape, float) - 1) / 2)
    return out


def world_axes(affine: np.ndarray) -> list[int]:
    """For each voxel axis, the world (RAS) axis it runs along most, each world axis taken
    once, even for a double-oblique affine where two voxel axes lean towards the same world
    axis (greedy on the direction cosines, largest first, as nibabel's io_orientation)."""
    cosines = np.abs(affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0))
    axes = [-1, -1, -1]
    for _ in range(3):
        world, voxel = np.unravel_index(np.argmax(cosines), cosines.shape)
        axes[int(voxel)] = int(world)
        cosines[world, :] = -1.0
        cosines[:, voxel] = -1.0
    return axes


def antialias_sigmas(affine: np.ndarray, spec: PreprocessSpec) -> list[float]:
    """Per input axis, a Gaussian sigma (in input voxels) for the zoom factor along it."""
    sigmas = []
    for axis, world_axis in enumerate(world_axes(affine)):
        column = affine[:3, axis]
        factor = spec.target_spacing_mm[world_axis] / float(np.linalg.norm(column))
        sigmas.append(max(0.0, (factor - 1.0) / 2.0))
    return sigmas


def _resample(data, affine, spec, center_world, order, cval) -> np.ndarray:
    voxel_to_voxel = np.linalg.inv(affine) @ target_affine(center_world, spec)
    return ndimage.affine_transform(
        data,
        voxel_to_voxel[:3, :3],
        offset=voxel_to_voxel[:3, 3],
        output_shape=tuple(spec.target_shape),
        order=order,
        mode="constant" if order <= 1 or spec.version == 1 else "grid-constant",
        cval=cval,
        prefilter=order > 1,
    )


def resample(
    data: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    center_world: np.ndarray | None = None,
) -> np.ndarray:
    """Interpolates an image once onto the spec's RAS grid (outside the input: its minimum).

    The spec's ``interpolation_order`` is used: 1 (linear) or 3 (cubic B-spline); 0 gives
    nearest neighbour. Downsampled axes are smoothed first (anti-aliasing).
    """
    if center_world is None:
        center_world = grid_center(data, affine, spec)
    sigmas = antialias_sigmas(affine, spec)
    source = data
    smooth = spec.interpolation_order > 0 or spec.version == 1
    if smooth and any(sigma > 0 for sigma in sigmas):
        source = ndimage.gaussian_filter(data, sigmas, mode="nearest")
    return _resample(
        source, affine, spec, center_world, spec.interpolation_order, float(data.min())
    ).astype(np.float32)


def resample_labels(
    labels: np.ndarray,
    affine: np.ndarray,
    spec: PreprocessSpec,
    center_world: np.ndarray,
) -> np.ndarray:
    """A label map (segmentation, mask) onto the same grid: nearest neighbour, no smoothing,
    so every output value is one of the input labels; outside the input it is 0.

    Pass the ``center_world`` of the image it belongs to (:func:`grid_center`).
    """
    out = _resample(np.asarray(labels), affine, spec, center_world, 0, 0)
    return out.astype(labels.dtype)


FOREGROUND_REFERENCE = 99.9  # percentile: the foreground threshold's upper reference, at most


def _percentile_clip(data: np.ndarray, spec: PreprocessSpec) -> tuple[np.ndarray, float, float]:
    low, high = (float(value) for value in np.percentile(data, spec.clip_percentiles))
    if high <= low:
        raise ValueError(f"cannot normalise a volume whose percentiles coincide ({low} == {high})")
    return np.clip(data, low, high), low, high


def normalize(data: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Normalises intensities as the spec says (see the module docstring).

    ``zscore``: the foreground is every voxel above ``foreground_fraction`` of the clipped
    range, so the air around the head does not dominate the statistics; the mean and std
    come from the foreground's 1st-99th percentile core, so a small bright or dark finding
    (a lesion) does not shift the normalisation of the whole volume.
    """
    if spec.normalization == "window":
        low, high = spec.window
        clipped = np.clip(data, low, high)
        return ((clipped - (low + high) / 2) / ((high - low) / 2)).astype(np.float32)
    clipped, low, high = _percentile_clip(data, spec)
    if spec.normalization == "minmax":
        return ((clipped - low) / (high - low)).astype(np.float32)
    # the foreground threshold's upper reference is the 99.9th percentile at most: with a
    # higher (or no) upper clip, a lesion or one hot voxel would otherwise raise the
    # threshold and shift the whole volume's statistics
    reference = high
    if spec.clip_percentiles[1] > FOREGROUND_REFERENCE:
        reference = float(np.percentile(data, FOREGROUND_REFERENCE))
    foreground = clipped > low + spec.foreground_fraction * (reference - low)
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


def preprocess_manifest_row(
    row: dict, data_dir: str | Path, spec: PreprocessSpec
) -> tuple[dict, np.ndarray | None]:
    """One manifest row's file, preprocessed: (row, array), or (rejection, None) when the
    volume cannot be read.

    The volume is read as ingest accepted it: the same volume of a 4D series, NaN/Inf
    repaired only where ingest repaired them.
    """
    from voxelflow.nifti import VolumeError, load_volume

    index = row.get("volume_index", "")
    try:
        volume = load_volume(
            Path(data_dir) / row["path"],
            volume_index=int(index) if index not in ("", None) else None,
            non_finite="repair" if int(row.get("repaired") or 0) else "reject",
        )
        array = preprocess_volume(volume.data, volume.affine, spec)
    except (VolumeError, ValueError) as error:
        return {"input": row["path"], "reason": str(error)}, None
    return row, array

