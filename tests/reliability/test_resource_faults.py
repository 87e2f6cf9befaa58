"""A full disk and a read-only output folder: a clear error, the previous output intact, no
partial output in its place, and the rerun after the fault is fixed succeeds.

Where the platform allows (a mount namespace with a size-limited tmpfs), the disk is really
full; the injected-fault tests run everywhere.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stages import preprocess
from tests.reliability.helpers import leftovers, tree_bytes, write_params
from voxelflow.params import parse_params

# 32^3 float32 arrays: 128 KiB each, so a 1 MiB disk fills after a few volumes.
PARAMS = {
    "preprocess": {"target_spacing_mm": [4.0, 4.0, 4.0], "target_shape": [32, 32, 32]},
}


def _inject(monkeypatch, error_number: int, after: int) -> None:
    """Every ``np.save`` after the first ``after`` fails like a full (or read-only) disk."""
    real_save, calls = np.save, []

    def save(file, array, *args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            name = getattr(file, "name", file)
            raise OSError(error_number, __import__("os").strerror(error_number), str(name))
        return real_save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save)


def _main_arguments(tiny_data, params, out):
    return [
        *("--params", str(params), "--manifest", str(tiny_data["ingested"] / "manifest.csv")),
        *("--data", str(tiny_data["raw"]), "--out", str(out), "--workers", "1"),
    ]


@pytest.mark.parametrize(
    ("error_number", "advice"),
    [(errno.ENOSPC, "free some space"), (errno.EROFS, "make it writable")],
)
def test_injected_disk_fault_keeps_the_previous_output_and_the_rerun_succeeds(
    tiny_data, tiny_params_dict, tmp_path, monkeypatch, error_number, advice
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "preprocessed"
    shutil.copytree(tiny_data["preprocessed"], out)  # the previous complete output
    previous = tree_bytes(out)
    changed = {**tiny_params_dict, **PARAMS}
    params = write_params(tmp_path / "params.yaml", changed)
    _inject(monkeypatch, error_number, after=3)
    with pytest.raises(SystemExit) as failure:
        preprocess.main(_main_arguments(tiny_data, params, out))
    message = str(failure.value)
    assert "preprocess: cannot write" in message and advice in message
    assert errno.errorcode[error_number] in message
    assert tree_bytes(out) == previous, "the previous output must survive the fault"
    assert leftovers(tmp_path) == [".preprocessed.partial"]  # finished volumes, kept to resume
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    summary = preprocess.run(
        tiny_data["ingested"] / "manifest.csv",
        tiny_data["raw"],
        out,
        parse_params(changed, "changed"),
        workers=1,
    )
    assert summary["resumed"] == 3
    assert leftovers(tmp_path) == []
    reference = tmp_path / "reference"
    preprocess.run(
        tiny_data["ingested"] / "manifest.csv",
        tiny_data["raw"],
        reference,
        parse_params(changed, "changed"),
        workers=1,
    )
    assert tree_bytes(out) == tree_bytes(reference)


def _namespace_prefix() -> list[str] | None:
    """A command prefix that runs a shell in its own mount namespace where ``mount`` works
    (unprivileged through a user namespace, or as root), or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        probe = subprocess.run(
            [
                *prefix,
                "sh",
                "-c",
                "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                'mount -t tmpfs -o size=64k tmpfs "$HOME"',
            ],
            capture_output=True,
        )
        if probe.returncode == 0:
            return prefix
    return None


SCRIPT = r"""
set -u
mount -t tmpfs -o size=1m tmpfs "$DISK"
cd "$DISK"
stage() { "$PYTHON" -m stages.preprocess --params "$PARAMS" --manifest "$MANIFEST" \
  --data "$RAW" --out "$DISK/preprocessed" --workers 1; }
stage 2> "$REPORT/full.err"; echo $? > "$REPORT/full.rc"
ls -A "$DISK" > "$REPORT/full.ls"
mount -o remount,size=64m "$DISK"
stage 2> "$REPORT/freed.err"; echo $? > "$REPORT/freed.rc"
cp -r "$DISK/preprocessed" "$REPORT/after-freed"
ls -A "$DISK" > "$REPORT/freed.ls"
mount -o remount,ro "$DISK"
cd "$REPORT"  # a writable workspace; only the output folder is read-only
stage 2> "$REPORT/ro.err"; echo $? > "$REPORT/ro.rc"
cp -r "$DISK/preprocessed" "$REPORT/after-ro"
"""


@pytest.mark.slow
def test_a_really_full_and_then_read_only_disk(tiny_data, tiny_params_dict, tmp_path):
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip("no mount namespace here to make a small disk; injected tests cover this")
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    params = write_params(tmp_path / "params.yaml", {**tiny_params_dict, **PARAMS})
    environment = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(preprocess.__file__).rsplit("/stages/", 1)[0],
        "PYTHON": sys.executable,
        "DISK": str(disk),
        "REPORT": str(report),
        "PARAMS": str(params),
        "MANIFEST": str(tiny_data["ingested"] / "manifest.csv"),
        "RAW": str(tiny_data["raw"]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    subprocess.run(
        [*prefix, "bash", "-c", SCRIPT], env=environment, cwd=disk, check=True, timeout=300
    )

    def read(name):
        return (report / name).read_text()

    # full: a clear error, nothing in the output's place, the finished volumes kept aside
    assert read("full.rc").strip() == "1", read("full.err")
    assert "No space left on device (ENOSPC)" in read("full.err")
    assert "free some space and rerun" in read("full.err")
    assert read("full.ls").split() == [
        ".preprocessed.partial",
        ".voxelflow.lock",
        ".voxelflow.stage.lock",
    ]
    # space freed: resumes and completes, nothing left over
    assert read("freed.rc").strip() == "0", read("freed.err")
    assert "resuming" in read("freed.err")
    assert read("freed.ls").split() == [".voxelflow.lock", ".voxelflow.stage.lock", "preprocessed"]
    # read-only: a clear error and the previous output untouched
    assert read("ro.rc").strip() == "1"
    assert "Read-only file system (EROFS)" in read("ro.err"), read("ro.err")
    assert f"cannot write {disk}" in read("ro.err")
    assert tree_bytes(report / "after-ro") == tree_bytes(report / "after-freed")
    reference = tmp_path / "reference"
    preprocess.run(
        tiny_data["ingested"] / "manifest.csv",
        tiny_data["raw"],
        reference,
        parse_params({**tiny_params_dict, **PARAMS}, "p"),
        workers=1,
    )
    assert tree_bytes(report / "after-freed") == tree_bytes(reference)
    assert json.loads((reference / "preprocess.json").read_text())["target_shape"] == [32] * 3


def test_a_short_write_without_an_errno_on_a_full_disk_reads_as_enospc(tmp_path, monkeypatch):
    """h5py and NumPy report a full disk as a short write with no errno."""
    from voxelflow import runtime

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runtime, "disk_full", lambda folder: True)
    with pytest.raises(SystemExit) as failure, runtime.stage_process("pretrain"):
        raise OSError("Can't write data (file write failed: 4096 requested, 512 written)")
    assert "No space left on device (ENOSPC)" in str(failure.value)
    monkeypatch.setattr(runtime, "disk_full", lambda folder: False)
    with pytest.raises(OSError, match="Can't write data"), runtime.stage_process("pretrain"):
        raise OSError("Can't write data")  # not a full disk: the error as it was
