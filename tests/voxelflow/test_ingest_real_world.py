"""Ingest on a folder that holds every kind of broken input next to good ones in every
supported format, plus nibabel's own test images."""

import gzip
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxelflow.dataset import read_rows
from voxelflow.ingest import ingest_folder
from voxelflow.nifti import orientation_affine
from voxelflow.params import IngestParams

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
PARAMS = IngestParams(classes=["a", "b"], max_voxels=1_000_000, min_size=4)


def _image(seed, shape=(8, 9, 10)):
    rng = np.random.default_rng(seed)
    return (rng.normal(100, 20, size=shape) + np.arange(shape[0])[:, None, None]).astype(
        np.float32
    )


def _save(image, path):
    nib.save(image, str(path))
    return path.name


def _good_files(data):
    """Good volumes in every supported format: name -> (label, split)."""
    lps = orientation_affine("LPS", (0.9, 1.4, 2.5), (8, 9, 10), (3, -2, 5))
    int16 = nib.Nifti1Image(_image(2) * 30, lps)
    int16.set_data_dtype(np.int16)  # stored with a scale slope
    big_endian = nib.Nifti1Image(
        _image(7).astype(">f4"), np.eye(4), nib.Nifti1Header(endianness=">")
    )
    files = {
        _save(nib.Nifti1Image(_image(1), np.eye(4)), data / "g_ras.nii.gz"): ("a", "train"),
        _save(int16, data / "g_lps_int16.nii.gz"): ("b", "train"),
        _save(nib.Nifti1Pair(_image(3), lps), data / "g_pair.hdr"): ("a", "val"),
        _save(nib.AnalyzeImage(_image(4), np.eye(4)), data / "g_analyze.hdr"): ("b", "val"),
        _save(nib.Nifti2Image(_image(5), lps), data / "g_nifti2.nii"): ("a", "test"),
        _save(nib.MGHImage(_image(6), np.eye(4)), data / "g_mgz.mgz"): ("b", "test"),
        _save(big_endian, data / "g_big_endian.nii"): ("b", "train"),
        _save(nib.MGHImage(_image(8), lps), data / "g_mgh.mgh"): ("a", "train"),
        _save(nib.Nifti1Image(_image(9)[..., None], lps), data / "g_singleton.nii.gz"): (
            "b",
            "train",
        ),
    }
    return files


def _bad_files(data):
    """Broken volumes, each listed in the table: name -> the reason expected (a regex)."""
    bad = {}
    good = nib.Nifti1Image(_image(10, (20, 20, 20)), np.eye(4))
    nib.save(good, str(data / "full.nii.gz"))
    raw = (data / "full.nii.gz").read_bytes()
    (data / "full.nii.gz").unlink()
    (data / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    bad["cut.nii.gz"] = "cannot read the voxel data|unreadable header"
    _save(nib.Nifti1Pair(_image(11), np.eye(4)), data / "lonely.hdr")
    (data / "lonely.img").unlink()
    bad["lonely.hdr"] = "the header's data file is missing"
    _save(nib.Nifti1Image(_image(12, (6, 6, 6, 3)), np.eye(4)), data / "series.nii.gz")
    bad["series.nii.gz"] = r"a 4D series of 3 volumes .*ingest.volume_index"
    _save(nib.Nifti1Image(_image(13, (5, 5, 5, 2, 2)), np.eye(4)), data / "five_d.nii")
    bad["five_d.nii"] = r"expected a 3D volume, got shape \(5, 5, 5, 2, 2\) \(5D\)"
    _save(nib.Nifti1Image(_image(14).astype(np.complex64), np.eye(4)), data / "complex.nii")
    bad["complex.nii"] = "complex or RGB"
    rgb = np.zeros((6, 6, 6), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    _save(nib.Nifti1Image(rgb, np.eye(4)), data / "rgb.nii")
    bad["rgb.nii"] = "complex or RGB"
    nan = _image(15)
    nan[1, 2, 3] = np.nan
    _save(nib.Nifti1Image(nan, np.eye(4)), data / "nan.nii")
    bad["nan.nii"] = r"1 of 720 voxels are NaN or Inf.*non_finite: repair"
    inf = _image(16)
    inf[0, 0, :2] = np.inf
    _save(nib.Nifti1Image(inf, np.eye(4)), data / "inf.nii.gz")
    bad["inf.nii.gz"] = "2 of 720 voxels are NaN or Inf"
    _save(nib.Nifti1Image(np.full((8, 8, 8), 3.0, np.float32), np.eye(4)), data / "flat.nii")
    bad["flat.nii"] = r"constant volume \(every voxel is 3.0\)"
    # a decompression bomb's header: 400^3 voxels claimed, refused before any data is read
    header = nib.Nifti1Header()
    header.set_data_shape((400, 400, 400))
    header.set_data_dtype(np.float32)
    (data / "bomb.nii.gz").write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"x" * 64))
    bad["bomb.nii.gz"] = r"64000000 voxels \(400, 400, 400\) exceeds the limit of 1000000"
    _save(nib.Nifti1Image(_image(17, (3, 8, 8)), np.eye(4)), data / "thin.nii")
    bad["thin.nii"] = r"shape \(3, 8, 8\) has an axis below the minimum size 4"
    _save(nib.Nifti1Image(_image(18), np.eye(4)), data / "singular.nii")
    raw = bytearray((data / "singular.nii").read_bytes())
    raw[252:256] = np.array([0, 2], dtype="<i2").tobytes()  # qform_code 0, sform_code 2
    raw[312:328] = np.zeros(4, dtype="<f4").tobytes()  # srow_z: a flat third axis
    (data / "singular.nii").write_bytes(bytes(raw))
    bad["singular.nii"] = "the affine is singular or not finite"
    # the same voxels as g_ras.nii.gz, stored uncompressed under another id
    _save(nib.Nifti1Image(_image(1), np.eye(4)), data / "again.nii")
    bad["g_ras.nii.gz"] = r"same content as again.nii \(id='again'\)"
    (data / "text.nii.gz").write_bytes(gzip.compress(b"not an image at all"))
    bad["text.nii.gz"] = "unreadable header"
    return bad


