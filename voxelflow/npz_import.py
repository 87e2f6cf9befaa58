"""Import of a MedMNIST-style ``.npz`` archive of 3D volumes as NIfTI files + labels.csv.

A MedMNIST v2 3D archive holds ``{split}_images`` (N, D, H, W) and ``{split}_labels`` (N, 1)
for the official ``train``, ``val`` and ``test`` splits. Each case becomes
``volumes/{split}_{index:05d}.nii.gz`` (voxels stored as float32, which holds every 8 and
16-bit integer exactly, so the values read back unchanged), ``labels.csv`` keeps the official
split, and ``source.json`` records where the data came from. The output folder is written as
a whole (:func:`voxelflow.atomic.atomic_dir`): an error leaves the previous output or none.
"""

from __future__ import annotations

import logging
import math
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from voxelflow.atomic import atomic_dir, check_replaceable, file_sha256, write_csv, write_json
from voxelflow.labels import SAFE_NAME
from voxelflow.nifti import save_volume

log = logging.getLogger(__name__)
Result = TypeVar("Result")

SPLITS = ("train", "val", "test")
EXPECTED_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
LABEL_COLUMNS = ("id", "path", "label", "split")
OUTPUTS = ("volumes", "labels.csv", "source.json")
VOLUMES_DIR = "volumes"
STORED_DTYPE = "float32"
IMAGE_DTYPES = ("bool", "uint8", "int8", "uint16", "int16")
"""Voxel types that float32 represents exactly."""


@dataclass(frozen=True)
class ArrayHeader:
    """An ``.npy`` member's shape, dtype and memory order, read without its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool


def case_id(split: str, index: int) -> str:
    """The id of a case: its official split and its row in that split, ``train_00042``."""
    return f"{split}_{index:05d}"


def spacing_triple(spacing_mm: float | Sequence[float]) -> tuple[float, float, float]:
    """One voxel size for all axes, or three; each finite and positive, in mm."""
    values = [spacing_mm] if isinstance(spacing_mm, int | float) else list(spacing_mm)
    if len(values) == 1:
        values = values * 3
    try:
        triple = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ValueError(f"spacing {spacing_mm!r}: expected numbers in mm") from None
    if len(triple) != 3 or not all(math.isfinite(v) and v > 0 for v in triple):
        raise ValueError(
            f"spacing {spacing_mm!r}: expected one or three finite positive voxel sizes in mm"
        )
    return triple


def check_classes(classes: Sequence[str]) -> list[str]:
    """Class names, index = integer label: non-empty, unique, usable as labels by ingest."""
    names = [str(name) for name in classes]
    if not names:
        raise ValueError("classes: empty list; expected one name per integer label")
    bad = [name for name in names if not SAFE_NAME.match(name)]
    if bad:
        raise ValueError(
            f"classes: {bad} are not valid labels (letters, digits, '.', '_', '-', "
            "starting with a letter or digit)"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"classes: duplicate name(s) {duplicated}")
    return names


def read_array_header(handle: IO[bytes]) -> ArrayHeader:
    """Reads the ``.npy`` header from an open member, leaving the handle at the data."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
    else:
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
    return ArrayHeader(tuple(int(size) for size in shape), np.dtype(dtype), bool(fortran_order))


def case_shape(npz_path: Path, key: str, header: ArrayHeader) -> tuple[int, int, int]:
    """The (D, H, W) of one case of an images array, a singleton channel dropped.

    Accepts (N, D, H, W), (N, D, H, W, 1) and (N, 1, D, H, W).
    """
    shape = header.shape
    if len(shape) == 5 and shape[4] == 1:
        volume = shape[1:4]
    elif len(shape) == 5 and shape[1] == 1:
        volume = shape[2:5]
    elif len(shape) == 4:
        volume = shape[1:4]
    else:
        raise ValueError(
            f"{npz_path}: {key} has shape {shape}; expected (N, D, H, W), (N, D, H, W, 1) "
            "or (N, 1, D, H, W) (3D volumes, at most a singleton channel)"
        )
    if min(volume) < 1:
        raise ValueError(f"{npz_path}: {key} has shape {shape}; a volume axis is empty")
    if header.dtype.name not in IMAGE_DTYPES:
        raise ValueError(
            f"{npz_path}: {key} has dtype {header.dtype}; expected one of {list(IMAGE_DTYPES)}"
        )
    return volume


