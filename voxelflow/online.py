"""On-the-fly augmentation: the cache's transforms applied while training, fresh each epoch.

The augment-cache stage fixes K copies per volume before training; here every epoch sees a
new copy of every training volume instead (``finetune.augmentation: online``). Copy
``(volume id, epoch)`` is drawn from ``(seed, "online", id, epoch)``, so a rerun feeds the
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


def augmented_example(
    params: AugmentParams, seed: int, spacing_mm: tuple[float, float, float]
) -> Callable[[VolumeSource, int, int], tuple[np.ndarray, np.ndarray]]:
    """``make_example`` for :func:`voxelflow.data.make_dataset`: a fresh copy per epoch."""

    def example(source: VolumeSource, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        transform = sample_transform(
            rng_for(seed, "online", source.ids[index], epoch), params, spacing_mm
        )
        volume = apply_transform(source.read(index), transform)
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
    **options,
) -> tf.data.Dataset:
    """Batches of freshly augmented training volumes with their labels, for ``epochs``;
    ``options`` go to :func:`voxelflow.data.make_dataset` (replicas, start_epoch, weights)."""
    signature = (tf.TensorSpec((*shape, 1), tf.float32), tf.TensorSpec((), tf.int32))
    example = augmented_example(params, seed, spacing_mm)
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
