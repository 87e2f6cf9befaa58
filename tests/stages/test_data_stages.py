"""synth -> ingest -> preprocess -> augment-cache on the tiny dataset (built once in conftest)."""

import json

import numpy as np

from stages import augment_cache
from voxelflow.augment import Transform, apply_transform
from voxelflow.dataset import load_array, read_index, read_rows, read_spec


def test_synth_writes_labels_and_unlabelled(tiny_data, tiny_params):
    rows = read_rows(tiny_data["raw"] / "labels.csv")
    assert {row["label"] for row in rows} == set(tiny_params.synth.classes)
    assert len({row["subject"] for row in rows}) == 12
    assert len(list((tiny_data["raw"] / "unlabelled").iterdir())) == 3
    assert (tiny_data["raw"] / "truth.jsonl").is_file()


def test_ingest_accepts_all_synthetic_scans(tiny_data):
    manifest = read_rows(tiny_data["ingested"] / "manifest.csv")
    assert read_rows(tiny_data["ingested"] / "rejected.csv") == []
    assert {row["split"] for row in manifest} == {"train", "val", "test", "unlabelled"}
    report = json.loads((tiny_data["ingested"] / "ingest_report.json").read_text())
    assert report["classes"] == ["normal", "lesion", "atrophy"]
    for split in ("train", "val", "test"):
        assert set(report["per_split"][split]) == {"normal", "lesion", "atrophy"}


def test_preprocess_writes_canonical_arrays(tiny_data, tiny_params):
    rows = read_index(tiny_data["preprocessed"])
    manifest = read_rows(tiny_data["ingested"] / "manifest.csv")
    assert len(rows) == len(manifest)
    spec = read_spec(tiny_data["preprocessed"])
    assert spec.target_shape == (16, 16, 16) and spec.orientation == "RAS"
    for row in rows:
        array = load_array(tiny_data["preprocessed"], row)
        assert array.shape == (16, 16, 16) and array.dtype == np.float32
        assert np.isfinite(array).all() and 0.5 < array.std() < 2.0


def test_augment_cache_copies_provenance_and_replay(tiny_data, tiny_params):
    cache = tiny_data["augmented"]
    info = json.loads((cache / "cache.json").read_text())
    train = read_index(tiny_data["preprocessed"], ("train",))
    assert info["copies"] == len(train) * tiny_params.augment.copies
    index = read_rows(cache / "index.csv")
    records = [json.loads(line) for line in (cache / "provenance.jsonl").read_text().splitlines()]
    assert len(index) == len(records) == info["copies"]
    shards = sorted((cache / "shards").glob("*.npy"))
    assert sum(np.load(shard, mmap_mode="r").shape[0] for shard in shards) == info["copies"]
    # replay one copy from its recorded parameters
    entry, record = index[3], records[3]
    row = next(r for r in train if r["id"] == entry["id"])
    replay = apply_transform(
        load_array(tiny_data["preprocessed"], row), Transform.from_dict(record["transform"])
    )
    stored = np.load(cache / "shards" / f"shard-{int(entry['shard']):05d}.npy", mmap_mode="r")[
        int(entry["offset"])
    ]
    assert np.allclose(stored, replay.astype(np.float16).astype(np.float32), atol=1e-2)
    assert not np.allclose(stored, load_array(tiny_data["preprocessed"], row), atol=1e-2)


def test_augment_cache_is_byte_identical_in_any_worker_count(tiny_data, tiny_params, tmp_path):
    augment_cache.run(tiny_data["preprocessed"], tmp_path / "two", tiny_params, workers=2)
    for name in ("index.csv", "provenance.jsonl", "cache.json"):
        assert (tmp_path / "two" / name).read_bytes() == (
            tiny_data["augmented"] / name
        ).read_bytes()
    for shard in (tiny_data["augmented"] / "shards").glob("*.npy"):
        assert (tmp_path / "two" / "shards" / shard.name).read_bytes() == shard.read_bytes()
