import numpy as np
from scipy import ndimage

from voxelflow.augment import Transform, apply_transform, sample_transform, spatial_matrix
from voxelflow.params import AugmentParams


def _identity(**changes):
    base = dict(
        rotation_degrees=(0.0, 0.0, 0.0),
        translation_voxels=(0.0, 0.0, 0.0),
        scale=(1.0, 1.0, 1.0),
        flips=(False, False, False),
        gamma=1.0,
        intensity_scale=1.0,
        intensity_shift=0.0,
        noise_std=0.0,
        noise_seed=0,
        interpolation_order=1,
    )
    return Transform(**{**base, **changes})


def _volume():
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.normal(size=(16, 16, 16)), 2).astype(np.float32)


def test_identity_is_identity():
    volume = _volume()
    assert np.allclose(apply_transform(volume, _identity()), volume, atol=1e-5)


def test_flip_matches_numpy_flip():
    volume = _volume()
    out = apply_transform(volume, _identity(flips=(True, False, False)))
    assert np.allclose(out, volume[::-1], atol=1e-5)


def test_integer_translation_shifts():
    volume = _volume()
    out = apply_transform(volume, _identity(translation_voxels=(2.0, 0.0, 0.0)))
    assert np.allclose(out[2:], volume[:-2], atol=1e-5)


def test_rotation_by_90_degrees_matches_rot90():
    volume = _volume()
    out = apply_transform(volume, _identity(rotation_degrees=(0.0, 0.0, 90.0)))
    inner = (slice(1, -1),) * 3
    assert any(
        np.allclose(out[inner], np.rot90(volume, k, axes=(0, 1))[inner], atol=1e-4) for k in (1, 3)
    )


def test_composed_matrix_is_one_resampling():
    transform = _identity(
        rotation_degrees=(10.0, -5.0, 7.0),
        scale=(1.1, 1.1, 1.1),
        translation_voxels=(1.0, 2.0, 0.5),
    )
    matrix, offset = spatial_matrix(transform, (16, 16, 16))
    assert matrix.shape == (3, 3) and offset.shape == (3,)
    assert np.isclose(abs(np.linalg.det(matrix)), 1 / 1.1**3)


def test_sampling_respects_ranges_and_is_reproducible():
    params = AugmentParams(rotation_degrees=5, translation_mm=2, flip_axes=[0])
    draws = [
        sample_transform(np.random.default_rng(seed), params, (2.0, 2.0, 2.0)) for seed in range(50)
    ]
    assert all(max(map(abs, t.rotation_degrees)) <= 5 for t in draws)
    assert all(max(map(abs, t.translation_voxels)) <= 1.0 for t in draws)
    assert not any(t.flips[1] or t.flips[2] for t in draws)
    assert any(t.flips[0] for t in draws) and not all(t.flips[0] for t in draws)
    again = sample_transform(np.random.default_rng(3), params, (2.0, 2.0, 2.0))
    assert again == draws[3]


def test_replay_from_recorded_parameters_is_exact():
    params = AugmentParams()
    volume = _volume()
    transform = sample_transform(np.random.default_rng(9), params, (2.0, 2.0, 2.0))
    replayed = Transform.from_dict(transform.to_dict())
    assert np.array_equal(apply_transform(volume, transform), apply_transform(volume, replayed))
