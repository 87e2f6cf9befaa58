"""A PNG preview of augmentation: orthogonal slices of a volume and of a few augmented copies,
so a person can check that the transforms in params look plausible before caching them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from voxelflow.atomic import atomic_path
from voxelflow.augment import Transform, apply_transform, sample_transform
from voxelflow.dataset import load_npy
from voxelflow.params import Params
from voxelflow.seeding import rng_for

PLANES = ("sagittal (axis 0)", "coronal (axis 1)", "axial (axis 2)")


def load_for_preview(path: str | Path, params: Params) -> tuple[np.ndarray, tuple, str]:
    """(volume, spacing in mm, id): a preprocessed ``.npy`` as it is (spacing from the
    ``preprocess.json`` of its folder; its file name is its id, so the copies are the
    cache's), or a scan file preprocessed with the params (id: the file name without its
    extensions, which is the cache's id only if ingest gave it that id)."""
    path = Path(path)
    if path.suffix == ".npy":
        volume = load_npy(path).astype(np.float32)
        spec_file = path.parent.parent / "preprocess.json"
        try:
            spacing = tuple(json.loads(spec_file.read_text())["target_spacing_mm"])
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{spec_file}: cannot read the voxel size of {path.name} "
                f"({type(error).__name__}: {error}); expected the preprocess.json that the "
                "preprocess stage writes next to arrays/"
            ) from None
        if volume.ndim != 3:
            raise ValueError(f"{path}: expected a 3D array, got shape {volume.shape}")
        return volume, spacing, path.stem
    from voxelflow.fingerprint import resolve_spec
    from voxelflow.nifti import load_volume
    from voxelflow.preprocess import preprocess_volume

    try:
        spec, _ = resolve_spec(params.preprocess, None)
    except ValueError as error:
        raise ValueError(
            f"{error}; preview a preprocessed array (data/preprocessed/arrays/ID.npy) instead"
        ) from None
    scan = load_volume(path, volume_index=params.ingest.volume_index)
    volume = preprocess_volume(scan.data, scan.affine, spec)
    name = path.name.split(".")[0]
    return volume, spec.target_spacing_mm, name


def preview_copies(
    volume: np.ndarray, identifier: str, spacing, params: Params, copies: int
) -> list[tuple[str, np.ndarray]]:
    """The original and ``copies`` augmented copies, drawn exactly as the cache draws them."""
    out = [("original", volume)]
    for copy in range(copies):
        rng = rng_for(params.seed, "augment", identifier, copy)
        transform = sample_transform(rng, params.augment, tuple(spacing))
        out.append((describe(transform, copy), apply_transform(volume, transform)))
    return out


def describe(transform: Transform, copy: int) -> str:
    parts = [f"copy {copy}"]
    if any(transform.rotation_degrees):
        parts.append("rot " + "/".join(f"{v:+.0f}" for v in transform.rotation_degrees))
    if any(transform.elastic_magnitude_voxels):
        parts.append("elastic")
    if transform.scale != (1.0, 1.0, 1.0):
        parts.append("scale " + "/".join(f"{v:.2f}" for v in transform.scale))
    if any(transform.translation_voxels):
        parts.append("shift " + "/".join(f"{v:+.1f}" for v in transform.translation_voxels))
    if transform.bias_strength:
        parts.append(f"bias {transform.bias_strength:.2f}")
    if transform.intensity_scale != 1.0 or transform.intensity_shift:
        parts.append(f"contrast {transform.intensity_scale:.2f}{transform.intensity_shift:+.2f}")
    if any(transform.blur_sigma_voxels):
        parts.append("blur")
    if transform.low_resolution_factor > 1:
        parts.append(f"thick x{transform.low_resolution_factor:.1f}")
    if any(transform.flips):
        parts.append("flip " + "".join(str(i) for i, f in enumerate(transform.flips) if f))
    if transform.gamma != 1.0:
        parts.append(f"gamma {transform.gamma:.2f}")
    if transform.noise_std:
        parts.append(f"noise {transform.noise_std:.2f}")
    return "\n".join(parts)


def write_preview(rows: list[tuple[str, np.ndarray]], out_png: str | Path, title: str) -> Path:
    """A grid: one row per volume, the three central orthogonal slices as columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = min(float(np.percentile(volume, 1)) for _, volume in rows)
    high = max(float(np.percentile(volume, 99)) for _, volume in rows)
    figure, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), squeeze=False)
    for row, (label, volume) in enumerate(rows):
        center = [size // 2 for size in volume.shape]
        slices = (volume[center[0]], volume[:, center[1]], volume[:, :, center[2]])
        for column, (image, plane) in enumerate(zip(slices, PLANES, strict=True)):
            axis = axes[row][column]
            axis.imshow(np.rot90(image), cmap="gray", vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(plane, fontsize=9)
            if column == 0:
                axis.set_ylabel(label, fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=80)
    plt.close(figure)
    return out_png
