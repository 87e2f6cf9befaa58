import numpy as np
import pytest

from voxelflow.fingerprint import resolve_spec, summarize, volume_stats
from voxelflow.nifti import orientation_affine
from voxelflow.params import PreprocessParams


def _stats(spacing, codes="RAS", seed=0):
    shape = (20, 24, 16)
    data = np.zeros(shape, np.float32)
    data[4:16, 6:18, 4:12] = np.random.default_rng(seed).normal(100, 10, (12, 12, 8))
    return volume_stats(data, orientation_affine(codes, spacing, shape, (0, 0, 0)), seed)


def test_volume_stats_are_along_ras_axes():
    stats = _stats((1.0, 2.0, 3.0), codes="ASL")  # voxel axes run A, S, L
    assert stats["spacing_mm"] == [3.0, 1.0, 2.0]
    assert stats["shape"] == [16, 20, 24]
    assert stats["foreground_extent_mm"] == [24.0, 12.0, 24.0]
    assert 50 < float(np.median(stats["samples"])) < 150


def test_summary_and_auto_values():
    fingerprint = summarize([_stats((1.0, 1.0, 2.0), seed=s) for s in range(3)])
    assert fingerprint["volumes"] == 3
    assert fingerprint["spacing_mm"]["median"] == [1.0, 1.0, 2.0]
    assert 60 < fingerprint["foreground_intensity"]["p0.5"] < 100
    params = PreprocessParams(
        target_spacing_mm="auto", target_shape="auto", normalization="window", window="auto"
    )
    spec, filled = resolve_spec(params, fingerprint)
    assert filled == ["target_spacing_mm", "target_shape", "window"]
    assert spec.target_spacing_mm == (1.0, 1.0, 2.0)
    assert spec.target_shape == (16, 16, 8)  # 12 x 12 x 16 mm of foreground, rounded up
    assert spec.window == (
        fingerprint["foreground_intensity"]["p0.5"],
        fingerprint["foreground_intensity"]["p99.5"],
    )
    fov = resolve_spec(params.model_copy(update={"crop_foreground": False}), fingerprint)[0]
    assert fov.target_shape == (24, 24, 16)  # the 20 x 24 x 32 mm field of view, rounded up


def test_explicit_values_need_no_fingerprint_and_auto_does():
    spec, filled = resolve_spec(PreprocessParams(), None)
    assert filled == [] and spec.target_shape == (32, 32, 32)
    with pytest.raises(ValueError, match="'auto' but there is no fingerprint.json"):
        resolve_spec(PreprocessParams(target_shape="auto"), None)


def test_auto_shape_is_capped():
    fingerprint = summarize([_stats((1.0, 1.0, 1.0))])
    params = PreprocessParams(target_spacing_mm=(0.25, 0.25, 0.25), target_shape="auto")
    params.max_auto_shape = 40
    assert resolve_spec(params, fingerprint)[0].target_shape == (40, 40, 32)


def test_double_oblique_affine_gives_every_ras_axis_once():
    root = np.sqrt(0.5)
    rotation = np.array([[root, 0.5, 0.5], [root, -0.5, -0.5], [0.0, root, -root]]).T
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.0, 1.0, 2.5])  # anisotropic columns
    data = np.zeros((20, 20, 12), np.float32)
    data[5:15, 5:15, 3:9] = 1.0 + np.random.default_rng(0).random((10, 10, 6))
    stats = volume_stats(data, affine, seed=0)
    assert sorted(stats["spacing_mm"]) == [1.0, 1.0, 2.5]
    assert sorted(stats["shape"]) == [12, 20, 20]
    params = PreprocessParams(target_spacing_mm="auto", target_shape="auto")
    spec, _ = resolve_spec(params, summarize([stats]))
    assert min(spec.target_shape) >= 8
