import json

import nibabel as nib
import numpy as np
import pytest

from voxelflow.dataset import read_rows
from voxelflow.ingest import ingest_folder
from voxelflow.nifti import save_volume
from voxelflow.params import IngestParams


def _rows(path):
    return read_rows(path)


def _dataset(tmp_path, subjects=12):
    data = tmp_path / "raw"
    rng = np.random.default_rng(0)
    lines = ["id,path,label,subject"]
    for index in range(subjects):
        label = "yes" if index % 2 else "no"
        for session in (1, 2) if index < 3 else (1,):
            identifier = f"s{index}_{session}"
            save_volume(data / f"{identifier}.nii.gz", rng.normal(size=(6, 6, 6)), np.eye(4))
            lines.append(f"{identifier},{identifier}.nii.gz,{label},s{index}")
    (data / "unlabelled").mkdir()
    save_volume(data / "unlabelled" / "u1.nii", rng.normal(size=(6, 6, 6)), np.eye(4))
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    return data


def test_every_input_is_in_exactly_one_table(tmp_path):
    data = _dataset(tmp_path)
    # broken inputs of several kinds
    nib.save(
        nib.Nifti1Image(np.zeros((6, 6, 6, 2), np.float32), np.eye(4)), str(data / "four_d.nii")
    )
    save_volume(data / "flat.nii", np.ones((6, 6, 6)), np.eye(4))
    nan = np.random.default_rng(1).normal(size=(6, 6, 6))
    nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(nan.astype(np.float32), np.eye(4)), str(data / "nan.nii"))
    (data / "cut.nii.gz").write_bytes((data / "s0_1.nii.gz").read_bytes()[:60])
    (data / "copy.nii.gz").write_bytes((data / "s0_1.nii.gz").read_bytes())
    (data / "stray.nii").write_bytes((data / "unlabelled" / "u1.nii").read_bytes()[:-10])
    with open(data / "labels.csv", "a") as table:
        for name in ("four_d.nii", "flat.nii", "nan.nii", "cut.nii.gz", "copy.nii.gz"):
            table.write(f"{name.split('.')[0]},{name},no,\n")
        table.write("s0_1,s0_1.nii.gz,no,s0\n")  # duplicate id
        table.write("ghost,ghost.nii,no,\n")
    out = tmp_path / "out"
    report = ingest_folder(data, data / "labels.csv", out, IngestParams(), seed=1, workers=1)
    manifest, rejected = _rows(out / "manifest.csv"), _rows(out / "rejected.csv")
    assert list(manifest[0])[0] == "id" and list(rejected[0]) == ["input", "reason"]
    reasons = {row["input"]: row["reason"] for row in rejected}
    assert "expected a 3D volume" in reasons["four_d.nii"]
    assert "constant volume" in reasons["flat.nii"]
    assert "NaN or Inf" in reasons["nan.nii"]
    assert "cut.nii.gz" in reasons
    assert reasons["s0_1.nii.gz"].startswith("same content as copy.nii.gz (id='copy')")
    assert "not listed in the labels table" in reasons["stray.nii"]
    assert any("duplicate id 's0_1'" in reason for reason in reasons.values())
    assert any("ghost.nii' does not exist" in reason for reason in reasons.values())
    files = {p.relative_to(data).as_posix() for p in data.rglob("*.nii*")}
    accepted = {row["path"] for row in manifest}
    rejected_files = {row["input"] for row in rejected if not row["input"].startswith("labels.csv")}
    assert accepted | rejected_files == files
    assert not accepted & rejected_files
    assert report["accepted"] == len(manifest)
    assert json.loads((out / "ingest_report.json").read_text())["rejected"] == len(rejected)


