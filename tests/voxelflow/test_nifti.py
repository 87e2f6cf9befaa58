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
        VolumeError, match=r"series.nii: a 4D series of 3 volumes \(4, 5, 6, 3\).*volume_index"
    ):
        load_volume(path)


def test_volume_index_takes_one_volume_of_a_series(tmp_path):
    path = tmp_path / "series.nii.gz"
    series = _volume((4, 5, 6, 3))
    nib.save(nib.Nifti1Image(series, np.eye(4)), str(path))
    assert np.array_equal(load_volume(path, volume_index=2).data, series[..., 2])
    with pytest.raises(VolumeError, match="volume_index 3 is out of range for a series of 3"):
        load_volume(path, volume_index=3)


def test_five_d_is_rejected(tmp_path):
    path = tmp_path / "five.nii"
    nib.save(nib.Nifti1Image(_volume((3, 3, 3, 2, 2)), np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="expected a 3D volume, got shape .* \\(5D\\)"):
        load_volume(path, volume_index=0)


def test_nan_voxels_are_rejected(tmp_path):
    data = _volume()
    data[1, 1, 1] = np.nan
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(VolumeError, match="1 of 336 voxels are NaN or Inf.*non_finite: repair"):
        load_volume(path)


def test_non_finite_voxels_can_be_repaired(tmp_path):
    data = _volume() + 5
    data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf
    path = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    volume = load_volume(path, non_finite="repair")
    assert volume.repaired == 2
    assert volume.data[1, 1, 1] == volume.data[2, 2, 2] == 5.0
    all_nan = tmp_path / "all_nan.nii"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(all_nan))
    with pytest.raises(VolumeError, match="64 of 64 voxels are NaN"):
        load_volume(all_nan, non_finite="repair")


@pytest.mark.parametrize(
    ("name", "image_class"),
    [
        ("v.nii", nib.Nifti1Image),
        ("v.nii.gz", nib.Nifti2Image),
        ("v.hdr", nib.Nifti1Pair),
        ("v.hdr", nib.AnalyzeImage),
        ("v.mgz", nib.MGHImage),
        ("v.mgh", nib.MGHImage),
    ],
)
def test_formats_read_the_same_voxels_and_affine(tmp_path, name, image_class):
    data = _volume().astype(np.int16)
    affine = orientation_affine("LPS", (1.0, 1.5, 2.0), data.shape, (2, -3, 4))
    rows = 4
    if image_class is nib.AnalyzeImage:  # Analyze stores voxel sizes only, centred origin
        affine, rows = np.diag([-1.0, 1.5, 2.0, 1.0]), 3
    nib.save(image_class(data, affine), str(tmp_path / name))
    volume = load_volume(tmp_path / name)
    assert np.array_equal(volume.data, data)
    assert np.allclose(volume.affine[:rows, :rows], affine[:rows, :rows], atol=1e-5)


def test_big_endian_and_scaled_data_are_read(tmp_path):
    data = _volume().astype(">i2")
    image = nib.Nifti1Image(data, np.eye(4), nib.Nifti1Header(endianness=">"))
    image.header.set_data_dtype(">i2")
    image.header.set_slope_inter(0.5, -10.0)
    path = tmp_path / "big_endian.nii"
    nib.save(image, str(path))
    assert path.read_bytes()[:4] == (348).to_bytes(4, "big")  # the header is big-endian
    volume = load_volume(path)
    assert np.allclose(volume.data, data.astype(np.float32) * 0.5 - 10.0)


def test_pair_without_its_data_file_is_rejected(tmp_path):
    nib.save(nib.Nifti1Pair(_volume(), np.eye(4)), str(tmp_path / "pair.hdr"))
    (tmp_path / "pair.img").unlink()
    with pytest.raises(VolumeError, match="pair.hdr: the header's data file is missing"):
        load_volume(tmp_path / "pair.hdr")


def test_sform_preferred_over_qform_as_nibabel_does(tmp_path):
    image = nib.Nifti1Image(_volume(), np.eye(4))
    image.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    image.set_sform(np.diag([3.0, 3.0, 3.0, 1.0]), code=2)
    path = tmp_path / "forms.nii"
    nib.save(image, str(path))
    assert load_volume(path).spacing == (3.0, 3.0, 3.0)


def test_complex_and_rgb_are_rejected(tmp_path):
    complex_path = tmp_path / "complex.nii"
    nib.save(nib.Nifti1Image(_volume().astype(np.complex64), np.eye(4)), str(complex_path))
    with pytest.raises(VolumeError, match="complex or RGB"):
        load_volume(complex_path)
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_path = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(rgb_path))
    with pytest.raises(VolumeError, match="complex or RGB"):
        load_volume(rgb_path)


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
    with pytest.raises(VolumeError, match="a 4D series of 2 volumes"):
        load_volume(example)
    volume = load_volume(data_dir / "anatomical.nii")
    assert len(volume.shape) == 3 and np.isfinite(volume.data).all()
