"""Reading and writing volumes: the only module of voxelflow that touches nibabel."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mgh", ".mgz", ".hdr")


class VolumeError(ValueError):
    """A file that is not a usable 3D volume; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    """A 3D volume in scanner units with its voxel-to-world (RAS+ mm) affine."""

    data: np.ndarray
    affine: np.ndarray
    disk_dtype: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(size) for size in self.data.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing_of(self.affine)

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


def is_volume_file(path: str | Path) -> bool:
    """Whether the name has a volume extension nibabel reads (``.img`` travels with ``.hdr``)."""
    name = Path(path).name.lower()
    return any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in mm: the norms of the affine's first three columns."""
    return tuple(float(value) for value in np.linalg.norm(affine[:3, :3], axis=0))


def read_header(path: str | Path) -> tuple[tuple[int, ...], str, np.ndarray]:
    """Opens a file lazily: its shape, on-disk dtype and affine, without reading the voxels."""
    path = Path(path)
    try:
        image = nib.load(str(path))
    except FileNotFoundError as error:
        raise VolumeError(f"{path}: file not found ({error.filename})") from None
    except Exception as error:  # nibabel raises many types for corrupt headers
        raise VolumeError(f"{path}: unreadable header: {type(error).__name__}: {error}") from None
    shape = tuple(int(size) for size in image.shape)
    dtype = np.dtype(image.get_data_dtype())
    affine = np.asarray(image.affine, dtype=np.float64)
    return shape, dtype.name, affine


def load_volume(path: str | Path, max_voxels: int | None = None) -> Volume:
    """Reads a 3D volume, applying the header's scaling, checking it is usable.

    A 4D file whose fourth dimension is 1 is squeezed. The voxel count is checked against
    ``max_voxels`` from the header before any data is read (a guard against decompression
    bombs).

    Raises:
        VolumeError: unreadable or truncated file, wrong dimensionality, complex or RGB data,
            a singular or non-finite affine, too many voxels, or NaN/Inf voxels.
    """
    path = Path(path)
    shape, disk_dtype, affine = read_header(path)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {shape}")
    dtype = np.dtype(disk_dtype)
    if dtype.kind == "c" or dtype.fields is not None:
        raise VolumeError(f"{path}: complex or RGB voxels ({disk_dtype}) are not a scalar volume")
    if max_voxels is not None and int(np.prod(shape)) > max_voxels:
        raise VolumeError(
            f"{path}: {int(np.prod(shape))} voxels {shape} exceeds the limit of {max_voxels}"
        )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise VolumeError(f"{path}: the affine is singular or not finite:\n{affine}")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError...
        raise VolumeError(
            f"{path}: cannot read the voxel data (truncated or corrupt?): "
            f"{type(error).__name__}: {error}"
        ) from None
    data = data.reshape(shape)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise VolumeError(f"{path}: {bad} voxels are NaN or Inf; expected finite values")
    return Volume(data=data, affine=affine, disk_dtype=disk_dtype)


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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        nib.save(image, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
