import numpy as np
import tensorflow as tf

from voxelflow.data import VolumeSource, classification_dataset, epoch_order


def test_epoch_order_is_a_permutation_per_epoch_and_deterministic():
    indices, epochs = epoch_order(10, 3, seed=1, purpose="x")
    assert len(indices) == 30
    for epoch in range(3):
        assert sorted(indices[epochs == epoch]) == list(range(10))
    assert not np.array_equal(indices[:10], indices[10:20])
    again, _ = epoch_order(10, 3, seed=1, purpose="x")
    assert np.array_equal(indices, again)


def test_dataset_reads_files_and_shard_rows(tmp_path):
    volumes = np.arange(3 * 8 * 8 * 8, dtype=np.float32).reshape(3, 8, 8, 8)
    np.save(tmp_path / "shard.npy", volumes.astype(np.float16))
    np.save(tmp_path / "single.npy", volumes[0] + 1)
    source = VolumeSource(
        files=[str(tmp_path / "shard.npy")] * 3 + [str(tmp_path / "single.npy")],
        offsets=[0, 1, 2, -1],
        labels=[0, 1, 2, 1],
        ids=["a#0", "a#1", "a#2", "b"],
    )
    batches = list(classification_dataset(source, 2, (8, 8, 8), shuffle=False))
    x = np.concatenate([b[0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    assert x.shape == (4, 8, 8, 8, 1) and y.tolist() == [0, 1, 2, 1]
    assert np.allclose(x[1, ..., 0], volumes[1].astype(np.float16))
    assert np.allclose(x[3, ..., 0], volumes[0] + 1)


def test_online_augmentation_is_fresh_each_epoch_and_reproducible(tmp_path):
    from voxelflow.online import online_dataset
    from voxelflow.params import AugmentParams

    rng = np.random.default_rng(0)
    files = []
    for index in range(3):
        path = tmp_path / f"v{index}.npy"
        np.save(path, rng.normal(size=(8, 8, 8)).astype(np.float32))
        files.append(str(path))
    source = VolumeSource(files, [-1] * 3, [0, 1, 0], ["a", "b", "c"])
    params = AugmentParams(elastic_probability=1.0, noise_probability=1.0)

    def batches(seed):
        dataset = online_dataset(source, 3, (8, 8, 8), params, seed, (1.0, 1.0, 1.0), epochs=2)
        return [(x.numpy(), y.numpy()) for x, y in dataset]

    first, again = batches(5), batches(5)
    assert len(first) == 2 and first[0][0].shape == (3, 8, 8, 8, 1)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    originals = {tuple(np.load(f).ravel()[:4]) for f in files}
    assert not any(tuple(x[..., 0].ravel()[:4]) in originals for x in first[0][0])  # augmented
    # the same volume differs between epochs
    epoch_one = {int(y): x for x, y in zip(first[0][0], first[0][1], strict=True) if y == 1}
    epoch_two = {int(y): x for x, y in zip(first[1][0], first[1][1], strict=True) if y == 1}
    assert not np.allclose(epoch_one[1], epoch_two[1])
    assert not np.array_equal(batches(6)[0][0], first[0][0])


def test_online_epoch_has_the_caches_length_with_distinct_copies_and_the_originals(tmp_path):
    from voxelflow.online import epoch_source, online_dataset
    from voxelflow.params import AugmentParams

    rng = np.random.default_rng(1)
    files = []
    for index in range(2):
        path = tmp_path / f"v{index}.npy"
        np.save(path, rng.normal(size=(8, 8, 8)).astype(np.float32))
        files.append(str(path))
    originals = VolumeSource(files, [-1] * 2, [0, 1], ["a", "b"])
    source = epoch_source(originals, copies=3, include_originals=True)
    assert len(source) == 8 and source.ids == ["a", "b"] * 4
    assert len(epoch_source(originals, copies=3, include_originals=False)) == 6
    params = AugmentParams(elastic_probability=1.0, noise_probability=1.0)
    dataset = online_dataset(
        source,
        8,
        (8, 8, 8),
        params,
        3,
        (1.0, 1.0, 1.0),
        epochs=2,
        originals=2,
        copies=3,
        shuffle=False,
    )
    epochs = [(x.numpy()[..., 0], y.numpy()) for x, y in dataset]
    assert len(epochs) == 2 and epochs[0][0].shape == (8, 8, 8, 8)
    first, second = epochs[0][0], epochs[1][0]
    for volume in range(2):
        original = np.load(files[volume])
        assert np.allclose(first[6 + volume], original)  # the last pass: unaugmented
        copies = [first[k * 2 + volume] for k in range(3)]
        assert not any(np.allclose(copy, original) for copy in copies)
        assert not np.allclose(copies[0], copies[1]) and not np.allclose(copies[1], copies[2])
        assert not np.allclose(first[volume], second[volume])  # redrawn in the next epoch
    assert epochs[0][1].tolist() == [0, 1] * 4


def test_batches_never_straddle_epochs(tmp_path):
    from voxelflow.data import make_dataset

    source = VolumeSource([str(tmp_path / f"{i}") for i in range(10)], [-1] * 10, [0] * 10, [])

    def example(source, index, epoch):
        return np.float32(index), np.int32(epoch)

    signature = (tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.int32))
    dataset = make_dataset(source, 4, example, signature, epochs=3, seed=1, purpose="t")
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    assert [len(x) for x, _ in batches] == [4, 4, 2] * 3  # ceil(10 / 4) batches per epoch
    for number, (_, epochs) in enumerate(batches):
        assert set(epochs) == {number // 3}  # one epoch per batch
    for epoch in range(3):
        seen = np.concatenate([x for x, e in batches if e[0] == epoch])
        assert sorted(seen) == list(range(10))  # every item once per epoch


def test_the_first_batch_splits_evenly_over_the_replicas(tmp_path):
    import pytest

    from voxelflow.data import epoch_batches, make_dataset, steps_per_epoch

    assert epoch_batches(9, 4) == [4, 4, 1]
    assert epoch_batches(9, 4, replicas=2) == [4, 4, 1]  # a last batch may starve a replica
    assert epoch_batches(5, 8, replicas=2) == [4, 1]  # but never the first
    assert epoch_batches(3, 4) == [3]
    assert epoch_batches(6, 8, replicas=2) == [6]
    assert steps_per_epoch(5, 8, replicas=2) == 2
    with pytest.raises(ValueError, match="batch size 6 does not split evenly over 4 replicas"):
        epoch_batches(9, 6, replicas=4)
    with pytest.raises(ValueError, match="3 examples cannot feed 4 replicas"):
        epoch_batches(3, 4, replicas=4)

    def example(source, index, epoch):
        return np.float32(index), np.int32(epoch)

    signature = (tf.TensorSpec((), tf.float32), tf.TensorSpec((), tf.int32))
    for count, expected in ((9, [4, 4, 1]), (5, [4, 1]), (3, [2, 1])):
        source = VolumeSource(
            [str(tmp_path / f"{i}") for i in range(count)], [-1] * count, [0] * count, []
        )
        for shuffle in (True, False):
            dataset = make_dataset(
                source, 4, example, signature, epochs=2, seed=1, shuffle=shuffle, replicas=2
            )
            batches = [(x.numpy(), y.numpy()) for x, y in dataset]
            assert [len(x) for x, _ in batches] == expected * 2
            for number, (_, epochs) in enumerate(batches):
                assert set(epochs) == {number // len(expected)}  # one epoch per batch
            for epoch in range(2):
                seen = np.concatenate([x for x, e in batches if e[0] == epoch])
                assert sorted(seen) == list(range(count))
