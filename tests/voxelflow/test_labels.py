import os

import pytest

from voxelflow.labels import parse_labels, read_table, safe_relative_path, volume_stem


def _parse(*args, **kwargs):
    parsed = parse_labels(*args, **kwargs)
    return parsed.rows, parsed.rejected


def _folder(tmp_path, names=("a.nii.gz", "b.nii", "sub/c.nii")):
    data = tmp_path / "data"
    for name in names:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"x")
    return data


def _table(tmp_path, text):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return path


def test_volume_stem():
    assert volume_stem("a.nii.gz") == "a"
    assert volume_stem("scan.v2.mgz") == "scan.v2"


def test_valid_rows_with_subject_and_split(tmp_path):
    data = _folder(tmp_path)
    table = _table(tmp_path, "id,path,label,subject,split\na,a.nii.gz,x,s1,test\nc,sub/c.nii,y,,\n")
    rows, rejected = _parse(table, data)
    assert rejected == []
    assert [(r.id, r.path, r.label, r.subject, r.split) for r in rows] == [
        ("a", "a.nii.gz", "x", "s1", "test"),
        ("c", "sub/c.nii", "y", "c", ""),
    ]


def test_missing_path_column_matches_by_stem(tmp_path):
    data = _folder(tmp_path)
    rows, rejected = _parse(_table(tmp_path, "id,label\na,x\nzz,y\n"), data)
    assert [r.path for r in rows] == ["a.nii.gz"]
    assert rejected[0].input == "labels.csv row 3 (id='zz')"
    assert "no volume file named zz" in rejected[0].reason


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("a,a.nii.gz,", "empty label"),
        (",a.nii.gz,x", "empty id"),
        ("a,../a.nii.gz,x", "escapes the data folder"),
        ("a,/etc/passwd,x", "absolute path"),
        ("a,nothere.nii,x", "does not exist"),
        ("a,a.nii.gz,x,extra", "more cells than the header"),
    ],
)
def test_bad_rows_are_rejected_with_reason(tmp_path, row, reason):
    data = _folder(tmp_path)
    rows, rejected = _parse(_table(tmp_path, f"id,path,label\n{row}\n"), data)
    assert rows == []
    assert len(rejected) == 1
    assert "row 2" in rejected[0].input
    assert reason in rejected[0].reason


def test_duplicate_id_names_first_row(tmp_path):
    data = _folder(tmp_path)
    rows, rejected = _parse(_table(tmp_path, "id,path,label\na,a.nii.gz,x\na,b.nii,y\n"), data)
    assert [r.id for r in rows] == ["a"]
    assert "duplicate id 'a', first used on row 2" in rejected[0].reason


def test_unknown_label_and_split(tmp_path):
    data = _folder(tmp_path)
    table = _table(tmp_path, "id,path,label,split\na,a.nii.gz,cat,\nb,b.nii,x,holdout\n")
    rows, rejected = _parse(table, data, classes=["x", "y"])
    assert rows == []
    assert "unknown label 'cat'; expected one of ['x', 'y']" in rejected[0].reason
    assert "unknown split 'holdout'" in rejected[1].reason


def test_symlink_out_of_folder_is_rejected(tmp_path):
    data = _folder(tmp_path)
    outside = tmp_path / "secret.nii"
    outside.write_bytes(b"x")
    os.symlink(outside, data / "link.nii")
    path, problem = safe_relative_path(data, "link.nii")
    assert path is None and "resolves outside the data folder" in problem


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty table"),
        ("id,path\na,b\n", "missing required column(s) ['label']"),
        ("id,label,label\n", "duplicate column"),
    ],
)
def test_malformed_table_raises(tmp_path, text, message):
    with pytest.raises(ValueError, match="labels.csv") as error:
        read_table(_table(tmp_path, text))
    assert message in str(error.value)
