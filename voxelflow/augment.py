"""The 3D augmentation engine (numpy/scipy).

An augmentation is two steps: :func:`sample_transform` draws the parameters of one copy from
a generator, and :func:`apply_transform` applies them. The second is a pure function of the
volume and the parameters, so the recorded parameters replay a copy exactly.

All spatial transforms (rotation about the three axes, scaling, flips, translation) are
composed into one affine map and the volume is resampled once: sequential
``scipy.ndimage.rotate`` calls each interpolate (and blur) the volume again, and cost a full
pass each. Intensity transforms (gamma, scale and shift, Gaussian noise) follow, vectorised.

Example:
    >>> rng = np.random.default_rng(0)
    >>> transform = sample_transform(rng, AugmentParams(), spacing_mm=(2.0, 2.0, 2.0))
    >>> augmented = apply_transform(volume, transform)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from voxelflow.params import AugmentParams


@dataclass(frozen=True)
class Transform:
    """The sampled parameters of one augmented copy (all that is needed to replay it)."""

    rotation_degrees: tuple[float, float, float]
    translation_voxels: tuple[float, float, float]
    scale: tuple[float, float, float]
    flips: tuple[bool, bool, bool]
    gamma: float
    intensity_scale: float
    intensity_shift: float
    noise_std: float
    noise_seed: int
    interpolation_order: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Transform:
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})


def sample_transform(
    rng: np.random.Generator, params: AugmentParams, spacing_mm: tuple[float, float, float]
) -> Transform:
    """Draws one copy's parameters from the ranges and probabilities in ``params``."""
    rotation = rng.uniform(-params.rotation_degrees, params.rotation_degrees, size=3)
    translation = rng.uniform(-params.translation_mm, params.translation_mm, size=3)
    scale = np.full(3, rng.uniform(*params.scale_range))
    flips = [
        bool(axis in params.flip_axes and rng.random() < params.flip_probability)
        for axis in range(3)
    ]
    if rng.random() < params.intensity_probability:
        gamma = float(np.exp(rng.uniform(*np.log(params.gamma_range))))
        intensity_scale = float(rng.uniform(1 - params.intensity_scale, 1 + params.intensity_scale))
        intensity_shift = float(rng.uniform(-params.intensity_shift, params.intensity_shift))
        noise = float(rng.uniform(0, params.noise_std))
    else:
        gamma, intensity_scale, intensity_shift, noise = 1.0, 1.0, 0.0, 0.0
    return Transform(
        rotation_degrees=tuple(float(value) for value in rotation),
        translation_voxels=tuple(
            float(t / s) for t, s in zip(translation, spacing_mm, strict=True)
        ),
        scale=tuple(float(value) for value in scale),
        flips=tuple(flips),
        gamma=gamma,
        intensity_scale=intensity_scale,
        intensity_shift=intensity_shift,
        noise_std=noise,
        noise_seed=int(rng.integers(2**31)),
        interpolation_order=params.interpolation_order,
    )


def rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """Rotation about axes 0, 1 and 2, in that order."""
    a, b, c = np.deg2rad(degrees)
    around_0 = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    around_1 = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    around_2 = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return around_2 @ around_1 @ around_0


def spatial_matrix(transform: Transform, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The output-to-input voxel map (matrix, offset) of the composed spatial transform.

    Output voxel ``o`` samples input voxel ``matrix @ o + offset``: rotation and scaling about
    the centre, flips, then the translation.
    """
    center = (np.asarray(shape, dtype=float) - 1) / 2
    flips = np.diag([-1.0 if flip else 1.0 for flip in transform.flips])
    forward = rotation_matrix(transform.rotation_degrees) @ np.diag(transform.scale) @ flips
    matrix = np.linalg.inv(forward)
    offset = center - matrix @ (center + np.asarray(transform.translation_voxels))
    return matrix, offset


def apply_spatial(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """Resamples the volume once through the composed spatial transform."""
    matrix, offset = spatial_matrix(transform, volume.shape)
    return ndimage.affine_transform(
        volume,
        matrix,
        offset=offset,
        order=transform.interpolation_order,
        mode="constant",
        cval=float(volume.min()),
        prefilter=transform.interpolation_order > 1,
    )


def apply_intensity(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """Gamma on the volume's own range, then scale, shift and Gaussian noise."""
    low, high = float(volume.min()), float(volume.max())
    out = volume
    if transform.gamma != 1.0 and high > low:
        out = ((out - low) / (high - low)) ** transform.gamma * (high - low) + low
    out = out * transform.intensity_scale + transform.intensity_shift
    if transform.noise_std > 0:
        noise_rng = np.random.default_rng(transform.noise_seed)
        out = out + noise_rng.normal(0, transform.noise_std, size=out.shape)
    return out


def apply_transform(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """One augmented copy: a pure function of the volume and the sampled parameters."""
    volume = np.asarray(volume, dtype=np.float32)
    return apply_intensity(apply_spatial(volume, transform), transform).astype(np.float32)
