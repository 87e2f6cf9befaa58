"""tf.data input pipelines over preprocessed arrays and the augmented cache.

A pipeline is a list of items (a ``.npy`` file, and an offset into it for cache shards, which
are memory-mapped) read in a deterministic order: each epoch's permutation comes from
(seed, purpose, epoch), so two runs feed the model the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from voxelflow.dataset import load_npy, read_index, read_rows
from voxelflow.seeding import rng_for


@dataclass
class VolumeSource:
    """Volumes to read: ``files[i]`` (``offsets[i]`` >= 0 selects a row of a shard)."""

    files: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    _maps: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.files)

    def extend(self, other: VolumeSource) -> VolumeSource:
        return VolumeSource(
            self.files + other.files,
            self.offsets + other.offsets,
            self.labels + other.labels,
            self.ids + other.ids,
        )

    def read(self, index: int) -> np.ndarray:
        """Volume ``index`` as float32 (depth, height, width)."""
        file, offset = self.files[index], self.offsets[index]
        if offset < 0:
            return load_npy(file).astype(np.float32)
        if file not in self._maps:
            self._maps[file] = load_npy(file, mmap=True)
        return np.asarray(self._maps[file][offset], dtype=np.float32)


def label_index(label: str, classes: list[str], where: str) -> int:
    if label not in classes:
        raise ValueError(f"{where}: label {label!r} is not one of the classes {classes}")
    return classes.index(label)


def preprocessed_source(
    directory: str | Path, splits: tuple[str, ...], classes: list[str] | None
) -> VolumeSource:
    """Preprocessed volumes of the given splits (labels -1 when ``classes`` is None)."""
    directory = Path(directory)
    rows = read_index(directory, splits)
    return VolumeSource(
        files=[str(directory / row["array"]) for row in rows],
        offsets=[-1] * len(rows),
        labels=[label_index(row["label"], classes, row["id"]) if classes else -1 for row in rows],
        ids=[row["id"] for row in rows],
    )


def cache_source(directory: str | Path, classes: list[str]) -> VolumeSource:
    """Every copy in the augmented cache, read from its memory-mapped shard."""
    directory = Path(directory)
    rows = read_rows(directory / "index.csv")
    return VolumeSource(
        files=[str(directory / "shards" / f"shard-{int(row['shard']):05d}.npy") for row in rows],
        offsets=[int(row["offset"]) for row in rows],
        labels=[
            label_index(row["label"], classes, f"{row['id']} copy {row['copy']}") for row in rows
        ],
        ids=[f"{row['id']}#{row['copy']}" for row in rows],
    )


def epoch_order(count: int, epochs: int, seed: int, purpose: str) -> tuple[np.ndarray, np.ndarray]:
    """(item index, epoch) pairs: a fresh permutation of the items for each epoch."""
    order = [rng_for(seed, purpose, "order", epoch).permutation(count) for epoch in range(epochs)]
    epochs_column = [np.full(count, epoch) for epoch in range(epochs)]
    return np.concatenate(order).astype(np.int64), np.concatenate(epochs_column).astype(np.int64)


def weighted_order(
    weights: np.ndarray, epochs: int, seed: int, purpose: str
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`epoch_order`, but each epoch draws ``len(weights)`` examples with
    replacement, with probabilities proportional to ``weights``; reproducible per epoch."""
    weights = np.asarray(weights, dtype=float)
    probabilities = weights / weights.sum()
    indices, epoch_of = [], []
    for epoch in range(epochs):
        rng = rng_for(seed, "sample", purpose, epoch)
        indices.append(rng.choice(len(weights), size=len(weights), p=probabilities))
        epoch_of.append(np.full(len(weights), epoch))
    return np.concatenate(indices), np.concatenate(epoch_of)


