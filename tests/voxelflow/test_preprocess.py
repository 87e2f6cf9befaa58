import numpy as np
import pytest

from voxelflow.nifti import orientation_affine
from voxelflow.preprocess import PreprocessSpec, normalize, preprocess_volume, resample

SPEC = PreprocessSpec((2.0, 2.0, 2.0), (16, 16, 16), (0.5, 99.5), 1)


def _blob(shape, spacing, codes, center_mm=(6.0, -4.0, 2.0)):
    """A bright ball at a known world position, sampled on a grid with the given orientation."""
    affine = orientation_affine(codes, spacing, shape, (0.0, 0.0, 0.0))
    grid = np.indices(shape).reshape(3, -1).astype(float)
    world = (affine[:3, :3] @ grid).T + affine[:3, 3]
    data = (np.linalg.norm(world - np.array(center_mm), axis=1) < 5.0).astype(np.float32)
    return data.reshape(shape), affine


@pytest.mark.parametrize(
    ("codes", "spacing"),
    [("RAS", (1.0, 1.0, 1.0)), ("LPI", (0.8, 1.2, 1.5)), ("ASL", (1.5, 1.0, 0.9))],
)
def test_resample_puts_world_position_on_ras_grid(codes, spacing):
    shape = tuple(int(round(32 / step)) for step in spacing)
    data, affine = _blob(shape, spacing, codes)
    out = resample(data, affine, SPEC)
    assert out.shape == (16, 16, 16)
    center = np.array(np.unravel_index(np.argmax(out), out.shape), dtype=float)
    # RAS grid of 2 mm centred on the input field of view (world origin here)
    expected = (np.array([6.0, -4.0, 2.0]) / 2.0) + 7.5
    assert np.all(np.abs(center - expected) <= 1.0)


def test_orientations_give_same_array():
    a = resample(*_blob((32, 32, 32), (1.0, 1.0, 1.0), "RAS"), SPEC)
    b = resample(*_blob((32, 32, 32), (1.0, 1.0, 1.0), "LPS"), SPEC)
    assert np.allclose(a, b, atol=1e-5)


def test_crop_and_pad_to_target_shape():
    small, affine = _blob((10, 10, 10), (2.0, 2.0, 2.0), "RAS", (0.0, 0.0, 0.0))
    out = resample(small, affine, SPEC)
    assert out.shape == (16, 16, 16)
    assert out[0, 0, 0] == small.min()  # padded with the background


def test_normalize_is_robust_and_standardised():
    rng = np.random.default_rng(0)
    data = np.zeros((20, 20, 20), np.float32)
    data[5:15, 5:15, 5:15] = rng.normal(100, 10, size=(10, 10, 10))
    data[10, 10, 10] = 1e6  # a hot voxel must not dominate
    out = normalize(data, SPEC)
    core = out[5:15, 5:15, 5:15]
    assert abs(float(np.median(core))) < 0.2
    assert 0.7 < float(core.std()) < 1.5
    assert out.max() < 10


def test_normalize_refuses_constant():
    with pytest.raises(ValueError, match="percentiles coincide"):
        normalize(np.ones((8, 8, 8), np.float32), SPEC)


def test_spec_round_trip_and_version_check():
    assert PreprocessSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(ValueError, match="version"):
        PreprocessSpec.from_dict({**SPEC.to_dict(), "version": 99})


def test_preprocess_volume_is_float32_and_scale_invariant():
    data, affine = _blob((24, 24, 24), (1.3, 1.3, 1.3), "RAS")
    data = data * 50 + np.random.default_rng(1).normal(0, 1, data.shape).astype(np.float32) + 10
    a = preprocess_volume(data, affine, SPEC)
    b = preprocess_volume(data * 7.0, affine, SPEC)
    assert a.dtype == np.float32
    assert np.allclose(a, b, atol=1e-4)
