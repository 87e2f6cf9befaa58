"""Atomic writes: every artifact goes to a temporary name beside it, then is renamed.

A crashed stage therefore leaves the previous artifact or none, never half a file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; renames it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Writes rows (dicts) under a fixed header; missing keys become empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in columns})
    write_text(path, buffer.getvalue())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


@contextmanager
def atomic_dir(path: str | Path, expected: Iterable[str] | None = None) -> Iterator[Path]:
    """Builds a whole output folder in a temporary sibling and swaps it in on success.

    With ``expected`` (the names this output consists of), an existing folder holding
    anything else is refused rather than replaced (see :func:`check_replaceable`).
    """
    path = Path(path)
    if expected is not None:
        check_replaceable(path, expected)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(path, backup)
            os.replace(temporary, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def check_replaceable(
    out_dir: str | Path, expected: Iterable[str], protect: Iterable[str | Path] = ()
) -> None:
    """Refuses to replace a folder that holds anything but a previous output of this kind.

    :func:`atomic_dir` swaps a whole folder in; pointed by mistake at a folder of scans (or
    at a parent of the inputs) it would delete them. Raises ``ValueError`` naming the folder
    and what is in the way.
    """
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    for path in protect:
        resolved = Path(path).resolve()
        if resolved == target or resolved.is_relative_to(target):
            raise ValueError(
                f"{out_dir}: the output folder holds the input {path}; "
                "writing it would replace the input; choose another output folder"
            )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    unexpected = sorted(
        entry.name for entry in out_dir.iterdir() if entry.name not in set(expected)
    )
    if unexpected:
        raise ValueError(
            f"{out_dir}: not empty and not a previous output of this command "
            f"(found {unexpected[:5]}); refusing to replace it; choose an empty or new folder"
        )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
