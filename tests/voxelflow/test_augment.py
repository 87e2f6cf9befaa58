import numpy as np
import pytest
from scipy import ndimage

from voxelflow.augment import (
    Transform,
    apply_intensity,
    apply_spatial,
    apply_transform,
    bspline_weights,
    elastic_field,
    sample_transform,
    spatial_matrix,
)
from voxelflow.params import AugmentParams

EVERYTHING = AugmentParams(
    anisotropy=0.1,
    elastic_probability=1.0,
    bias_field_probability=1.0,
    gamma_probability=1.0,
    contrast_probability=1.0,
    blur_probability=1.0,
    low_resolution_probability=1.0,
    noise_probability=1.0,
)


def _volume(shape=(16, 16, 16)):
    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)


def test_identity_parameters_return_the_input_exactly():
    volume = _volume()
    assert Transform().is_identity
    assert np.array_equal(apply_transform(volume, Transform()), volume)
    nearest = Transform(interpolation_order=0)
    assert np.array_equal(apply_transform(volume, nearest), volume)


def test_flip_matches_numpy_flip():
    volume = _volume()
    out = apply_transform(volume, Transform(flips=(True, False, True)))
    assert np.allclose(out, volume[::-1, :, ::-1], atol=1e-6)


def test_translation_moves_a_point_by_the_expected_voxels():
    volume = np.zeros((16, 16, 16), np.float32)
    volume[5, 6, 7] = 1.0
    out = apply_transform(volume, Transform(translation_voxels=(2.0, -1.0, 3.0)))
    assert np.unravel_index(np.argmax(out), out.shape) == (7, 5, 10)
    assert out.max() == 1.0


@pytest.mark.parametrize(("axis", "plane"), [(0, (1, 2)), (1, (2, 0)), (2, (0, 1))])
def test_rotation_by_90_degrees_equals_rot90(axis, plane):
    volume = _volume((15, 15, 15))  # odd: the centre is a voxel, so rot90 is exact
    degrees = [0.0, 0.0, 0.0]
    degrees[axis] = 90.0
    out = apply_transform(volume, Transform(rotation_degrees=tuple(degrees)))
    assert np.allclose(out, np.rot90(volume, 1, axes=plane), atol=1e-5)


def test_composed_affine_equals_sequential_application_within_interpolation_error():
    volume = _volume((32, 32, 32))
    transform = Transform(
        rotation_degrees=(10.0, -6.0, 8.0), scale=(1.1, 0.95, 1.0), translation_voxels=(1, 2, 0)
    )
    composed = apply_spatial(volume, transform)
    # the same maps one after the other with scipy, each one its own interpolation pass
    sequential = volume
    steps = [
        Transform(rotation_degrees=(10.0, 0.0, 0.0)),
        Transform(rotation_degrees=(0.0, -6.0, 0.0)),
        Transform(rotation_degrees=(0.0, 0.0, 8.0)),
    ]
    scale_only = Transform(scale=(1.1, 0.95, 1.0))
    for step in [scale_only, *steps, Transform(translation_voxels=(1, 2, 0))]:
        matrix, offset = spatial_matrix(step, volume.shape)
        sequential = ndimage.affine_transform(sequential, matrix, offset, order=1)
    inner = (slice(8, -8),) * 3
    error = np.abs(composed[inner] - sequential[inner])
    assert float(error.mean()) < 0.1 * float(volume[inner].std())  # five passes blur a bit
    # and the composed kernel agrees with scipy's one-pass affine_transform to float precision
    matrix, offset = spatial_matrix(transform, volume.shape)
    reference = ndimage.affine_transform(
        volume, matrix, offset, order=1, mode="constant", cval=float(volume.min())
    )
    assert np.allclose(composed, reference, atol=1e-4)


def test_one_pass_blurs_less_than_three_rotate_calls():
    volume = _volume((32, 32, 32))
    once = apply_spatial(volume, Transform(rotation_degrees=(10.0, 10.0, 10.0)))
    sequential = volume
    for axes in ((1, 2), (0, 2), (0, 1)):
        sequential = ndimage.rotate(sequential, 10.0, axes=axes, reshape=False, order=1)
    inner = (slice(8, -8),) * 3
    assert once[inner].std() > sequential[inner].std()  # less smoothing of the signal


def test_elastic_field_is_smooth_bounded_and_reproducible():
    transform = Transform(elastic_magnitude_voxels=(2.0, 2.0, 1.0), elastic_seed=5)
    field = elastic_field((24, 24, 24), transform)
    assert field.shape == (3, 24, 24, 24) and field.dtype == np.float32
    assert np.array_equal(field, elastic_field((24, 24, 24), transform))
    assert 1.0 < float(field[0].std()) < 3.0  # about the magnitude (2 voxels)
    # smooth: neighbours differ by a fraction of the magnitude
    assert float(np.abs(np.diff(field[0], axis=0)).max()) < 0.75 * 2.0
    assert float(field[2].std()) < float(field[0].std())  # magnitude per axis
    weights = bspline_weights(24, 5)
    assert np.allclose(weights.sum(axis=1), 1.0)  # a partition of unity
    assert elastic_field((24, 24, 24), Transform()).shape[0] == 0


def test_elastic_deformation_moves_voxels_without_changing_the_value_range():
    volume = _volume((24, 24, 24))
    transform = Transform(elastic_magnitude_voxels=(2.0, 2.0, 2.0), elastic_seed=1)
    out = apply_spatial(volume, transform)
    assert not np.allclose(out, volume, atol=1e-3)
    assert volume.min() - 1e-6 <= out.min() and out.max() <= volume.max() + 1e-6