def balanced_weights(labels: list[int]) -> np.ndarray:
    """Per-example weights that make every class equally likely in a weighted epoch."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


def epoch_batches(count: int, batch_size: int, replicas: int = 1) -> list[int]:
    """The batch sizes of one epoch of ``count`` examples: full batches, then the rest.

    With several replicas every batch is split between them, and under a distribution
    strategy Keras averages the first batch over the replicas to build the model's metrics,
    which fails unless it splits evenly. So ``batch_size`` must be a multiple of
    ``replicas``, and an epoch shorter than one batch is cut where it splits evenly, the
    few examples left over making a last, smaller batch. A last batch smaller than the
    number of replicas leaves some of them an empty batch, which training handles (not
    TensorFlow's oneDNN CPU convolutions: see voxelflow.devices).
    """
    if replicas > 1 and batch_size % replicas:
        raise ValueError(
            f"batch size {batch_size} does not split evenly over {replicas} replicas: use a "
            f"multiple of {replicas}"
        )
    if count < replicas:
        raise ValueError(f"{count} examples cannot feed {replicas} replicas")
    first = batch_size if count >= batch_size else count - count % replicas
    sizes = [first] * (count // first)
    if count % first:
        sizes.append(count % first)
    return sizes


def steps_per_epoch(count: int, batch_size: int, replicas: int = 1) -> int:
    """Batches in one epoch of :func:`make_dataset` (``steps_per_epoch`` for Keras)."""
    return len(epoch_batches(count, batch_size, replicas))


def make_dataset(
    source: VolumeSource,
    batch_size: int,
    make_example: Callable[[VolumeSource, int, int], tuple[np.ndarray, np.ndarray]],
    output_signature: tuple[tf.TensorSpec, tf.TensorSpec],
    epochs: int = 1,
    seed: int = 0,
    purpose: str = "",
    shuffle: bool = True,
    replicas: int = 1,
    start_epoch: int = 0,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    """A batched, prefetched dataset of ``make_example(source, index, epoch)`` pairs.

    Batches never straddle two epochs: each epoch is ``ceil(len(source) / batch_size)``
    batches (the last one smaller), so ``steps_per_epoch`` of that size keeps Keras's epochs
    aligned with the data's, and on-the-fly augmentation's copy of epoch ``e`` is seen in
    Keras epoch ``e``. With several ``replicas`` the first batch splits evenly between them
    (:func:`epoch_batches`). ``start_epoch`` leaves out the epochs before it (a resumed run
    gets exactly the batches it would have had). ``weights`` (one per example) sample each
    epoch's ``len(source)`` examples with replacement in proportion to them instead of
    permuting them (a balanced sampler: see :func:`balanced_weights`).
    """
    sizes = epoch_batches(len(source), batch_size, replicas)
    if weights is not None:
        indices, epoch_of = weighted_order(weights, epochs, seed, purpose)
    elif shuffle:
        indices, epoch_of = epoch_order(len(source), epochs, seed, purpose)
    else:
        indices = np.tile(np.arange(len(source)), epochs)
        epoch_of = np.repeat(np.arange(epochs), len(source))
    indices = indices.reshape(epochs, len(source))[start_epoch:]
    epoch_of = epoch_of.reshape(epochs, len(source))[start_epoch:]

    def load(index, epoch):
        return make_example(source, int(index), int(epoch))

    def mapped(index, epoch):
        x, y = tf.numpy_function(load, [index, epoch], [spec.dtype for spec in output_signature])
        x.set_shape(output_signature[0].shape)
        y.set_shape(output_signature[1].shape)
        return x, y

    def one_epoch(index_row, epoch_row):
        dataset = tf.data.Dataset.from_tensor_slices((index_row, epoch_row))
        dataset = dataset.map(mapped, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return dataset.batch(sizes[0])

    dataset = tf.data.Dataset.from_tensor_slices((indices, epoch_of)).flat_map(one_epoch)
    return dataset.prefetch(tf.data.AUTOTUNE)


def labelled_example(source: VolumeSource, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    return source.read(index)[..., None], np.int32(source.labels[index])


def classification_dataset(
    source: VolumeSource, batch_size: int, shape, **kwargs
) -> tf.data.Dataset:
    signature = (tf.TensorSpec((*shape, 1), tf.float32), tf.TensorSpec((), tf.int32))
    return make_dataset(source, batch_size, labelled_example, signature, **kwargs)


def one_hot(num_classes: int):
    """A ``Dataset.map`` function: (volume, class index) -> (volume, one-hot label)."""

    def convert(volume, label):
        return volume, tf.one_hot(label, num_classes)

    return convert
