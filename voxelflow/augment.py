"""The 3D augmentation engine.

An augmentation is two steps: :func:`sample_transform` draws the parameters of one copy from
a generator, and :func:`apply_transform` applies them. The second is a pure function of the
volume and the parameters (the random fields are drawn from seeds recorded in the
parameters), so the recorded parameters replay a copy exactly.

**One resampling pass.** Every spatial transform (rotation about the three axes, isotropic
and anisotropic scaling, flips, translation, and the elastic deformation) is composed into
one map from output to input voxel coordinates, and the volume is interpolated once through
it. Doing them one after the other (``scipy.ndimage.rotate`` three times, then ``shift``)
costs a full interpolation pass each and blurs the volume again each time; here the elastic
field is the only array built, the affine part is evaluated per voxel inside a compiled
(numba) kernel that also does the interpolation, so no coordinate grid is materialised.
Linear interpolation by default; nearest (0) or cubic (3, through
``scipy.ndimage.map_coordinates`` with a B-spline prefilter, several times slower) as
options.

**Elastic deformation**: random displacements on a coarse grid of control points (normal,
with the magnitude from params), upsampled to every voxel with cubic B-spline weights along
each axis (a separable tensor product: three small matrix products), so the field is smooth
and costs a fraction of one interpolation pass.

**Intensity transforms** follow on the resampled volume, vectorised in float32, in the order
of an acquisition: smooth multiplicative bias field, gamma, contrast and brightness, blur,
simulated low resolution (thick slices along one axis), then Gaussian or Rician noise.
Preprocessed volumes are z-scored (negative values), so the multiplicative and Rician
transforms act on the volume above its minimum (the background) and add the minimum back.

Example:
    >>> rng = np.random.default_rng(0)
    >>> transform = sample_transform(rng, AugmentParams(), spacing_mm=(2.0, 2.0, 2.0))
    >>> augmented = apply_transform(volume, transform)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numba
import numpy as np
from scipy import ndimage

from voxelflow.params import AugmentParams

TRANSFORM_VERSION = 2
EDGE = 1e-6  # voxels: coordinates this close outside the input still sample its edge
NO_FIELD = np.zeros((0, 1, 1, 1), dtype=np.float32)


@dataclass(frozen=True)
class Transform:
    """The sampled parameters of one augmented copy (all that is needed to replay it).

    Spatial parameters map output voxels to input voxels about the volume's centre;
    ``elastic_*`` and ``bias_*`` describe random smooth fields drawn from their seeds.
    A parameter at its identity value (rotation 0, scale 1, gamma 1, magnitude 0, ...)
    means the transform was not drawn for this copy.
    """

    rotation_degrees: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    flips: tuple[bool, bool, bool] = (False, False, False)
    translation_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elastic_magnitude_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elastic_control_points: int = 5
    elastic_seed: int = 0
    bias_strength: float = 0.0
    bias_seed: int = 0
    gamma: float = 1.0
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    blur_sigma_voxels: tuple[float, float, float] = (0.0, 0.0, 0.0)
    low_resolution_factor: float = 1.0
    low_resolution_axis: int = 0
    noise_kind: str = "gaussian"
    noise_std: float = 0.0
    noise_seed: int = 0
    interpolation_order: int = 1
    version: int = TRANSFORM_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Transform:
        if data.get("version") != TRANSFORM_VERSION:
            raise ValueError(
                f"transform version {data.get('version')!r} cannot be replayed by this "
                f"version of voxelflow (expected {TRANSFORM_VERSION}); rebuild the cache"
            )
        return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})

    @property
    def is_identity(self) -> bool:
        return self == Transform(
            elastic_control_points=self.elastic_control_points,
            elastic_seed=self.elastic_seed,
            bias_seed=self.bias_seed,
            noise_kind=self.noise_kind,
            noise_seed=self.noise_seed,
            low_resolution_axis=self.low_resolution_axis,
            interpolation_order=self.interpolation_order,
        )


def sample_transform(
    rng: np.random.Generator, params: AugmentParams, spacing_mm: tuple[float, float, float]
) -> Transform:
    """Draws one copy's parameters from the ranges and probabilities in ``params``.

    The same number of values is drawn whatever the probabilities decide, so changing one
    transform's probability or range does not change what the others draw.
    """
    spacing = np.asarray(spacing_mm, dtype=float)

    def chance(probability: float) -> bool:
        return bool(rng.random() < probability)

    rotation = rng.uniform(-params.rotation_degrees, params.rotation_degrees, size=3)
    rotate = chance(params.rotation_probability)
    isotropic = rng.uniform(*params.scale_range)
    anisotropic = rng.uniform(1 - params.anisotropy, 1 + params.anisotropy, size=3)
    scale = chance(params.scale_probability)
    flip_draws = rng.random(3)
    translation = rng.uniform(-params.translation_mm, params.translation_mm, size=3)
    translate = chance(params.translation_probability)
    elastic = chance(params.elastic_probability)
    elastic_seed = int(rng.integers(2**31))
    bias = rng.uniform(0, params.bias_field_strength)
    bias_on = chance(params.bias_field_probability)
    bias_seed = int(rng.integers(2**31))
    gamma = float(np.exp(rng.uniform(*np.log(params.gamma_range))))
    gamma_on = chance(params.gamma_probability)
    contrast = rng.uniform(1 - params.intensity_scale, 1 + params.intensity_scale)
    brightness = rng.uniform(-params.intensity_shift, params.intensity_shift)
    contrast_on = chance(params.contrast_probability)
    blur = rng.uniform(*params.blur_sigma_mm, size=3) / spacing
    blur_on = chance(params.blur_probability)
    low_factor = rng.uniform(*params.low_resolution_factor)
    low_axis = int(rng.integers(3))
    low_on = chance(params.low_resolution_probability)
    noise = rng.uniform(0, params.noise_std)
    noise_on = chance(params.noise_probability)
    noise_seed = int(rng.integers(2**31))
    flips = tuple(
        bool(axis in params.flip_axes and flip_draws[axis] < params.flip_probability)
        for axis in range(3)
    )

    def floats(values) -> tuple[float, ...]:
        return tuple(float(value) for value in values)

    return Transform(
        rotation_degrees=floats(rotation if rotate else np.zeros(3)),
        scale=floats(isotropic * anisotropic if scale else np.ones(3)),
        flips=flips,
        translation_voxels=floats(translation / spacing if translate else np.zeros(3)),
        elastic_magnitude_voxels=floats(
            params.elastic_magnitude_mm / spacing if elastic else np.zeros(3)
        ),
        elastic_control_points=params.elastic_control_points,
        elastic_seed=elastic_seed,
        bias_strength=float(bias if bias_on else 0.0),
        bias_seed=bias_seed,
        gamma=gamma if gamma_on else 1.0,
        intensity_scale=float(contrast if contrast_on else 1.0),
        intensity_shift=float(brightness if contrast_on else 0.0),
        blur_sigma_voxels=floats(blur if blur_on else np.zeros(3)),
        low_resolution_factor=float(low_factor if low_on else 1.0),
        low_resolution_axis=low_axis,
        noise_kind=params.noise_kind,
        noise_std=float(noise if noise_on else 0.0),
        noise_seed=noise_seed,
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
    """The output-to-input voxel map (matrix, offset) of the composed affine transform.

    Output voxel ``o`` samples input voxel ``matrix @ o + offset``: rotation, scaling and
    flips about the centre, then the translation.
    """
    center = (np.asarray(shape, dtype=float) - 1) / 2
    flips = np.diag([-1.0 if flip else 1.0 for flip in transform.flips])
    forward = rotation_matrix(transform.rotation_degrees) @ np.diag(transform.scale) @ flips
    matrix = np.linalg.inv(forward)
    offset = center - matrix @ (center + np.asarray(transform.translation_voxels))
    return matrix, offset


def bspline_weights(size: int, control_points: int) -> np.ndarray:
    """A (size, control_points) matrix: cubic B-spline weights of the control points at every
    position along an axis (control points spread evenly over it, clamped at the ends)."""
    positions = np.linspace(0, control_points - 1, size)
    weights = np.zeros((size, control_points))
    base = np.floor(positions).astype(int)
    fraction = positions - base
    kernels = (
        (1 - fraction) ** 3 / 6,
        (3 * fraction**3 - 6 * fraction**2 + 4) / 6,
        (-3 * fraction**3 + 3 * fraction**2 + 3 * fraction + 1) / 6,
        fraction**3 / 6,
    )
    for shift, kernel in zip((-1, 0, 1, 2), kernels, strict=True):
        index = np.clip(base + shift, 0, control_points - 1)
        np.add.at(weights, (np.arange(size), index), kernel)
    return weights


def smooth_field(
    shape: tuple[int, int, int], control_points: int, seed: int, channels: int
) -> np.ndarray:
    """``channels`` smooth random fields of ``shape`` (float32) with unit standard deviation
    on average: normal values on a coarse grid, upsampled with cubic B-spline weights.

    The B-spline weights average neighbouring control points, which shrinks the field's
    spread (to about a third with 5 points); each axis's weights are scaled back by their
    root-mean-square norm. The products run in a compiled loop in float64, not through
    BLAS, so the field is bit-identical on every CPU type.
    """
    rng = np.random.default_rng(seed)
    control = rng.standard_normal((channels, *(control_points,) * 3))
    bases = []
    for size in shape:
        weights = bspline_weights(size, control_points)
        bases.append(weights / np.sqrt(np.mean(np.sum(weights**2, axis=1))))
    out = np.empty((channels, *shape), dtype=np.float32)
    _tensor_product(bases[0], bases[1], bases[2], control, out)
    return out


@numba.njit(cache=True, nogil=True)
def _tensor_product(wx, wy, wz, control, out):  # pragma: no cover - compiled
    """out[n, a, b, c] = sum_ijk wx[a, i] wy[b, j] wz[c, k] control[n, i, j, k], separably."""
    channels, g0, g1, g2 = control.shape
    nx, ny, nz = out.shape[1], out.shape[2], out.shape[3]
    for n in range(channels):
        along_z = np.zeros((g0, g1, nz))
        for i in range(g0):
            for j in range(g1):
                for c in range(nz):
                    total = 0.0
                    for k in range(g2):
                        total += wz[c, k] * control[n, i, j, k]
                    along_z[i, j, c] = total
        along_y = np.zeros((g0, ny, nz))
        for i in range(g0):
            for b in range(ny):
                for j in range(g1):
                    weight = wy[b, j]
                    for c in range(nz):
                        along_y[i, b, c] += weight * along_z[i, j, c]
        row = np.empty((ny, nz))
        for a in range(nx):
            row[:, :] = 0.0
            for i in range(g0):  # a fixed order of summation: the same bits everywhere
                weight = wx[a, i]
                for b in range(ny):
                    for c in range(nz):
                        row[b, c] += weight * along_y[i, b, c]
            for b in range(ny):
                for c in range(nz):
                    out[n, a, b, c] = row[b, c]


def elastic_field(shape: tuple[int, int, int], transform: Transform) -> np.ndarray:
    """The displacement (3, *shape) in output voxels, or an empty array when there is none."""
    magnitude = np.asarray(transform.elastic_magnitude_voxels, dtype=np.float32)
    if not magnitude.any():
        return NO_FIELD
    field = smooth_field(shape, transform.elastic_control_points, transform.elastic_seed, 3)
    return field * magnitude[:, None, None, None]


@numba.njit(cache=True, nogil=True)
def _resample(volume, matrix, offset, field, cval, order, out):  # pragma: no cover - compiled
    """out[o] = volume[matrix @ (o + field[:, o]) + offset], linear or nearest, cval outside
    the input (the convention of scipy.ndimage's ``mode="constant"``)."""
    sx, sy, sz = volume.shape
    nx, ny, nz = out.shape
    has_field = field.shape[0] == 3
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                a, b, c = float(i), float(j), float(k)
                if has_field:
                    a += field[0, i, j, k]
                    b += field[1, i, j, k]
                    c += field[2, i, j, k]
                x = matrix[0, 0] * a + matrix[0, 1] * b + matrix[0, 2] * c + offset[0]
                y = matrix[1, 0] * a + matrix[1, 1] * b + matrix[1, 2] * c + offset[1]
                z = matrix[2, 0] * a + matrix[2, 1] * b + matrix[2, 2] * c + offset[2]
                # outside the input (beyond rounding error, e.g. sin(pi) != 0): cval
                if (
                    x < -EDGE or y < -EDGE or z < -EDGE
                    or x > sx - 1 + EDGE or y > sy - 1 + EDGE or z > sz - 1 + EDGE
                ):
                    out[i, j, k] = cval
                    continue
                x = min(max(x, 0.0), sx - 1.0)
                y = min(max(y, 0.0), sy - 1.0)
                z = min(max(z, 0.0), sz - 1.0)
                if order == 0:
                    xi, yi, zi = math.floor(x + 0.5), math.floor(y + 0.5), math.floor(z + 0.5)
                    out[i, j, k] = volume[min(xi, sx - 1), min(yi, sy - 1), min(zi, sz - 1)]
                    continue
                x0, y0, z0 = int(x), int(y), int(z)
                x1, y1, z1 = min(x0 + 1, sx - 1), min(y0 + 1, sy - 1), min(z0 + 1, sz - 1)
                fx, fy, fz = x - x0, y - y0, z - z0
                c00 = volume[x0, y0, z0] * (1 - fx) + volume[x1, y0, z0] * fx
                c01 = volume[x0, y0, z1] * (1 - fx) + volume[x1, y0, z1] * fx
                c10 = volume[x0, y1, z0] * (1 - fx) + volume[x1, y1, z0] * fx
                c11 = volume[x0, y1, z1] * (1 - fx) + volume[x1, y1, z1] * fx
                c0 = c00 * (1 - fy) + c10 * fy
                c1 = c01 * (1 - fy) + c11 * fy
                out[i, j, k] = c0 * (1 - fz) + c1 * fz


def apply_spatial(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """Resamples the volume once through the composed affine + elastic transform."""
    volume = np.ascontiguousarray(volume, dtype=np.float32)
    matrix, offset = spatial_matrix(transform, volume.shape)
    field = elastic_field(volume.shape, transform)
    cval = float(volume.min())
    order = transform.interpolation_order
    if order in (0, 1):
        out = np.empty_like(volume)
        _resample(volume, matrix, offset, field, np.float32(cval), order, out)
        return out
    grid = np.indices(volume.shape, dtype=np.float32)
    if field.shape[0] == 3:
        grid += field
    coordinates = np.einsum("ij,j...->i...", matrix.astype(np.float32), grid)
    coordinates += offset.astype(np.float32)[:, None, None, None]
    return ndimage.map_coordinates(
        volume, coordinates, order=order, mode="constant", cval=cval, prefilter=True
    ).astype(np.float32)


def _low_resolution(volume: np.ndarray, factor: float, axis: int) -> np.ndarray:
    """Thick slices along ``axis``: averaged down by ``factor``, linearly back up."""
    size = volume.shape[axis]
    coarse = max(1, int(round(size / factor)))
    if coarse >= size:
        return volume
    zoom = [1.0, 1.0, 1.0]
    zoom[axis] = coarse / size
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = (factor - 1) / 2
    small = ndimage.zoom(
        ndimage.gaussian_filter(volume, sigma), zoom, order=1, grid_mode=True, mode="nearest"
    )
    back = [1.0, 1.0, 1.0]
    back[axis] = size / small.shape[axis]
    return ndimage.zoom(small, back, order=1, grid_mode=True, mode="nearest").astype(np.float32)


def apply_intensity(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """Bias field, gamma, contrast/brightness, blur, low resolution, noise (in that order)."""
    out = np.asarray(volume, dtype=np.float32)
    low, high = float(out.min()), float(out.max())
    if transform.bias_strength > 0:
        field = smooth_field(out.shape, 4, transform.bias_seed, 1)[0]
        out = (out - low) * np.exp(np.float32(transform.bias_strength) * field) + low
        high = float(out.max())
    if transform.gamma != 1.0 and high > low:
        scaled = (out - low) / np.float32(high - low)
        out = scaled ** np.float32(transform.gamma) * np.float32(high - low) + low
    if transform.intensity_scale != 1.0 or transform.intensity_shift != 0.0:
        out = out * np.float32(transform.intensity_scale) + np.float32(transform.intensity_shift)
    if any(sigma > 0 for sigma in transform.blur_sigma_voxels):
        out = ndimage.gaussian_filter(out, transform.blur_sigma_voxels)
    if transform.low_resolution_factor > 1.0:
        out = _low_resolution(out, transform.low_resolution_factor, transform.low_resolution_axis)
    if transform.noise_std > 0:
        rng = np.random.default_rng(transform.noise_seed)
        std = np.float32(transform.noise_std)
        real = rng.standard_normal(out.shape, dtype=np.float32) * std
        if transform.noise_kind == "rician":
            floor = float(out.min())
            imaginary = rng.standard_normal(out.shape, dtype=np.float32) * std
            out = np.sqrt((out - floor + real) ** 2 + imaginary**2) + np.float32(floor)
        else:
            out = out + real
    return out.astype(np.float32, copy=False)


def apply_transform(volume: np.ndarray, transform: Transform) -> np.ndarray:
    """One augmented copy: a pure function of the volume and the sampled parameters."""
    return apply_intensity(apply_spatial(volume, transform), transform)
