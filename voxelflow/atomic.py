"""Atomic writes: every artifact goes to a temporary name beside it, then is renamed.

A crashed stage therefore leaves the previous artifact or none, never half a file.
"""

from __future__ import annotations

import csv
import errno
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

TEMPORARY_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"
RESUME_FOLDER = ".resume"  # inside a resumable staging folder: its key and journal


def temporary_prefix(path: Path) -> str:
    """Temporary names carry the writer's pid, so a later run can tell a dead writer's
    leftovers (removed by :func:`sweep_stale`) from a live one's."""
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: str | Path) -> list[str]:
    """Removes the temporary files and folders that killed writers left in ``folder``
    (``.<name>.<pid>.*.tmp`` whose pid is gone); returns their names."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(".") or TEMPORARY_SUFFIX not in name:
            continue
        # .<name>.<pid>.<random>.tmp, possibly followed by a file type (.tmp.nii.gz)
        parts = name[1 : name.rindex(TEMPORARY_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(name)
    return removed


def fsync_file(path: str | Path) -> None:
    """Flushes a file's bytes to the disk, so a rename after it never exposes a file whose
    contents a power cut could still lose."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(path: str | Path) -> None:
    """Makes the renames inside a folder durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; renames it onto ``path`` on success.

    The writer writes the temporary path however it likes (NumPy, nibabel, Keras...); its
    bytes are flushed to the disk before the rename. On an error nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent
    )
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except OSError as error:
        if error.errno is None and disk_full(path.parent):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise
    finally:
        temporary.unlink(missing_ok=True)


def disk_full(folder: str | Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left. Some writers report
    a short write without an errno (NumPy's ``tofile``: "N requested and M written")."""
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: object) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
"""First characters that make a spreadsheet evaluate a cell (and the escape itself)."""


def escape_cell(value: object) -> object:
    """Text a spreadsheet would run as a formula (``=cmd|' /C calc'!A0``, ``@SUM(...)``) gets
    a leading ``'``, which spreadsheets show as text; numbers such as ``-0.5`` stay as they
    are. :func:`unescape_cell` gives the original back."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def unescape_cell(text: str) -> str:
    if isinstance(text, str) and len(text) > 1 and text[0] == "'" and text[1] in FORMULA_STARTS:
        return text[1:]
    return text


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Writes rows (dicts) under a fixed header; missing keys become empty cells. Cells that
    a spreadsheet would evaluate are escaped (:func:`escape_cell`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({key: escape_cell(row.get(key, "")) for key in columns})
    write_text(path, buffer.getvalue())


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


@contextmanager
def atomic_dir(
    path: str | Path, expected: Iterable[str] | None = None, resume_key: str | None = None
) -> Iterator[Path]:
    """Builds a whole output folder in a temporary sibling and swaps it in on success.

    With ``expected`` (the names this output consists of), an existing folder holding
    anything else is refused rather than replaced (see :func:`check_replaceable`).

    With ``resume_key`` (a digest of everything the output depends on), the sibling is
    ``.<name>.partial`` and survives a crash: the next run with the same key gets the same
    folder back, with what the killed run finished in it (see :class:`Journal`); a run with
    another key starts afresh. Without it, a killed run's sibling is removed by the next one.

    The swap is two renames (old out of the way, new in); a crash between them leaves the
    old folder as ``.<name>.old``, which the next run puts back.
    """
    path = Path(path)
    if expected is not None:
        check_replaceable(path, expected)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path.parent)
    backup = path.with_name(f".{path.name}.old")
    if backup.exists():
        if path.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, path)  # a swap interrupted between its two renames
    if resume_key is None:
        temporary = Path(
            tempfile.mkdtemp(
                prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX, dir=path.parent
            )
        )
    else:
        temporary = _resumable_staging(path, resume_key)
    succeeded = False
    try:
        yield temporary
        shutil.rmtree(temporary / RESUME_FOLDER, ignore_errors=True)
        if path.exists():
            os.replace(path, backup)
            os.replace(temporary, path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(temporary, path)
        fsync_folder(path.parent)
        succeeded = True
    finally:
        if resume_key is None or succeeded:
            shutil.rmtree(temporary, ignore_errors=True)


def _resumable_staging(path: Path, resume_key: str) -> Path:
    staging = path.with_name(f".{path.name}{PARTIAL_SUFFIX}")
    key_file = staging / RESUME_FOLDER / "key"
    if staging.is_dir() and key_file.is_file() and key_file.read_text() == resume_key:
        for folder, _, _ in os.walk(staging):  # a kill inside a write leaves its temporary
            sweep_stale(folder)
        return staging
    if staging.exists():
        shutil.rmtree(staging)  # another run's leftovers: gone, or an error (never mixed)
    (staging / RESUME_FOLDER).mkdir(parents=True)
    key_file.write_text(resume_key)
    return staging


class Journal:
    """What a resumable stage has finished inside its staging folder, item by item.

    Each finished item is one JSON line: its key, the files it wrote with their SHA-256, and
    whatever the stage needs to rebuild its index without redoing the item. A line torn by a
    crash, or an item whose files are missing or do not match their checksums, does not
    count: the item is done again.
    """

    def __init__(self, staging: str | Path):
        self.staging = Path(staging)
        self.path = self.staging / RESUME_FOLDER / "journal.jsonl"

    def finished(self) -> dict[str, dict]:
        """The items whose files are all present and verified, by key."""
        if not self.path.is_file():
            return {}
        entries = {}
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # torn by a crash
            entries[entry["key"]] = entry
        return {
            key: entry
            for key, entry in entries.items()
            if all(
                (self.staging / name).is_file() and file_sha256(self.staging / name) == digest
                for name, digest in entry["files"].items()
            )
        }

    def record(self, key: str, files: Iterable[str], **data) -> None:
        """Records an item as finished; ``files`` are paths relative to the staging folder,
        already in place (renamed in)."""
        entry = {
            "key": key,
            "files": {name: file_sha256(self.staging / name) for name in files},
            **data,
        }
        with open(self.path, "a+", encoding="utf-8") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():  # after a line torn by a kill, start a new one
                handle.seek(handle.tell() - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            handle.write(json.dumps(entry) + "\n")


def resume_key(*parts: object) -> str:
    """A digest of a stage's inputs and settings: its resumable staging is reused only by a
    run whose key is the same."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()


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
