import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from voxelflow.cli import app
from voxelflow.dataset import read_rows
from voxelflow.nifti import load_volume
from voxelflow.npz_import import import_npz

ADRENAL = Path(__file__).resolve().parents[2].parent / "shared/data/medmnist3d/adrenalmnist3d.npz"
SPLITS = ("train", "val", "test")


def _arrays(cases=4, size=6, seed=0, labels=None) -> dict[str, np.ndarray]:
    """Tiny MedMNIST-style arrays: ``cases`` random uint8 volumes per split, labels 0/1."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, (cases, size, size, size), np.uint8)
        arrays[f"{split}_labels"] = (
            np.array([[index % 2] for index in range(cases)], np.uint8)
            if labels is None
            else labels
        )
    return arrays


def _npz(tmp_path, name="tiny.npz", **arrays) -> Path:
    path = tmp_path / name
    np.savez_compressed(path, **arrays)
    return path


def _left_behind(tmp_path, *keep) -> list[str]:
    return sorted(entry.name for entry in tmp_path.iterdir() if entry.name not in keep)


def test_import_writes_volumes_labels_and_source(tmp_path):
    arrays = _arrays()
    npz = _npz(tmp_path, **arrays)
    out = tmp_path / "out"
    summary = import_npz(npz, out, spacing_mm=(1.0, 2.0, 3.0))
    assert summary["cases"] == 12
    assert summary["classes"] == ["0", "1"]
    assert summary["per_split"] == {split: {"0": 2, "1": 2} for split in SPLITS}
    assert sorted(entry.name for entry in out.iterdir()) == ["labels.csv", "source.json", "volumes"]
    assert len(list((out / "volumes").iterdir())) == 12
    rows = read_rows(out / "labels.csv")
    assert list(rows[0]) == ["id", "path", "label", "split"]
    assert [row["split"] for row in rows] == [split for split in SPLITS for _ in range(4)]
    assert rows[5] == {
        "id": "val_00001",
        "path": "volumes/val_00001.nii.gz",
        "label": "1",
        "split": "val",
    }
    for row in rows:
        split, index = row["id"].split("_")
        volume = load_volume(out / row["path"])
        np.testing.assert_array_equal(volume.data, arrays[f"{split}_images"][int(index)])
        assert volume.spacing == (1.0, 2.0, 3.0)
        assert volume.orientation == "RAS"
        assert row["label"] == str(arrays[f"{split}_labels"][int(index), 0])
    source = json.loads((out / "source.json").read_text())
    assert source["source"] == "tiny.npz"
    assert len(source["sha256"]) == 64
    assert source["spacing_mm"] == [1.0, 2.0, 3.0]
    assert source["per_split"] == summary["per_split"]
    assert _left_behind(tmp_path) == ["out", "tiny.npz"]


def test_round_trip_is_exact_for_masks_and_constant_volumes(tmp_path):
    """Values that an integer type with rescaling would not store exactly (0/1, constants)."""
    arrays = _arrays(cases=2)
    arrays["train_images"][0] = np.random.default_rng(1).integers(0, 2, (6, 6, 6))
    arrays["train_images"][1] = 3
    import_npz(_npz(tmp_path, **arrays), tmp_path / "out")
    for index in range(2):
        data = load_volume(tmp_path / "out" / f"volumes/train_{index:05d}.nii.gz").data
        np.testing.assert_array_equal(data, arrays["train_images"][index])


def test_class_names_are_applied(tmp_path):
    npz = _npz(tmp_path, **_arrays())
    summary = import_npz(npz, tmp_path / "out", classes=["normal", "hyperplasia"])
    assert summary["per_split"]["test"] == {"normal": 2, "hyperplasia": 2}
    labels = [row["label"] for row in read_rows(tmp_path / "out" / "labels.csv")]
    assert labels[:4] == ["normal", "hyperplasia", "normal", "hyperplasia"]


@pytest.mark.parametrize(
    "shape", [(4, 6, 6, 6, 1), (4, 1, 6, 6, 6)], ids=["channel-last", "channel-first"]
)
def test_singleton_channel_is_dropped(tmp_path, shape):
    arrays = _arrays()
    for split in SPLITS:
        arrays[f"{split}_images"] = arrays[f"{split}_images"].reshape(shape)
    import_npz(_npz(tmp_path, **arrays), tmp_path / "out")
    volume = load_volume(tmp_path / "out" / "volumes/test_00003.nii.gz")
    assert volume.shape == (6, 6, 6)
    np.testing.assert_array_equal(volume.data, arrays["test_images"][3].reshape(6, 6, 6))


def test_flat_labels_and_fortran_order_images(tmp_path):
    arrays = _arrays()
    arrays["val_labels"] = arrays["val_labels"].reshape(-1).astype(np.int64)
    arrays["val_images"] = np.asfortranarray(arrays["val_images"])
    import_npz(_npz(tmp_path, **arrays), tmp_path / "out")
    volume = load_volume(tmp_path / "out" / "volumes/val_00002.nii.gz")
    np.testing.assert_array_equal(volume.data, arrays["val_images"][2])


def test_replaces_its_own_previous_output(tmp_path):
    npz = _npz(tmp_path, **_arrays())
    import_npz(npz, tmp_path / "out")
    import_npz(npz, tmp_path / "out", classes=["a", "b"])
    assert read_rows(tmp_path / "out" / "labels.csv")[0]["label"] == "a"


def _bad_label_arrays():
    arrays = _arrays()
    arrays["val_labels"] = np.array([[0], [1], [2], [1]], np.uint8)
    return arrays


def _multi_label_arrays():
    arrays = _arrays()
    arrays["test_labels"] = np.zeros((4, 3), np.uint8)
    return arrays


def _float_label_arrays():
    arrays = _arrays()
    arrays["train_labels"] = np.array([[0.0], [1.0], [0.5], [1.0]])
    return arrays


def _bad_shape_arrays():
    arrays = _arrays()
    arrays["test_images"] = np.zeros((4, 6, 6, 6, 3), np.uint8)
    return arrays


def _count_mismatch_arrays():
    arrays = _arrays()
    arrays["train_labels"] = np.zeros((3, 1), np.uint8)
    return arrays


def _missing_key_arrays():
    arrays = _arrays()
    del arrays["test_labels"]
    return arrays


@pytest.mark.parametrize(
    ("make", "classes", "expected"),
    [
        (_bad_label_arrays, ["normal", "hyperplasia"], "val_labels row 2: label 2 is out of range"),
        (_multi_label_arrays, None, "test_labels has shape (4, 3)"),
        (_float_label_arrays, None, "train_labels has dtype float64; expected integer"),
        (_bad_shape_arrays, None, "test_images has shape (4, 6, 6, 6, 3)"),
        (_count_mismatch_arrays, None, "train_labels has 3 labels for 4 images"),
        (_missing_key_arrays, None, "missing key(s) ['test_labels']; found"),
    ],
    ids=["label-out-of-range", "multi-label", "float-labels", "channels", "count", "keys"],
)
def test_bad_archives_are_refused_and_nothing_is_written(tmp_path, make, classes, expected):
    npz = _npz(tmp_path, **make())
    with pytest.raises(ValueError) as caught:
        import_npz(npz, tmp_path / "out", classes=classes)
    assert expected in str(caught.value)
    assert str(npz) in str(caught.value)
    assert _left_behind(tmp_path) == ["tiny.npz"]


def test_missing_keys_message_lists_found_and_expected(tmp_path):
    npz = _npz(tmp_path, images=np.zeros((2, 6, 6, 6), np.uint8))
    with pytest.raises(ValueError, match=r"found \['images'\], expected \['train_images'"):
        import_npz(npz, tmp_path / "out")


def test_negative_label_is_refused_without_classes(tmp_path):
    arrays = _arrays()
    arrays["test_labels"] = np.array([[0], [1], [1], [-1]], np.int8)
    with pytest.raises(ValueError, match=r"test_labels row 3: label -1 is out of range"):
        import_npz(_npz(tmp_path, **arrays), tmp_path / "out")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "file not found"), (b"not a zip at all", "not a zip (.npz) archive")],
    ids=["missing", "not-zip"],
)
def test_unreadable_files_are_refused(tmp_path, content, expected):
    npz = tmp_path / "data.npz"
    if content is not None:
        npz.write_bytes(content)
    with pytest.raises(ValueError, match=r"data\.npz: ") as caught:
        import_npz(npz, tmp_path / "out")
    assert expected in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_truncated_member_leaves_nothing_behind(tmp_path):
    """An archive whose images member is cut short fails mid-write: no half output."""
    npz = _npz(tmp_path, **_arrays())
    with zipfile.ZipFile(npz) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["test_images.npy"] = members["test_images.npy"][:-100]
    with zipfile.ZipFile(npz, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(ValueError, match=r"test_images is unreadable \(case 3 is truncated"):
        import_npz(npz, tmp_path / "out")
    assert _left_behind(tmp_path) == ["tiny.npz"]


@pytest.mark.parametrize(
    ("classes", "expected"),
    [(["a", "a"], "duplicate name(s) ['a']"), (["a", "b c"], "['b c'] are not valid labels")],
)
def test_bad_class_names_are_refused(tmp_path, classes, expected):
    with pytest.raises(ValueError) as caught:
        import_npz(_npz(tmp_path, **_arrays()), tmp_path / "out", classes=classes)
    assert expected in str(caught.value)


def test_bad_spacing_is_refused(tmp_path):
    with pytest.raises(ValueError, match="finite positive voxel sizes"):
        import_npz(_npz(tmp_path, **_arrays()), tmp_path / "out", spacing_mm=(1.0, 0.0, 1.0))


def test_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "scan.nii").write_bytes(b"mine")
    with pytest.raises(ValueError, match="refusing to replace it"):
        import_npz(_npz(tmp_path, **_arrays()), tmp_path / "out")
    assert (tmp_path / "out" / "scan.nii").read_bytes() == b"mine"


def test_cli_import_npz(tmp_path):
    npz = _npz(tmp_path, **_arrays())
    runner = CliRunner()
    arguments = ["import-npz", str(npz), str(tmp_path / "out"), "--classes", "normal,hyperplasia"]
    result = runner.invoke(app, [*arguments, "--spacing", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["per_split"]["train"] == {"normal": 2, "hyperplasia": 2}
    assert load_volume(tmp_path / "out" / "volumes/train_00000.nii.gz").spacing == (2.0, 2.0, 2.0)
    result = runner.invoke(app, ["import-npz", str(tmp_path / "nope.npz"), str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "nope.npz: file not found" in result.output
    result = runner.invoke(app, [*arguments[:2], str(tmp_path / "o"), "--spacing", "1,x"])
    assert result.exit_code == 2
    assert "--spacing '1,x'" in result.output


@pytest.mark.skipif(not ADRENAL.is_file(), reason=f"{ADRENAL} is absent")
def test_adrenalmnist3d_imports_with_official_splits_and_passes_ingest(tmp_path):
    from voxelflow.ingest import ingest_folder
    from voxelflow.params import IngestParams

    started = time.monotonic()
    classes = ["normal", "hyperplasia"]
    out = tmp_path / "adrenal"
    summary = import_npz(ADRENAL, out, classes=classes)
    official = {"train": (1188, 259), "val": (98, 22), "test": (298, 69)}
    for split, (total, positive) in official.items():
        assert summary["per_split"][split] == {"normal": total - positive, "hyperplasia": positive}
    assert summary["cases"] == 1584
    source = json.loads((out / "source.json").read_text())
    assert source["shape"]["train"] == [28, 28, 28]
    assert source["image_dtype"]["test"] == "uint8"

    report = ingest_folder(
        out, out / "labels.csv", tmp_path / "ingested", IngestParams(classes=classes), 0, 2
    )
    assert report["accepted"] + report["rejected"] == 1584
    given = {row["id"]: row["split"] for row in read_rows(out / "labels.csv")}
    manifest = read_rows(tmp_path / "ingested" / "manifest.csv")
    assert all(row["split"] == given[row["id"]] for row in manifest)
    assert report["rejected"] == 0  # AdrenalMNIST3D has no two identical volumes
    assert {
        split: (sum(counts.values()), counts["hyperplasia"])
        for split, counts in report["per_split"].items()
    } == official
    assert time.monotonic() - started < 60
