import numpy as np
import pytest

from voxelflow.nifti import orientation_affine
from voxelflow.preprocess import (
    PreprocessSpec,
    foreground_box,
    grid_center,
    normalize,
    preprocess_volume,
    resample,
    resample_labels,
)

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


def test_without_an_upper_clip_a_hot_voxel_keeps_out_of_the_statistics():
    """No upper clip (``[0.5, 100]``) keeps a bright finding, and a hot voxel must not raise
    the foreground threshold (10% of the range) and with it shift the whole volume."""
    rng = np.random.default_rng(1)
    data = np.zeros((20, 20, 20), np.float32)
    data[4:16, 4:16, 4:16] = rng.normal(50, 5, size=(12, 12, 12))  # dim tissue
    data[7:13, 7:13, 7:13] = rng.normal(100, 5, size=(6, 6, 6))  # bright tissue
    clean = normalize(data, PreprocessSpec((2.0,) * 3, (16,) * 3, (0.5, 100.0), 1))
    data[2, 2, 2] = 5000.0  # 50x the brightest tissue: 10% of it is above every voxel
    spiked = normalize(data, PreprocessSpec((2.0,) * 3, (16,) * 3, (0.5, 100.0), 1))
    tissue = np.zeros(data.shape, bool)
    tissue[4:16, 4:16, 4:16] = True
    np.testing.assert_allclose(spiked[tissue], clean[tissue], atol=0.05)
    assert spiked[2, 2, 2] > 100  # kept, not clipped


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


def _head(shape, spacing, codes, center_mm=(4.0, -6.0, 3.0)):
    """A smooth ellipsoidal 'head' with structure inside, off the centre of the field of view."""
    affine = orientation_affine(codes, spacing, shape, (0.0, 0.0, 0.0))
    grid = np.indices(shape).reshape(3, -1).astype(float)
    world = (affine[:3, :3] @ grid).T + affine[:3, 3] - np.array(center_mm)
    radius = np.sqrt(((world / np.array([14.0, 17.0, 12.0])) ** 2).sum(axis=1))
    data = 100 / (1 + np.exp((radius - 1) * 12)) + 30 * np.sin(world[:, 0] / 4) * (radius < 0.8)
    return data.reshape(shape).astype(np.float32), affine


CROP = PreprocessSpec((2.0, 2.0, 2.0), (24, 24, 24), (0.5, 99.9), 1, crop_foreground=True)


@pytest.mark.parametrize(
    ("codes", "spacing"),
    [("LAS", (1.0, 1.0, 1.0)), ("LPS", (1.0, 1.0, 1.0)), ("LPS", (0.7, 1.1, 1.6))],
)
def test_same_head_in_ras_las_lps_and_anisotropic_gives_the_same_array(codes, spacing):
    reference = preprocess_volume(*_head((64, 64, 64), (1.0, 1.0, 1.0), "RAS"), CROP)
    shape = tuple(int(round(64 / step)) for step in spacing)
    other = preprocess_volume(*_head(shape, spacing, codes), CROP)
    assert other.shape == (24, 24, 24)
    scale = float(reference.max() - reference.min())
    tolerance = 1e-4 if spacing == (1.0, 1.0, 1.0) else 0.1  # resampled differently
    assert float(np.abs(other - reference).mean()) < tolerance * scale
    assert np.corrcoef(other.ravel(), reference.ravel())[0, 1] > 0.98


def test_foreground_crop_centres_the_grid_on_the_head():
    data, affine = _head((80, 80, 80), (1.0, 1.0, 1.0), "RAS", center_mm=(18.0, 0.0, 0.0))
    center = grid_center(data, affine, CROP)
    assert np.allclose(center, [18.0, 0.0, 0.0], atol=1.5)
    fov = grid_center(data, affine, PreprocessSpec((2.0,) * 3, (24,) * 3, (0.5, 99.9), 1))
    assert np.allclose(fov, [0.0, 0.0, 0.0], atol=1.0)
    first, last = foreground_box(data)
    assert (last - first + 1)[0] == pytest.approx(33, abs=3)  # 14 mm semi-axis, soft edge


def test_window_and_minmax_normalisation():
    data = np.linspace(-1200, 1500, 8000, dtype=np.float32).reshape(20, 20, 20)
    window = PreprocessSpec(
        (1.0,) * 3, (8,) * 3, (0.5, 99.9), 1, normalization="window", window=(-100.0, 300.0)
    )
    out = normalize(data, window)
    assert out.min() == -1.0 and out.max() == 1.0
    assert normalize(np.array([100.0], np.float32), window)[0] == 0.0  # the window's centre
    minmax = PreprocessSpec((1.0,) * 3, (8,) * 3, (0.0, 100.0), 1, normalization="minmax")
    out = normalize(data, minmax)
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ValueError, match="needs window"):
        PreprocessSpec((1.0,) * 3, (8,) * 3, (0.5, 99.9), 1, normalization="window")


def test_label_maps_use_nearest_neighbour():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:15, 5:25, 5:25] = 1
    labels[15:25, 5:25, 5:25] = 3
    affine = orientation_affine("LPS", (1.0, 1.0, 1.0), labels.shape, (0, 0, 0))
    spec = PreprocessSpec((1.7, 1.7, 1.7), (16, 16, 16), (0.5, 99.9), 3)
    out = resample_labels(labels, affine, spec, np.zeros(3))
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1, 3}
    image = resample(labels.astype(np.float32), affine, spec, np.zeros(3))
    assert len(np.unique(image)) > 3  # an image is interpolated (cubic here)


def test_cubic_is_close_to_linear_on_a_smooth_volume():
    data, affine = _head((40, 40, 40), (1.5, 1.5, 1.5), "RAS")
    linear = resample(data, affine, CROP)
    cubic = resample(data, affine, PreprocessSpec(**{**CROP.to_dict(), "interpolation_order": 3}))
    difference = float(np.abs(cubic - linear).mean())
    assert 0.0 < difference < 2.0  # cubic really ran, and agrees on a smooth volume


def test_version_one_specs_still_read():
    old = {**SPEC.to_dict(), "version": 1, "normalization": "clip-percentiles, z-score ..."}
    del old["window"], old["crop_foreground"]
    spec = PreprocessSpec.from_dict(old)
    assert spec.normalization == "zscore" and not spec.crop_foreground and spec.version == 1
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
