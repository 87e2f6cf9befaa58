"""Reading and writing volumes: the only module of voxelflow that touches nibabel."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from voxelflow.atomic import TEMPORARY_SUFFIX, fsync_file, temporary_prefix

# A primary file per volume; the data file of a pair travels with its header.
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgh", ".mgz", ".mnc", ".hdr", ".hdr.gz")
COMPANIONS = {".hdr": (".img", ".img.gz"), ".hdr.gz": (".img.gz", ".img")}
DATA_SUFFIXES = (".img.gz", ".img")
ALL_SUFFIXES = tuple(sorted({*VOLUME_SUFFIXES, *DATA_SUFFIXES}, key=len, reverse=True))
NON_FINITE_POLICIES = ("reject", "repair")


class VolumeError(ValueError):
    """A file that is not a usable 3D volume; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    """A 3D volume in scanner units with its voxel-to-world (RAS+ mm) affine.

    ``repaired`` counts the NaN/Inf voxels replaced by the volume's finite minimum (only
    when the caller allowed it).
    """

    data: np.ndarray
    affine: np.ndarray
    disk_dtype: str
    repaired: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def _suffix(name: str, suffixes) -> str | None:
    lowered = name.lower()
    return next((suffix for suffix in suffixes if lowered.endswith(suffix)), None)


def is_volume_file(path: str | Path) -> bool:
    """Whether the name is a volume nibabel reads (a pair counts once, by its ``.hdr``)."""
    return _suffix(Path(path).name, VOLUME_SUFFIXES) is not None


def is_companion_file(path: str | Path) -> bool:
    """Whether the name is the data half of a pair (``.img``), which its header names."""
    return _suffix(Path(path).name, DATA_SUFFIXES) is not None


def _sibling(path: Path, own: tuple[str, ...], others: tuple[str, ...]) -> Path | None:
    """The first existing file named like ``path`` with one of ``others`` in place of its
    suffix from ``own`` (upper-case suffixes stay upper-case); None if there is none."""
    suffix = _suffix(path.name, own)
    if suffix is None:
        return None
    stem = path.name[: -len(suffix)]
    upper = path.name[-len(suffix) :].isupper()
    for other in others:
        candidate = path.with_name(stem + (other.upper() if upper else other))
        if candidate.is_file():
            return candidate
    return None


def companion_files(path: str | Path) -> list[Path]:
    """The data file that travels with a header (``x.hdr`` -> ``x.img``), if present."""
    path = Path(path)
    suffix = _suffix(path.name, COMPANIONS)
    found = _sibling(path, COMPANIONS, COMPANIONS[suffix]) if suffix else None
    return [found] if found else []


def header_of(path: str | Path) -> Path | None:
    """For a pair's data file, its header if present (``x.img`` -> ``x.hdr``)."""
    return _sibling(Path(path), DATA_SUFFIXES, (".hdr", ".hdr.gz"))


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in mm: the norms of the affine's first three columns."""
    return tuple(float(value) for value in np.linalg.norm(affine[:3, :3], axis=0))


def _open(path: Path):
    if _suffix(path.name, COMPANIONS) and not companion_files(path):
        raise VolumeError(
            f"{path}: the header's data file is missing (expected "
            f"{path.name[: -len(_suffix(path.name, COMPANIONS))]}.img next to it)"
        )
    try:
        return nib.load(str(path))
    except FileNotFoundError as error:
        raise VolumeError(f"{path}: file not found ({error.filename})") from None
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise VolumeError(f"{path}: unreadable header: {type(error).__name__}: {error}") from None


