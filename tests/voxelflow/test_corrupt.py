import numpy as np
import pytest

from voxelflow.corrupt import (
    corrupt,
    inpaint,
    local_shuffle,
    nonlinear_intensity,
    outpaint,
    random_subvolume,
)
from voxelflow.params import PretrainParams


def _volume():
    return np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)


def test_nonlinear_intensity_is_monotonic_within_range():
    volume = _volume()
    out = nonlinear_intensity(volume, np.random.default_rng(1))
    order = np.argsort(volume.ravel())
    diffs = np.diff(out.ravel()[order])
    assert np.all(diffs >= -1e-5) or np.all(diffs <= 1e-5)
    assert out.min() >= volume.min() - 1e-5 and out.max() <= volume.max() + 1e-5


def test_local_shuffle_keeps_values():
    volume = _volume()
    out = local_shuffle(volume, np.random.default_rng(2))
    assert not np.array_equal(out, volume)
    assert np.allclose(np.sort(out.ravel()), np.sort(volume.ravel()))


def test_inpainting_changes_inner_boxes_and_outpainting_keeps_one_box():
    volume = _volume()
    inner = inpaint(volume, np.random.default_rng(3)) != volume
    assert 0 < inner.mean() < 0.5
    kept = outpaint(volume, np.random.default_rng(3)) == volume
    assert 0.5**3 * 0.9 < kept.mean() < 0.8**3 * 1.1
    coords = np.argwhere(kept)  # the kept voxels form one box
    extent = coords.max(axis=0) - coords.min(axis=0) + 1
    assert np.prod(extent) == kept.sum()


def test_random_subvolume_zooms_a_crop_back_to_the_shape():
    volume = np.zeros((16, 16, 16), np.float32)
    volume[:8] = 1.0  # a step along the first axis
    out = random_subvolume(volume, np.random.default_rng(5), (0.5, 0.5))
    assert out.shape == volume.shape and out.dtype == volume.dtype
    assert not np.array_equal(out, volume)
    assert random_subvolume(volume, np.random.default_rng(5), (1.0, 1.0)) is volume


@pytest.mark.parametrize(("inner", "outer", "kind"), [(1.0, 0.0, "in"), (0.0, 1.0, "out")])
def test_painting_probabilities_choose_the_corruption(inner, outer, kind):
    params = PretrainParams(
        intensity_probability=0,
        shuffle_probability=0,
        inpainting_probability=inner,
        outpainting_probability=outer,
        noise_std=0,
    )
    volume = _volume()
    changed = (corrupt(volume, np.random.default_rng(6), params) != volume).mean()
    assert (changed < 0.5) if kind == "in" else (changed > 0.4)


def test_corrupt_is_reproducible_and_not_identity():
    volume = _volume()
    params = PretrainParams()
    a = corrupt(volume, np.random.default_rng(4), params)
    b = corrupt(volume, np.random.default_rng(4), params)
    assert np.array_equal(a, b)
    assert not np.allclose(a, volume)
