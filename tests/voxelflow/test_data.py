import numpy as np

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
