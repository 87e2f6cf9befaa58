"""The atomic-write primitives every stage uses: leftovers of killed writers, an interrupted
folder swap, and the journal a resumable stage trusts only after checking checksums."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from voxelflow.atomic import (
    Journal,
    atomic_dir,
    atomic_path,
    resume_key,
    sweep_stale,
    write_text,
)


def _dead_pid() -> int:
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout)


def test_leftovers_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".eval.json.{dead}.k2j4x9.tmp").write_text("half")
    (tmp_path / f".scan.nii.gz.{dead}.12345678.tmp.nii.gz").write_text("half")
    (tmp_path / f".out.{dead}.abc.tmp").mkdir()
    live = tmp_path / f".other.json.{os.getpid()}.zz.tmp"
    live.write_text("being written")
    (tmp_path / "eval.json").write_text("{}")
    removed = sweep_stale(tmp_path)
    assert len(removed) == 3
    assert {path.name for path in tmp_path.iterdir()} == {"eval.json", live.name}


def test_a_failed_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, "previous")
    with pytest.raises(RuntimeError), atomic_path(path) as temporary:
        temporary.write_text("half of the new one")
        raise RuntimeError("killed")
    assert path.read_text() == "previous"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_folder_build_leaves_the_previous_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, ("a",)) as staging:
        (staging / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out, ("a",)) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("killed")
    assert (out / "a").read_text() == "1"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_a_swap_interrupted_between_its_renames_is_undone(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out, ("a",)) as staging:
        (staging / "a").write_text("previous")
    os.replace(out, tmp_path / ".out.old")  # killed after the first rename of the swap
    with pytest.raises(RuntimeError), atomic_dir(out, ("a",)):
        assert (out / "a").read_text() == "previous"  # put back before anything else
        raise RuntimeError("killed again")
    assert (out / "a").read_text() == "previous"


def test_the_journal_trusts_only_verified_items(tmp_path):
    key = resume_key("stage", {"param": 1})
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out, resume_key=key) as staging:
        journal = Journal(staging)
        for name in ("a", "b", "c"):
            (staging / name).write_text(name)
            journal.record(name, (name,), row={"id": name})
        raise RuntimeError("killed")
    staging = tmp_path / ".out.partial"
    (staging / "b").write_text("changed after it was recorded")
    with open(staging / ".resume" / "journal.jsonl", "a") as handle:
        handle.write('{"key": "d", "files": {')  # torn by the kill
    (staging / "arrays").mkdir()
    torn = staging / "arrays" / f".d.npy.{_dead_pid()}.x1y2z3.tmp"  # killed inside a write
    torn.write_text("half")
    with atomic_dir(out, resume_key=key) as again:
        assert again == staging
        assert not torn.exists()
        assert sorted(Journal(again).finished()) == ["a", "c"]
        assert Journal(again).finished()["a"]["row"] == {"id": "a"}
        (again / "e").write_text("e")
        Journal(again).record("e", ("e",))  # after the torn line: a line of its own
        assert sorted(Journal(again).finished()) == ["a", "c", "e"]
    assert sorted(path.name for path in out.iterdir()) == ["a", "arrays", "b", "c", "e"]
    assert not staging.exists()


def test_other_inputs_start_afresh(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_dir(out, resume_key="one") as staging:
        (staging / "a").write_text("made from other inputs")
        Journal(staging).record("a", ("a",))
        raise RuntimeError("killed")
    with atomic_dir(out, resume_key="two") as staging:
        assert Journal(staging).finished() == {}
        assert not (staging / "a").exists()