NIBABEL_EXPECTED = {
    "anatomical.nii": None,  # good: 3D, big-endian int16
    "reoriented_anat_moved.nii": None,  # good: big-endian float, oblique affine
    "standard.nii.gz": None,  # good: uint8
    "tiny.mnc": None,  # good: MINC1
    "example4d.nii.gz": "a 4D series of 2 volumes",
    "example_nifti2.nii.gz": "a 4D series of 2 volumes",
    "functional.nii": "a 4D series of 20 volumes",
    "test.mgz": "a 4D series of 2 volumes",
    "analyze.hdr": "the header's data file is missing",
    "nifti1.hdr": "the header's data file is missing",
    "nifti2.hdr": "the header's data file is missing",
    "row_major.dconn.nii": r"expected a 3D volume, got shape \(10, 10\) \(2D\)",
    "resampled_anat_moved.nii": "153 of 1071 voxels are NaN or Inf",  # NaN outside the FOV
}


def _build(tmp_path):
    data = tmp_path / "raw"
    (data / "unlabelled").mkdir(parents=True)
    good = _good_files(data)
    bad = _bad_files(data)
    rows = ["id,path,label,split"]
    for name, (label, split) in good.items():
        rows.append(f"{name.split('.')[0]},{name},{label},{split}")
    for name in bad:
        if name not in good:
            rows.append(f"{name.split('.')[0]},{name},a,train")
    rows.append("again,again.nii,a,train")
    nibabel_good = 0
    if NIBABEL_DATA.is_dir():
        (data / "nibabel").mkdir()
        for index, (name, reason) in enumerate(NIBABEL_EXPECTED.items()):
            shutil.copy(NIBABEL_DATA / name, data / "nibabel" / name)
            label = "ab"[index % 2]
            rows.append(f"nib{index},nibabel/{name},{label},train")
            if reason is None:
                nibabel_good += 1
            else:
                bad[f"nibabel/{name}"] = reason
    _save(nib.Nifti1Image(_image(30), np.eye(4)), data / "unlabelled" / "u1.nii.gz")
    # files no row names
    _save(nib.Nifti1Image(_image(31), np.eye(4)), data / "stray.nii.gz")
    bad["stray.nii.gz"] = "not listed in the labels table and not under unlabelled/"
    (data / "orphan.img").write_bytes(b"\0" * 512)
    bad["orphan.img"] = r"data file without its header \(expected orphan.hdr"
    # bad rows; each names a file that no other row names, or none
    outside = tmp_path / "outside.nii.gz"
    nib.save(nib.Nifti1Image(_image(32), np.eye(4)), str(outside))
    (data / "link.nii.gz").symlink_to(outside)
    for name in ("nolabel", "unknown", "badsplit", "unsafe"):
        _save(nib.Nifti1Image(_image(hash(name) % 1000), np.eye(4)), data / f"{name}.nii.gz")
    bad_rows = {
        "g_ras,g_ras.nii.gz,a,train": "duplicate id 'g_ras'",
        "nolabel,nolabel.nii.gz,,train": "empty label",
        "unknown,unknown.nii.gz,c,train": r"unknown label 'c'; expected one of \['a', 'b'\]",
        "badsplit,badsplit.nii.gz,a,holdout": "unknown split 'holdout'",
        "a b,unsafe.nii.gz,a,train": "id 'a b' has characters other than",
        "ghost,ghost.nii.gz,a,train": "'ghost.nii.gz' does not exist",
        "escape,../outside.nii.gz,a,train": r"escapes the data folder \('..' is not allowed\)",
        "absolute,/etc/hostname,a,train": "absolute path",
        "link,link.nii.gz,a,train": "resolves outside the data folder",
    }
    rows += list(bad_rows)
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return data, good, bad, bad_rows, nibabel_good


