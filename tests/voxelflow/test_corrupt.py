import numpy as np

from voxelflow.corrupt import corrupt, cutout, local_shuffle, nonlinear_intensity
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


def test_cutout_changes_a_region_only():
    volume = _volume()
    out = cutout(volume, np.random.default_rng(3))
    changed = out != volume
    assert 0 < changed.mean() < 1


def test_corrupt_is_reproducible_and_not_identity():
    volume = _volume()
    params = PretrainParams()
    a = corrupt(volume, np.random.default_rng(4), params)
    b = corrupt(volume, np.random.default_rng(4), params)
    assert np.array_equal(a, b)
    assert not np.allclose(a, volume)