def _volume_shape(path: Path, shape: tuple[int, ...], volume_index: int | None):
    """The 3D shape to read, and the index of the 4D volume to take (None: the whole file)."""
    if len(shape) == 4 and shape[3] == 1:
        return shape[:3], None
    if len(shape) == 4:
        if volume_index is None:
            raise VolumeError(
                f"{path}: a 4D series of {shape[3]} volumes {shape}; expected a 3D volume "
                "(set ingest.volume_index to take one volume of every series)"
            )
        if not 0 <= volume_index < shape[3]:
            raise VolumeError(
                f"{path}: volume_index {volume_index} is out of range for a series of "
                f"{shape[3]} volumes {shape}"
            )
        return shape[:3], volume_index
    if len(shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {shape} ({len(shape)}D)")
    return shape, None


SPACING_RANGE_MM = (1e-4, 1e4)
"""Voxel sizes outside this range are a broken header, not a scan."""


def _checked_affine(path: Path, image) -> np.ndarray:
    """The voxel-to-world affine, refused when it cannot place the voxels in the world: not
    finite, singular, an axis with no clear direction, or implausible voxel sizes."""
    try:
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as error:  # a header nibabel could parse but not turn into an affine
        raise VolumeError(f"{path}: no usable affine: {type(error).__name__}: {error}") from None
    with np.errstate(all="ignore"):
        usable = np.all(np.isfinite(affine)) and abs(np.linalg.det(affine[:3, :3])) >= 1e-9
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not usable:
        raise VolumeError(f"{path}: the affine is singular or not finite:\n{affine}")
    low, high = SPACING_RANGE_MM
    if not np.all((spacing >= low) & (spacing <= high)):
        raise VolumeError(
            f"{path}: voxel sizes {spacing.tolist()} mm are outside [{low}, {high}] mm: "
            "a broken header"
        )
    if any(code is None for code in nib.aff2axcodes(affine)):
        raise VolumeError(
            f"{path}: the affine has a voxel axis with no clear direction "
            f"(orientation {nib.aff2axcodes(affine)}):\n{affine}"
        )
    return affine


def load_volume(
    path: str | Path,
    max_voxels: int | None = None,
    volume_index: int | None = None,
    non_finite: str = "reject",
) -> Volume:
    """Reads a 3D volume, applying the header's scaling, checking it is usable.

    A 4D file whose fourth dimension is 1 is squeezed; from a true 4D series the volume
    ``volume_index`` is taken (reading only that volume), or the file is refused. The voxel
    count is checked against ``max_voxels`` from the header before any data is read (a guard
    against decompression bombs). Byte order and scaling (slope/intercept) are applied by
    nibabel.

    Args:
        non_finite: ``"reject"`` refuses NaN/Inf voxels; ``"repair"`` replaces them by the
            volume's finite minimum and counts them in ``Volume.repaired``.

    Raises:
        VolumeError: unreadable or truncated file, missing data file of a pair, wrong
            dimensionality, complex or RGB data, a singular or non-finite affine, too many
            voxels, or NaN/Inf voxels (when not repaired).
    """
    path = Path(path)
    if non_finite not in NON_FINITE_POLICIES:
        raise ValueError(f"non_finite must be one of {NON_FINITE_POLICIES}, got {non_finite!r}")
    image = _open(path)
    full_shape = tuple(int(size) for size in image.shape)
    shape, index = _volume_shape(path, full_shape, volume_index)
    disk_dtype = np.dtype(image.get_data_dtype())
    if disk_dtype.kind == "c" or disk_dtype.fields is not None:
        raise VolumeError(f"{path}: complex or RGB voxels ({disk_dtype}) are not a scalar volume")
    if disk_dtype.kind not in "biuf":
        raise VolumeError(f"{path}: voxel type {disk_dtype} is not numeric")
    voxels = int(np.prod(shape))
    if max_voxels is not None and voxels > max_voxels:
        raise VolumeError(
            f"{path}: {voxels} voxels {shape} exceeds the limit of {max_voxels} (ingest.max_voxels)"
        )
    affine = _checked_affine(path, image)
    try:
        if index is None:
            data = image.get_fdata(dtype=np.float32, caching="unchanged")
        else:
            data = np.asarray(image.dataobj[..., index]).astype(np.float32, copy=False)
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError...
        raise VolumeError(
            f"{path}: cannot read the voxel data (truncated or corrupt?): "
            f"{type(error).__name__}: {error}"
        ) from None
    data = np.ascontiguousarray(data.reshape(shape))
    finite = np.isfinite(data)
    bad = int(data.size - np.count_nonzero(finite))
    if bad and (non_finite == "reject" or bad == data.size):
        hint = "" if bad == data.size else " (ingest.non_finite: repair replaces them)"
        raise VolumeError(
            f"{path}: {bad} of {data.size} voxels are NaN or Inf; expected finite values{hint}"
        )
    if bad:
        data[~finite] = data[finite].min()
    return Volume(data=data, affine=affine, disk_dtype=disk_dtype.name, repaired=bad)


def reorient_to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permutes and flips the voxel axes so that they run Right, Anterior, Superior."""
    current = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(current, target)
    reoriented = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(reoriented), new_affine


def orientation_affine(
    codes: str, spacing: tuple[float, float, float], shape, center_mm
) -> np.ndarray:
    """An affine for axis codes such as ``"LPS"`` with the volume centred on ``center_mm``."""
    ornt = nib.orientations.axcodes2ornt(tuple(codes))
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for voxel_axis, (world_axis, sign) in enumerate(ornt):
        affine[int(world_axis), voxel_axis] = sign * spacing[voxel_axis]
    center_voxel = (np.asarray(shape, dtype=float) - 1) / 2
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - affine[:3, :3] @ center_voxel
    return affine


def save_volume(
    path: str | Path, data: np.ndarray, affine: np.ndarray, dtype: str = "float32"
) -> None:
    """Writes a NIfTI-1 file atomically; ``int16`` stores scaled integers with a slope."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.set_data_dtype(np.dtype(dtype))
    image.header.set_xyzt_units("mm", "sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    handle, temporary = tempfile.mkstemp(
        prefix=temporary_prefix(path), suffix=TEMPORARY_SUFFIX + suffix, dir=path.parent
    )
    os.close(handle)
    try:
        nib.save(image, temporary)
        fsync_file(temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