def test_every_bad_input_is_rejected_with_its_reason_and_every_good_one_kept(tmp_path):
    data, good, bad, bad_rows, nibabel_good = _build(tmp_path)
    out = tmp_path / "out"
    report = ingest_folder(data, data / "labels.csv", out, PARAMS, seed=1, workers=2)
    manifest = read_rows(out / "manifest.csv")
    rejected = read_rows(out / "rejected.csv")
    by_input = {row["input"]: row["reason"] for row in rejected}

    for name, pattern in bad.items():
        assert name in by_input, f"{name} was not rejected"
        assert re.search(pattern, by_input[name]), (name, by_input[name])
        assert str(data) not in by_input[name]  # reasons name the file relative to the folder

    row_reasons = [row for row in rejected if row["input"].startswith("labels.csv row ")]
    for line, pattern in bad_rows.items():
        identifier = line.split(",")[0]
        matches = [row for row in row_reasons if f"(id={identifier!r})" in row["input"]]
        assert any(re.search(pattern, row["reason"]) for row in matches), (line, matches)

    accepted = {row["path"] for row in manifest}
    expected_good = (set(good) - {"g_ras.nii.gz"}) | {"again.nii", "unlabelled/u1.nii.gz"}
    assert expected_good <= accepted
    assert len(accepted) == len(expected_good) + nibabel_good
    # every input is in exactly one table: files (a pair once) plus refused rows
    files = {
        p.relative_to(data).as_posix()
        for p in data.rglob("*")
        if not p.is_dir()
        and p.name != "labels.csv"
        and (not p.name.endswith(".img") or p.name == "orphan.img")
    }
    rows_refused = {"nolabel.nii.gz", "unknown.nii.gz", "badsplit.nii.gz", "unsafe.nii.gz"}
    rows_refused |= {"link.nii.gz"}
    files_rejected = {name for name in by_input if not name.startswith("labels.csv row ")}
    assert not accepted & files_rejected
    assert accepted | files_rejected | rows_refused == files
    assert len(manifest) + len(rejected) == len(files) - len(rows_refused) + len(row_reasons)
    assert report["accepted"] == len(manifest) and report["rejected"] == len(rejected)

    manifest_by_path = {row["path"]: row for row in manifest}
    assert manifest_by_path["g_lps_int16.nii.gz"]["orientation"] == "LPS"
    assert manifest_by_path["g_lps_int16.nii.gz"]["dtype"] == "int16"
    assert manifest_by_path["g_singleton.nii.gz"]["shape"] == "8x9x10"
    assert manifest_by_path["g_pair.hdr"]["checksum"] != manifest_by_path["g_analyze.hdr"][
        "checksum"
    ]
    assert {row["split"] for row in manifest if row["path"] in good} == {"train", "val", "test"}
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["split"] == "train"
    assert fingerprint["volumes"] == sum(row["split"] == "train" for row in manifest)


def test_repair_and_volume_index_accept_what_reject_refused(tmp_path):
    data, *_ = _build(tmp_path)
    params = PARAMS.model_copy(update={"non_finite": "repair", "volume_index": 1})
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, params, seed=1, workers=1)
    manifest = {row["path"]: row for row in read_rows(out / "manifest.csv")}
    assert manifest["nan.nii"]["repaired"] == "1"
    assert manifest["inf.nii.gz"]["repaired"] == "2"
    assert manifest["series.nii.gz"]["volume_index"] == "1"
    assert manifest["series.nii.gz"]["shape"] == "6x6x6"
    assert manifest["g_mgz.mgz"]["volume_index"] == "1"  # 3D files ignore the index
    reasons = {row["input"]: row["reason"] for row in read_rows(out / "rejected.csv")}
    if NIBABEL_DATA.is_dir():
        assert manifest["nibabel/example4d.nii.gz"]["shape"] == "128x96x24"
    assert "five_d.nii" in reasons


@pytest.mark.skipif(not NIBABEL_DATA.is_dir(), reason="nibabel test data not installed")
def test_nibabel_examples_are_all_accounted_for(tmp_path):
    data, *_ = _build(tmp_path)
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, PARAMS, seed=1, workers=1)
    accepted = {row["path"] for row in read_rows(out / "manifest.csv")}
    rejected = {row["input"] for row in read_rows(out / "rejected.csv")}
    for name, reason in NIBABEL_EXPECTED.items():
        assert (f"nibabel/{name}" in accepted) == (reason is None), name
        assert (f"nibabel/{name}" in rejected) == (reason is not None), name
