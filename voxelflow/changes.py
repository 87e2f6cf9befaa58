"""What changed in the data source since the last retraining: files added, changed, removed.

The fingerprint of a folder is the SHA-256 of every file in it (hidden files aside), by
relative path; the retraining flow keeps the last one it trained on and compares.
"""

from __future__ import annotations

from pathlib import Path

from voxelflow.atomic import file_sha256


def fingerprint(data_dir: str | Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        return {}
    return {
        path.relative_to(data_dir).as_posix(): file_sha256(path)
        for path in sorted(data_dir.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(data_dir).parts)
    }


def compare(previous: dict[str, str] | None, current: dict[str, str]) -> dict[str, list[str]]:
    """Files added, changed and removed since ``previous`` (None: everything is new)."""
    previous = previous or {}
    return {
        "added": sorted(set(current) - set(previous)),
        "changed": sorted(p for p in set(current) & set(previous) if current[p] != previous[p]),
        "removed": sorted(set(previous) - set(current)),
    }


def summary(changes: dict[str, list[str]]) -> str:
    parts = [f"{len(files)} {kind}" for kind, files in changes.items() if files]
    return ", ".join(parts) if parts else "nothing new"
