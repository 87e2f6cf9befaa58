"""Corruptions for self-supervised restoration pretraining (after Models Genesis).

The encoder-decoder learns to restore the original volume from a corrupted copy: a
non-linear intensity transformation, local voxel shuffling, inner cut-out (in-painting) or
outer cut-out (out-painting), and noise. Each is a pure function of the volume and a
generator, so a copy is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from voxelflow.params import PretrainParams


def nonlinear_intensity(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random monotonic Bezier curve applied to the volume's own intensity range."""
    low, high = float(volume.min()), float(volume.max())
    if high <= low:
        return volume
    unit = (volume - low) / (high - low)
    p1, p2 = rng.random(2)
    t = np.linspace(0, 1, 256)
    xs = 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3
    ys = 3 * (1 - t) ** 2 * t * p2 + 3 * (1 - t) * t**2 * p1 + t**3
    order = np.argsort(xs)
    mapped = np.interp(unit, xs[order], ys[order])
    if rng.random() < 0.5:
        mapped = 1 - mapped
    return (mapped * (high - low) + low).astype(volume.dtype)


def local_shuffle(
    volume: np.ndarray, rng: np.random.Generator, blocks: int = 40, size: int = 4
) -> np.ndarray:
    """Shuffles the voxels inside small random blocks: texture must be restored from context."""
    out = volume.copy()
    for _ in range(blocks):
        corner = [int(rng.integers(0, max(1, dim - size))) for dim in volume.shape]
        region = tuple(slice(c, c + size) for c in corner)
        patch = out[region]
        out[region] = rng.permutation(patch.ravel()).reshape(patch.shape)
    return out


def _random_box(shape, rng: np.random.Generator, low: float, high: float) -> tuple[slice, ...]:
    box = []
    for dim in shape:
        length = max(1, int(dim * rng.uniform(low, high)))
        start = int(rng.integers(0, dim - length + 1))
        box.append(slice(start, start + length))
    return tuple(box)


def inpaint(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inner cut-out: 1-3 random boxes (15-35% of each axis) replaced by noise of the
    volume's statistics; the network in-paints them from their surroundings."""
    noise = rng.normal(volume.mean(), volume.std() + 1e-6, size=volume.shape).astype(volume.dtype)
    out = volume.copy()
    for _ in range(int(rng.integers(1, 4))):
        box = _random_box(volume.shape, rng, 0.15, 0.35)
        out[box] = noise[box]
    return out


def outpaint(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Outer cut-out: everything but one random box (50-80% of each axis) replaced by noise;
    the network out-paints the surroundings from the box."""
    out = rng.normal(volume.mean(), volume.std() + 1e-6, size=volume.shape).astype(volume.dtype)
    box = _random_box(volume.shape, rng, 0.5, 0.8)
    out[box] = volume[box]
    return out


def random_subvolume(
    volume: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]
) -> np.ndarray:
    """A random sub-volume, each axis a fraction in ``scale`` of the volume's, resized
    (linearly) back to the volume's shape: restoration then sees anatomy at several scales
    and positions, as Models Genesis's cubes do. ``scale`` (1, 1) returns the volume."""
    low, high = scale
    if low >= 1.0:
        return volume
    fraction = rng.uniform(low, high)
    box = _random_box(volume.shape, rng, fraction, fraction)
    crop = volume[box]
    factors = [full / part for full, part in zip(volume.shape, crop.shape, strict=True)]
    out = ndimage.zoom(crop, factors, order=1, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, size) for size in volume.shape)].astype(volume.dtype)


def corrupt(volume: np.ndarray, rng: np.random.Generator, params: PretrainParams) -> np.ndarray:
    """One corrupted copy of the volume (the restoration target is the volume itself).

    Non-linear intensity, local shuffling and noise each with their own probability, then
    at most one of in-painting and out-painting (one uniform draw decides).
    """
    out = volume.astype(np.float32, copy=True)
    if rng.random() < params.intensity_probability:
        out = nonlinear_intensity(out, rng)
    if rng.random() < params.shuffle_probability:
        out = local_shuffle(out, rng)
    painting = rng.random()
    if painting < params.inpainting_probability:
        out = inpaint(out, rng)
    elif painting < params.inpainting_probability + params.outpainting_probability:
        out = outpaint(out, rng)
    if params.noise_std > 0:
        out = out + rng.normal(0, params.noise_std, size=out.shape).astype(np.float32)
    return out