def test_splits_grouped_by_subject_and_unlabelled_pool(tmp_path):
    data = _dataset(tmp_path, subjects=20)
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, IngestParams(), seed=3, workers=1)
    manifest = _rows(out / "manifest.csv")
    by_subject = {}
    for row in manifest:
        by_subject.setdefault(row["subject"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in by_subject.values())
    assert {row["split"] for row in manifest} == {"train", "val", "test", "unlabelled"}
    unlabelled = [row for row in manifest if row["split"] == "unlabelled"]
    assert [(row["id"], row["label"]) for row in unlabelled] == [("u1", "")]
    row = next(row for row in manifest if row["id"] == "s0_1")
    assert row["shape"] == "6x6x6" and row["orientation"] == "RAS" and len(row["checksum"]) == 64


def test_given_split_column_is_kept(tmp_path):
    data = _dataset(tmp_path, subjects=10)
    text = (data / "labels.csv").read_text().splitlines()
    text = [text[0] + ",split"] + [
        line + (",test" if line.startswith("s1_") else ",") for line in text[1:]
    ]
    (data / "labels.csv").write_text("\n".join(text) + "\n")
    ingest_folder(data, data / "labels.csv", tmp_path / "out", IngestParams(), seed=0, workers=1)
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    assert next(row for row in manifest if row["id"] == "s1_1")["split"] == "test"


def test_nothing_valid_is_an_error_and_writes_nothing(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    (data / "labels.csv").write_text("id,path,label\na,a.nii,x\n")
    with pytest.raises(ValueError, match="no valid labelled volume"):
        ingest_folder(
            data, data / "labels.csv", tmp_path / "out", IngestParams(), seed=0, workers=1
        )
    assert not (tmp_path / "out").exists()


def test_conflicting_copies_unsafe_ids_and_refused_rows(tmp_path):
    data = _dataset(tmp_path, subjects=12)
    (data / "twin.nii.gz").write_bytes((data / "s1_1.nii.gz").read_bytes())
    (data / "cat.nii.gz").write_bytes((data / "s2_1.nii.gz").read_bytes()[:-1] + b"x")
    with open(data / "labels.csv", "a") as table:
        table.write("twin,twin.nii.gz,no,twin\n")  # s1_1 is 'yes': which is right?
        table.write("\n\n../../evil,s3_1.nii.gz,no,\n")
        table.write("cat,cat.nii.gz,cat,\n")
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, IngestParams(classes=["no", "yes"]), 1, 1)
    manifest = {row["id"] for row in _rows(out / "manifest.csv")}
    rejected = _rows(out / "rejected.csv")
    reasons = {row["input"]: row["reason"] for row in rejected}
    assert "labelled differently" in reasons["twin.nii.gz"] and "s1_1" not in manifest
    evil = next(row for row in rejected if "evil" in row["input"])
    assert evil["input"].startswith("labels.csv row 20 ")  # blank lines counted
    assert "ids become file names" in evil["reason"]
    assert "unknown label 'cat'" in " ".join(reasons.values())
    assert "cat.nii.gz" not in reasons  # its row's rejection is its answer, once


def test_symlink_out_of_folder_in_unlabelled_pool_is_rejected(tmp_path):
    data = _dataset(tmp_path)
    outside = tmp_path / "secret.nii"
    save_volume(outside, np.random.default_rng(5).normal(size=(6, 6, 6)), np.eye(4))
    (data / "unlabelled" / "link.nii").symlink_to(outside)
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, IngestParams(), seed=1, workers=1)
    reasons = {row["input"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert "outside the data folder" in reasons["unlabelled/link.nii"]
    assert "link" not in {row["id"] for row in _rows(out / "manifest.csv")}


def test_subject_with_two_given_splits_is_rejected(tmp_path):
    data = _dataset(tmp_path, subjects=8)
    lines = (data / "labels.csv").read_text().splitlines()
    lines = [lines[0] + ",split"] + [
        line + {"s0_1": ",train", "s0_2": ",test"}.get(line.split(",")[0], ",")
        for line in lines[1:]
    ]
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, IngestParams(), seed=1, workers=1)
    reasons = {row["input"]: row["reason"] for row in _rows(out / "rejected.csv")}
    assert "more than one split ['test', 'train']" in reasons["s0_1.nii.gz"]
    assert "s0_2.nii.gz" in reasons


def test_a_class_missing_from_a_split_is_an_error(tmp_path):
    data = _dataset(tmp_path, subjects=4)  # two subjects per class: no room for val
    with pytest.raises(ValueError, match="no volumes for val/no, val/yes"):
        ingest_folder(data, data / "labels.csv", tmp_path / "out", IngestParams(), 0, 1)


def test_refuses_to_replace_a_folder_that_is_not_its_output(tmp_path):
    data = _dataset(tmp_path)
    with pytest.raises(ValueError, match="holds the input"):
        ingest_folder(data, data / "labels.csv", data, IngestParams(), 0, 1)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty and not a previous output"):
        ingest_folder(data, data / "labels.csv", other, IngestParams(), 0, 1)
    assert (other / "thesis.txt").read_text() == "precious"
    assert (data / "labels.csv").is_file()


def test_splits_stay_put_when_volumes_are_added(tmp_path):
    data = _dataset(tmp_path, subjects=30)
    ingest_folder(data, data / "labels.csv", tmp_path / "before", IngestParams(), 4, 1)
    before = {row["id"]: row["split"] for row in _rows(tmp_path / "before" / "manifest.csv")}
    rng = np.random.default_rng(9)
    with open(data / "labels.csv", "a") as table:
        for index in range(30, 45):
            save_volume(data / f"n{index}.nii.gz", rng.normal(size=(6, 6, 6)), np.eye(4))
            table.write(f"n{index},n{index}.nii.gz,{'yes' if index % 2 else 'no'},n{index}\n")
    ingest_folder(data, data / "labels.csv", tmp_path / "after", IngestParams(), 4, 1)
    after = {row["id"]: row["split"] for row in _rows(tmp_path / "after" / "manifest.csv")}
    assert len(after) == len(before) + 15
    assert all(after[identifier] == split for identifier, split in before.items())
    report = json.loads((tmp_path / "after" / "ingest_report.json").read_text())
    assert report["split_moves"] == [] and report["classes_from"] == "inferred from the table"
    assert report["classes"] == ["no", "yes"]
    fingerprint = json.loads((tmp_path / "after" / "fingerprint.json").read_text())
    assert fingerprint["spacing_mm"]["median"] == [1.0, 1.0, 1.0]
    assert fingerprint["shape"]["median"] == [6, 6, 6]
    assert fingerprint["volumes"] == report["per_split"]["train"]["no"] + report["per_split"][
        "train"
    ]["yes"]


def test_two_rows_for_one_file_and_clashing_unlabelled_names(tmp_path):
    data = _dataset(tmp_path, subjects=12)
    with open(data / "labels.csv", "a") as table:
        table.write("other,s0_1.nii.gz,no,s0\n")  # s0_1.nii.gz again, under another id
    rng = np.random.default_rng(11)
    save_volume(data / "unlabelled" / "u1.nii.gz", rng.normal(size=(6, 6, 6)), np.eye(4))
    save_volume(data / "unlabelled" / "s0_1.nii", rng.normal(size=(6, 6, 6)), np.eye(4))
    save_volume(data / "unlabelled" / "scan 2.nii", rng.normal(size=(6, 6, 6)), np.eye(4))
    out = tmp_path / "out"
    ingest_folder(data, data / "labels.csv", out, IngestParams(), seed=1, workers=1)
    manifest, rejected = _rows(out / "manifest.csv"), _rows(out / "rejected.csv")
    reasons = {row["input"]: row["reason"] for row in rejected}
    other = next(reason for name, reason in reasons.items() if "(id='other')" in name)
    assert "path 's0_1.nii.gz' is already named by row 2" in other
    assert [row["path"] for row in manifest].count("s0_1.nii.gz") == 1
    assert "s0_1.nii.gz" not in reasons  # in exactly one table
    assert reasons["unlabelled/u1.nii.gz"] == "id 'u1' is already used by unlabelled/u1.nii"
    assert "by the labels table (row 2)" in reasons["unlabelled/s0_1.nii"]
    assert "characters other than" in reasons["unlabelled/scan 2.nii"]


def test_label_fraction_moves_training_subjects_to_the_unlabelled_pool(
    tiny_data, tiny_params_dict, tmp_path
):
    import json as json_module

    from stages import ingest as ingest_stage
    from voxelflow.dataset import read_rows
    from voxelflow.params import parse_params

    data = json_module.loads(json_module.dumps(tiny_params_dict))
    full = parse_params(data)
    data["ingest"]["label_fraction"] = 0.3
    scarce = parse_params(data)
    raw = tiny_data["raw"]
    ingest_stage.run(raw, raw / "labels.csv", tmp_path / "full", full, workers=1)
    report = ingest_stage.run(raw, raw / "labels.csv", tmp_path / "scarce", scarce, workers=1)
    before = {row["id"]: row for row in read_rows(tmp_path / "full" / "manifest.csv")}
    after = {row["id"]: row for row in read_rows(tmp_path / "scarce" / "manifest.csv")}
    assert before.keys() == after.keys()
    moved = [key for key in after if after[key]["split"] != before[key]["split"]]
    assert moved and report["labels_hidden"] == len(moved)
    for key in moved:  # only training volumes move, their labels hidden
        assert before[key]["split"] == "train"
        assert after[key]["split"] == "unlabelled" and after[key]["label"] == ""
    for key, row in after.items():
        if before[key]["split"] in ("val", "test"):
            assert row == before[key]
    kept = {row["label"] for row in after.values() if row["split"] == "train"}
    assert kept == set(full.ingest.classes)  # at least one subject per class keeps its label
