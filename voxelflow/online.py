"""On-the-fly augmentation: the cache's transforms applied while training, fresh each epoch.

The augment-cache stage fixes K copies per volume before training; here every epoch draws
K new copies of every training volume instead (``finetune.augmentation: online``), plus the
originals when the cache mode would read them too, so an epoch has as many steps as the
cache's and the two modes differ only in whether the copies are redrawn. Copy ``k`` of a
volume in epoch ``e`` is drawn from ``(seed, "online", id, e, k)``, so a rerun feeds the
model the same augmented batches; the transforms run inside ``tf.data``'s parallel map (the
resampling kernel releases the GIL), overlapped with training by prefetching.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from voxelflow.augment import apply_transform, sample_transform
from voxelflow.data import VolumeSource, make_dataset
from voxelflow.params import AugmentParams
from voxelflow.seeding import rng_for


def epoch_source(originals: VolumeSource, copies: int, include_originals: bool) -> VolumeSource:
    """The originals listed ``copies`` times (and once more with ``include_originals``): an
    epoch as long as the augment cache's (``augment.copies`` is at least 1). Entry
    ``k * len(originals) + i`` is copy ``k`` of volume ``i``; the pass after the last copy
    stays unaugmented."""
    source = originals
    for _ in range(copies + (1 if include_originals else 0) - 1):
        source = source.extend(originals)
    return source


def augmented_example(
    params: AugmentParams,
    seed: int,
    spacing_mm: tuple[float, float, float],
    originals: int | None = None,
    copies: int | None = None,
) -> Callable[[VolumeSource, int, int], tuple[np.ndarray, np.ndarray]]:
    """``make_example`` for :func:`voxelflow.data.make_dataset`: fresh copies every epoch.

    For a source made by :func:`epoch_source`, ``originals`` is the number of distinct
    volumes and ``copies`` the augmented passes (index ``k * originals + i`` is copy ``k``;
    ``k >= copies`` is the unaugmented original); left out, every entry is copy 0."""

    def example(source: VolumeSource, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        copy = index // originals if originals else 0
        volume = source.read(index)
        if copies is None or copy < copies:
            rng = rng_for(seed, "online", source.ids[index], epoch, copy)
            volume = apply_transform(volume, sample_transform(rng, params, spacing_mm))
        return volume[..., None], np.int32(source.labels[index])

    return example


def online_dataset(
    source: VolumeSource,
    batch_size: int,
    shape: tuple[int, int, int],
    params: AugmentParams,
    seed: int,
    spacing_mm: tuple[float, float, float],
    epochs: int,
    purpose: str = "finetune",
    originals: int | None = None,
    copies: int | None = None,
    **options,
) -> tf.data.Dataset:
    """Batches of freshly augmented training volumes with their labels, for ``epochs``;
    ``originals`` and ``copies`` describe a source made by :func:`epoch_source` (see
    :func:`augmented_example`); ``options`` go to :func:`voxelflow.data.make_dataset`
    (replicas, start_epoch, weights)."""
    signature = (tf.TensorSpec((*shape, 1), tf.float32), tf.TensorSpec((), tf.int32))
    example = augmented_example(params, seed, spacing_mm, originals, copies)
    return make_dataset(
        source,
        batch_size,
        example,
        signature,
        epochs=epochs,
        seed=seed,
        purpose=purpose,
        **options,
    )