def check_labels(npz_path: Path, key: str, labels: np.ndarray, count: int) -> np.ndarray:
    """The labels of one split as a flat integer array of ``count`` items."""
    if labels.dtype.kind not in "iu":
        raise ValueError(
            f"{npz_path}: {key} has dtype {labels.dtype}; expected integer class labels"
        )
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise ValueError(
            f"{npz_path}: {key} has shape {labels.shape}: {labels.shape[1]} labels per case "
            "(multi-label or one-hot); only one integer class per case, shape (N,) or (N, 1), "
            "is supported"
        )
    if labels.ndim not in (1, 2):
        raise ValueError(f"{npz_path}: {key} has shape {labels.shape}; expected (N,) or (N, 1)")
    flat = labels.reshape(-1).astype(np.int64)
    if flat.size != count:
        raise ValueError(
            f"{npz_path}: {key} has {flat.size} labels for {count} images; expected one per image"
        )
    return flat


def class_of_label(
    npz_path: Path, labels: dict[str, np.ndarray], classes: list[str] | None
) -> dict[int, str]:
    """The class name of each integer label: ``classes[label]``, else the integer as text.

    Raises:
        ValueError: a label outside ``0..len(classes) - 1`` (or negative), naming the split
            and the first offending row.
    """
    for split, values in labels.items():
        bad = np.flatnonzero((values < 0) | (values >= len(classes) if classes else False))
        if bad.size:
            row = int(bad[0])
            expected = f"0..{len(classes) - 1} for classes {classes}" if classes else "a label >= 0"
            raise ValueError(
                f"{npz_path}: {split}_labels row {row}: label {int(values[row])} is out of "
                f"range; expected {expected} ({bad.size} such row(s) in {split})"
            )
    if classes is not None:
        return dict(enumerate(classes))
    present = sorted({int(value) for values in labels.values() for value in np.unique(values)})
    return {value: str(value) for value in present}


def iter_cases(
    handle: IO[bytes], header: ArrayHeader, volume: tuple[int, int, int]
) -> Iterator[np.ndarray]:
    """Yields the cases of an images member one at a time, reading only one case's bytes.

    The handle is positioned at the data (after :func:`read_array_header`).
    """
    count = header.shape[0]
    size = int(np.prod(volume)) * header.dtype.itemsize
    if header.fortran_order:  # cases are not contiguous: read the array whole
        block = handle.read(size * count)
        if len(block) != size * count:
            raise EOFError(f"truncated ({len(block)} of {size * count} bytes)")
        data = np.frombuffer(block, dtype=header.dtype).reshape(header.shape, order="F")
        yield from data.reshape((count, *volume))
        return
    for index in range(count):
        block = handle.read(size)
        if len(block) != size:
            raise EOFError(f"case {index} is truncated ({len(block)} of {size} bytes)")
        yield np.frombuffer(block, dtype=header.dtype).reshape(volume)