def test_intensity_transforms():
    volume = _volume() * 2 + 5
    low, high = float(volume.min()), float(volume.max())
    gamma = apply_intensity(volume, Transform(gamma=2.0))
    assert np.isclose(gamma.min(), low) and np.isclose(gamma.max(), high, rtol=1e-5)
    assert float(np.median(gamma)) < float(np.median(volume))  # gamma > 1 darkens mid-tones
    contrast = apply_intensity(volume, Transform(intensity_scale=1.5, intensity_shift=-1.0))
    assert np.allclose(contrast, volume * 1.5 - 1.0, atol=1e-5)
    bias = apply_intensity(volume, Transform(bias_strength=0.3, bias_seed=2))
    ratio = (bias - low + 1e-3) / (volume - low + 1e-3)
    assert ratio.std() > 0.01 and ndimage.laplace(np.log(ratio[2:-2, 2:-2, 2:-2])).std() < 0.1
    blurred = apply_intensity(volume, Transform(blur_sigma_voxels=(1.0, 1.0, 1.0)))
    assert blurred.std() < volume.std()
    thick = apply_intensity(volume, Transform(low_resolution_factor=3.0, low_resolution_axis=2))
    assert thick.shape == volume.shape
    assert np.abs(np.diff(thick, axis=2)).mean() < np.abs(np.diff(volume, axis=2)).mean()
    noisy = apply_intensity(volume, Transform(noise_std=0.5, noise_seed=3))
    assert abs(float((noisy - volume).std()) - 0.5) < 0.05
    rician = apply_intensity(volume, Transform(noise_kind="rician", noise_std=0.5, noise_seed=3))
    floor = rician[volume == volume.min()]
    assert float(floor.mean()) > low + 0.3  # the background floor rises: Rician, not Gaussian
    assert float(np.mean(rician - volume)) > 0  # Rician noise biases intensities upwards


def test_sampling_respects_ranges_and_probabilities_and_is_reproducible():
    params = AugmentParams(rotation_degrees=5, translation_mm=2, flip_axes=[0])
    draws = [
        sample_transform(np.random.default_rng(seed), params, (2.0, 2.0, 2.0)) for seed in range(50)
    ]
    assert all(max(map(abs, t.rotation_degrees)) <= 5 for t in draws)
    assert all(max(map(abs, t.translation_voxels)) <= 1.0 for t in draws)
    assert not any(t.flips[1] or t.flips[2] for t in draws)
    assert any(t.flips[0] for t in draws) and not all(t.flips[0] for t in draws)
    assert not any(any(t.elastic_magnitude_voxels) for t in draws)  # probability 0
    assert any(t.gamma != 1.0 for t in draws) and any(t.gamma == 1.0 for t in draws)
    again = sample_transform(np.random.default_rng(3), params, (2.0, 2.0, 2.0))
    assert again == draws[3]
    # changing one transform's probability does not change what the others draw
    other = sample_transform(
        np.random.default_rng(3), params.model_copy(update={"elastic_probability": 1.0}), (2,) * 3
    )
    assert other.rotation_degrees == again.rotation_degrees and other.gamma == again.gamma
    assert other.elastic_magnitude_voxels == (0.5, 0.5, 0.5)  # 1 mm at 2 mm voxels


def test_replay_from_recorded_parameters_is_exact():
    volume = _volume((24, 24, 24))
    transform = sample_transform(np.random.default_rng(11), EVERYTHING, (1.5, 1.5, 1.5))
    assert any(transform.elastic_magnitude_voxels) and transform.noise_std > 0
    first = apply_transform(volume, transform)
    replayed = apply_transform(volume, Transform.from_dict(transform.to_dict()))
    assert first.tobytes() == replayed.tobytes()
    with pytest.raises(ValueError, match="rebuild the cache"):
        Transform.from_dict({**transform.to_dict(), "version": 1})


def test_cubic_and_nearest_options():
    volume = _volume((20, 20, 20))
    transform = Transform(rotation_degrees=(0.0, 0.0, 17.0), elastic_magnitude_voxels=(1, 1, 1))
    linear = apply_spatial(volume, transform)
    cubic = apply_spatial(volume, Transform(**{**transform.to_dict(), "interpolation_order": 3}))
    nearest = apply_spatial(volume, Transform(**{**transform.to_dict(), "interpolation_order": 0}))
    inner = (slice(5, -5),) * 3
    assert 0 < np.abs(cubic - linear)[inner].mean() < 0.1 * np.abs(volume).mean()
    assert set(np.unique(nearest)) <= set(np.unique(volume))
    # without the elastic field, all three orders equal scipy's, edges included
    affine_only = Transform(rotation_degrees=(0.0, 0.0, 17.0), translation_voxels=(0.3, 0, 0))
    matrix, offset = spatial_matrix(affine_only, volume.shape)
    for order, tolerance in ((0, 0.0), (1, 1e-5), (3, 1e-4)):
        settings = {**affine_only.to_dict(), "interpolation_order": order}
        ours = apply_spatial(volume, Transform(**settings))
        theirs = ndimage.affine_transform(
            volume, matrix, offset, order=order, mode="constant", cval=float(volume.min())
        )
        assert np.abs(ours - theirs).max() <= tolerance, order


def test_half_turn_has_no_spurious_background_on_the_border():
    volume = _volume((8, 8, 8)) + 10
    out = apply_spatial(volume, Transform(rotation_degrees=(0.0, 180.0, 0.0)))
    assert np.allclose(out, volume[::-1, :, ::-1], atol=1e-4)
