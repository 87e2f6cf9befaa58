"""The on-disk layout of preprocessed volumes, shared by every stage that reads them.

``<dir>/index.csv`` lists every preprocessed volume (the manifest's columns plus ``array``,
the ``.npy`` file relative to ``<dir>``); ``<dir>/preprocess.json`` holds the exact spec.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from voxelflow.atomic import unescape_cell
from voxelflow.preprocess import PreprocessSpec

INDEX = "index.csv"
SPEC = "preprocess.json"


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV written by voxelflow (cells unescaped, see ``atomic.escape_cell``), as
    dicts; ``ValueError`` names a missing file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not found; run the stage that writes it first")
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            {key: unescape_cell(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def read_index(
    directory: str | Path, splits: tuple[str, ...] | None = None
) -> list[dict[str, str]]:
    """The preprocessed volumes, optionally only those of the given splits."""
    rows = read_rows(Path(directory) / INDEX)
    return [row for row in rows if splits is None or row["split"] in splits]


def read_spec(directory: str | Path) -> PreprocessSpec:
    return PreprocessSpec.from_dict(json.loads((Path(directory) / SPEC).read_text()))


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array, never unpickling (``allow_pickle=False``: a pickled object array,
    which could run code, is refused with ``ValueError`` naming the file)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numeric array ({error})") from None


def load_array(directory: str | Path, row: dict[str, str], mmap: bool = False) -> np.ndarray:
    return load_npy(Path(directory) / row["array"], mmap)


def class_names(directory: str | Path) -> list[str]:
    """The class list that ingest recorded (travels through preprocess.json)."""
    return list(json.loads((Path(directory) / SPEC).read_text())["classes"])


def data_digest(directory: str | Path, splits: tuple[str, ...] | None = None) -> str:
    """A hash of what a training run reads from a preprocessed folder: its spec and the id,
    split, label and voxel content of every volume of ``splits``."""
    digest = hashlib.sha256((Path(directory) / SPEC).read_bytes())
    for row in sorted(read_index(directory, splits), key=lambda row: row["id"]):
        digest.update(
            "|".join(row.get(key, "") for key in ("id", "split", "label", "content")).encode()
        )
    return digest.hexdigest()