def _open_archive(npz_path: Path) -> zipfile.ZipFile:
    if not npz_path.is_file():
        raise ValueError(f"{npz_path}: file not found")
    if not zipfile.is_zipfile(npz_path):
        raise ValueError(f"{npz_path}: not a zip (.npz) archive")
    try:
        return zipfile.ZipFile(npz_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(f"{npz_path}: not a readable .npz archive: {error}") from None


def _read_array(handle: IO[bytes]) -> np.ndarray:
    return np.lib.format.read_array(handle, allow_pickle=False)


def _read_member(
    archive: zipfile.ZipFile,
    npz_path: Path,
    member: str,
    key: str,
    read: Callable[[IO[bytes]], Result],
) -> Result:
    """``read`` applied to an open member; a corrupt member is a ``ValueError`` naming it."""
    try:
        with archive.open(member) as handle:
            return read(handle)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{npz_path}: {key} is unreadable ({error})") from None


def _member_cases(
    archive: zipfile.ZipFile, npz_path: Path, member: str, key: str, header: ArrayHeader
) -> Iterator[np.ndarray]:
    """The cases of an images member; a corrupt or short member is a ``ValueError`` naming it.

    Only reading is guarded: an error of the caller between two cases is not relabelled.
    """
    try:
        with archive.open(member) as handle:
            read_array_header(handle)
            yield from iter_cases(handle, header, case_shape(npz_path, key, header))
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
        raise ValueError(f"{npz_path}: {key} is unreadable ({error})") from None


def import_npz(
    npz_path: str | Path,
    out_dir: str | Path,
    classes: list[str] | None = None,
    spacing_mm: float | Sequence[float] = (1.0, 1.0, 1.0),
) -> dict:
    """Writes a MedMNIST v2 3D ``.npz`` as NIfTI volumes, ``labels.csv`` and ``source.json``.

    Args:
        npz_path: the archive, with ``{train,val,test}_images`` (N, D, H, W) at most with a
            singleton channel, and ``{train,val,test}_labels`` (N,) or (N, 1) integers.
        out_dir: the output folder, replaced as a whole (refused if it holds other files).
        classes: the class names, index = integer label; ``None`` names each class by its
            integer.
        spacing_mm: the voxel size in mm, one value or three (the affine is diagonal, RAS).

    Returns:
        The archive's name, the number of cases, the class names and the count of cases per
        split and class.

    Raises:
        ValueError: the file is missing or not an ``.npz``, keys are missing, an array has the
            wrong shape or type, a label is out of range, or the output folder holds other
            things; nothing is written.
    """
    npz_path, out_dir = Path(npz_path), Path(out_dir)
    spacing = spacing_triple(spacing_mm)
    checked = check_classes(classes) if classes is not None else None
    check_replaceable(out_dir, OUTPUTS, protect=(npz_path,))
    with _open_archive(npz_path) as archive:
        members = {name.removesuffix(".npy"): name for name in archive.namelist()}
        missing = [key for key in EXPECTED_KEYS if key not in members]
        if missing:
            raise ValueError(
                f"{npz_path}: missing key(s) {missing}; found {sorted(members)}, "
                f"expected {list(EXPECTED_KEYS)}"
            )
        headers, volumes, labels = {}, {}, {}
        for split in SPLITS:
            key = f"{split}_images"
            headers[split] = _read_member(archive, npz_path, members[key], key, read_array_header)
            volumes[split] = case_shape(npz_path, key, headers[split])
            key = f"{split}_labels"
            values = _read_member(archive, npz_path, members[key], key, _read_array)
            labels[split] = check_labels(npz_path, key, values, headers[split].shape[0])
        names = class_of_label(npz_path, labels, checked)
        counts = {
            split: {name: int(np.sum(labels[split] == value)) for value, name in names.items()}
            for split in SPLITS
        }
        affine = np.diag([*spacing, 1.0])
        rows = []
        low, high = math.inf, -math.inf
        with atomic_dir(out_dir, OUTPUTS) as staging:
            for split in SPLITS:
                key = f"{split}_images"
                cases = _member_cases(archive, npz_path, members[key], key, headers[split])
                for index, data in enumerate(cases):
                    identifier = case_id(split, index)
                    relative = f"{VOLUMES_DIR}/{identifier}.nii.gz"
                    save_volume(staging / relative, data, affine, STORED_DTYPE)
                    low, high = min(low, float(data.min())), max(high, float(data.max()))
                    label = names[int(labels[split][index])]
                    rows.append(
                        {"id": identifier, "path": relative, "label": label, "split": split}
                    )
            (staging / VOLUMES_DIR).mkdir(exist_ok=True)  # present even with no case
            write_csv(staging / "labels.csv", rows, LABEL_COLUMNS)
            summary = {
                "source": npz_path.name,
                "cases": len(rows),
                "classes": list(names.values()),
                "per_split": counts,
            }
            write_json(
                staging / "source.json",
                {
                    **summary,
                    "sha256": file_sha256(npz_path),
                    "spacing_mm": list(spacing),
                    "shape": {split: list(volumes[split]) for split in SPLITS},
                    "image_dtype": {split: headers[split].dtype.name for split in SPLITS},
                    "stored_dtype": STORED_DTYPE,
                    "value_range": [low, high] if rows else None,
                },
            )
    log.info("import-npz wrote %d cases from %s to %s", len(rows), npz_path.name, out_dir)
    return summary
