import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelflow.nifti import (
    VolumeError,
    load_volume,
    orientation_affine,
    reorient_to_ras,
    save_volume,
)


def _volume(shape=(6, 7, 8)):
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "ASL", "IRP"])
def test_orientation_affine_has_codes_and_spacing(codes):
    affine = orientation_affine(codes, (1.0, 2.0, 3.0), (4, 5, 6), (0, 0, 0))
    assert "".join(nib.aff2axcodes(affine)) == codes
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), [1.0, 2.0, 3.0])


def test_int16_round_trip_applies_scaling(tmp_path):
    data = np.linspace(-3.5, 900.25, 6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    path = tmp_path / "scaled.nii.gz"
    save_volume(path, data, np.eye(4), "int16")
    assert nib.load(str(path)).get_data_dtype() == np.int16
    volume = load_volume(path)
    assert volume.disk_dtype == "int16"
    assert np.allclose(volume.data, data, atol=(data.max() - data.min()) / 30000)


def test_reorient_to_ras_matches_world_coordinates(tmp_path):
    data = _volume()
    affine = orientation_affine("LPI", (1.0, 1.5, 2.0), data.shape, (3, -2, 5))
    ras, ras_affine = reorient_to_ras(data, affine)
    assert "".join(nib.aff2axcodes(ras_affine)) == "RAS"
    # the same voxel value sits at the same world position
    index = np.array([1, 2, 3])
    world = affine[:3, :3] @ index + affine[:3, 3]
    ras_index = np.round(np.linalg.inv(ras_affine[:3, :3]) @ (world - ras_affine[:3, 3])).astype(
        int
    )
    assert data[tuple(index)] == ras[tuple(ras_index)]


def test_four_d_singleton_is_squeezed(tmp_path):
    path = tmp_path / "four.nii"
    nib.save(nib.Nifti1Image(_volume((4, 5, 6, 1)), np.eye(4)), str(path))
    assert load_volume(path).shape == (4, 5, 6)


def test_true_four_d_is_rejected(tmp_path):
    path = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(_volume((4, 5, 6, 3)), np.eye(4)), str(path))
    with pytest.raises(
        VolumeError, match=r"series.nii: expected a 3D volume, got shape \(4, 5, 6, 3\)"
    ):
        load_volume(path)


def test_nan_voxels_are_rejected(tmp_path):
    data = _volume()
    data[1, 1, 1] = np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="1 voxels are NaN or Inf"):
        load_volume(path)


def test_truncated_gzip_is_rejected(tmp_path):
    path = tmp_path / "cut.nii.gz"
    save_volume(path, np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError, match="cut.nii.gz"):
        load_volume(path)


def test_not_a_nifti_is_rejected(tmp_path):
    path = tmp_path / "text.nii.gz"
    path.write_bytes(gzip.compress(b"hello, not an image"))
    with pytest.raises(VolumeError, match="text.nii.gz"):
        load_volume(path)


def test_voxel_limit_checked_from_header(tmp_path):
    path = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(_volume((10, 10, 10)), np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="1000 voxels .* exceeds the limit of 999"):
        load_volume(path, max_voxels=999)


def test_singular_affine_is_rejected(tmp_path):
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[252:256] = np.array([0, 2], dtype="<i2").tobytes()  # qform_code 0, sform_code 2
    raw[312:328] = np.zeros(4, dtype="<f4").tobytes()  # srow_z: a flat third axis
    path.write_bytes(bytes(raw))
    with pytest.raises(VolumeError, match="singular"):
        load_volume(path)


def test_nibabel_example_files_load():
    data_dir = Path(nib.__file__).parent / "tests" / "data"
    example = data_dir / "example4d.nii.gz"
    if not example.exists():
        pytest.skip("nibabel test data not installed")
    with pytest.raises(VolumeError, match="expected a 3D volume"):
        load_volume(example)
    volume = load_volume(data_dir / "anatomical.nii")
    assert len(volume.shape) == 3 and np.isfinite(volume.data).all()
