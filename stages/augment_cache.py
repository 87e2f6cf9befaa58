"""Stage `augment-cache`: K augmented copies of every training volume, in streamable shards.

    python -m stages.augment_cache --preprocessed data/preprocessed --out data/augmented

Layout of the output folder:
    shards/shard-NNNNN.npy   float16 arrays (copies, *shape), memory-mappable
    index.csv                shard, offset, id, copy, label of every copy
    provenance.jsonl         the seed keys and sampled transform of every copy (replayable)
    cache.json               shape, dtype, counts and classes
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from voxelflow.atomic import (
    Journal,
    atomic_dir,
    file_sha256,
    resume_key,
    save_npy,
    write_csv,
    write_json,
    write_text,
)
from voxelflow.augment import apply_transform, sample_transform
from voxelflow.dataset import INDEX, SPEC, class_names, load_array, read_index, read_spec
from voxelflow.params import AugmentParams, Params, load_params
from voxelflow.runtime import (
    add_compute_options,
    code_fingerprint,
    compute_options,
    iter_items,
    stage_process,
)
from voxelflow.seeding import rng_for

log = logging.getLogger("voxelflow.stages.augment_cache")

INDEX_COLUMNS = ("shard", "offset", "id", "copy", "label")
OUTPUTS = ("shards", "index.csv", "provenance.jsonl", "cache.json")
CACHE_DTYPE = "float16"


def augment_copies(
    job: tuple[dict, str, AugmentParams, int, tuple],
) -> list[tuple[dict, np.ndarray]]:
    """All copies of one volume; copy k is a pure function of (seed, id, k)."""
    row, preprocessed_dir, params, seed, spacing = job
    volume = load_array(preprocessed_dir, row)
    copies = []
    for copy in range(params.copies):
        transform = sample_transform(rng_for(seed, "augment", row["id"], copy), params, spacing)
        record = {
            "id": row["id"],
            "copy": copy,
            "label": row["label"],
            "seed_keys": [seed, "augment", row["id"], copy],
            "transform": transform.to_dict(),
        }
        copies.append((record, apply_transform(volume, transform).astype(CACHE_DTYPE)))
    return copies


def run(
    preprocessed_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict:
    """Writes the augmented cache of the training split into ``out_dir`` (atomically)."""
    workers, dask_address = compute_options(params.compute, workers, dask_address)
    rows = read_index(preprocessed_dir, ("train",))
    if not rows:
        raise ValueError(f"{preprocessed_dir}: the training split is empty; nothing to augment")
    spec = read_spec(preprocessed_dir)
    augment = params.augment
    jobs = [
        (row, str(preprocessed_dir), augment, params.seed, spec.target_spacing_mm) for row in rows
    ]
    key = resume_key(
        "augment-cache",
        augment.model_dump(mode="json"),
        params.seed,
        file_sha256(Path(preprocessed_dir) / INDEX),
        file_sha256(Path(preprocessed_dir) / SPEC),
        code_fingerprint(),  # also stands for the arrays: same index and spec, same code
    )
    with atomic_dir(out_dir, OUTPUTS, resume_key=key) as staging:
        (staging / "shards").mkdir(exist_ok=True)
        journal = Journal(staging)
        finished = journal.finished()
        index, records = [], []
        shard = 0
        while (name := f"shard-{shard:05d}") in finished:  # what a killed run completed
            index += finished[name]["index"]
            records += finished[name]["provenance"]
            shard += 1
        # Copies are a pure function of (seed, id, copy): restart at the volume whose copies
        # the last finished shard cut, and drop the ones it holds.
        skip_volumes, skip_copies = divmod(len(index), augment.copies)
        if shard:
            log.info("augment-cache: resuming after %d finished shards", shard)
        buffer, shard_index, shard_records = [], [], []

        def flush() -> None:
            nonlocal shard, buffer, shard_index, shard_records
            if buffer:
                name = f"shard-{shard:05d}"
                save_npy(staging / "shards" / f"{name}.npy", np.stack(buffer))
                journal.record(
                    name, (f"shards/{name}.npy",), index=shard_index, provenance=shard_records
                )
                index.extend(shard_index)
                records.extend(shard_records)
                shard, buffer, shard_index, shard_records = shard + 1, [], [], []

        remaining = jobs[skip_volumes:]
        results = iter_items(augment_copies, remaining, workers, "augment-cache", dask_address)
        for number, copies in enumerate(results):
            for record, array in copies[skip_copies if number == 0 else 0 :]:
                shard_index.append(
                    {
                        "shard": shard,
                        "offset": len(buffer),
                        "id": record["id"],
                        "copy": record["copy"],
                        "label": record["label"],
                    }
                )
                shard_records.append(record)
                buffer.append(array)
                if len(buffer) == augment.shard_size:
                    flush()
        flush()
        write_text(
            staging / "provenance.jsonl", "".join(json.dumps(item) + "\n" for item in records)
        )
        write_csv(staging / "index.csv", index, INDEX_COLUMNS)
        disk = sum(path.stat().st_size for path in (staging / "shards").glob("*.npy"))
        summary = {
            "volumes": len(rows),
            "copies": len(index),
            "shards": shard,
            "shape": list(spec.target_shape),
            "dtype": CACHE_DTYPE,
            "classes": class_names(preprocessed_dir),
            "disk_bytes": disk,
            "disk_mib": round(disk / 2**20, 2),
        }
        write_json(staging / "cache.json", summary)
    log.info("augment-cache: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the augmented cache of the train split.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--out", required=True)
    add_compute_options(parser)
    args = parser.parse_args(argv)
    with stage_process("augment-cache"):
        run(args.preprocessed, args.out, load_params(args.params), args.workers, args.dask_address)


if __name__ == "__main__":
    main()
