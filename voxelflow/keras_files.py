"""Byte-reproducible ``.keras`` files.

A ``.keras`` file is a zip of ``config.json``, ``metadata.json`` and the weights. Keras
writes three things into it that change from run to run although the model does not: the
save time (``metadata.json`` and the zip entries' dates) and ``shared_object_id``s, which
are Python object ids of the saving process. :func:`make_reproducible` rewrites them
(dates fixed, ids renumbered in order of appearance, which keeps which objects are shared),
so the same weights give the same bytes: DVC sees an unchanged output, and a retrained
model identical to the champion has the champion's hash.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from voxelflow.atomic import atomic_path

FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold


def _renumber(node, ids: dict) -> object:
    if isinstance(node, dict):
        return {
            key: (
                ids.setdefault(value, len(ids) + 1)
                if key == "shared_object_id"
                else _renumber(value, ids)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber(item, ids) for item in node]
    return node


def make_reproducible(path: str | Path) -> None:
    """Rewrites a ``.keras`` file in place (atomically) without its run-specific bytes."""
    path = Path(path)
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with atomic_path(path) as temporary, zipfile.ZipFile(temporary, "w") as target:
        for info, data in sorted(entries, key=lambda entry: entry[0].filename):
            if info.filename == "config.json":
                data = json.dumps(_renumber(json.loads(data), {})).encode()
            elif info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            target.writestr(entry, data)
