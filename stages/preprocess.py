"""Stage `preprocess`: every manifest volume onto the canonical grid, normalised.

    python -m stages.preprocess --manifest data/ingested/manifest.csv --data data/raw \
        --out data/preprocessed

``auto`` values in the ``preprocess`` params are filled from ``fingerprint.json`` (written
by ingest next to the manifest); ``preprocess.json`` records the values used. Volumes are
processed on a process pool or a Dask cluster (params ``compute``); the arrays come back to
this process, which writes them, so workers need to read the data folder but not write
anywhere, and at most a few volumes are in memory at once.
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
)
from voxelflow.dataset import INDEX, SPEC, read_rows
from voxelflow.fingerprint import resolve_spec
from voxelflow.params import Params, load_params
from voxelflow.preprocess import PreprocessSpec, preprocess_manifest_row
from voxelflow.runtime import (
    add_compute_options,
    code_fingerprint,
    compute_options,
    iter_items,
    stage_process,
)

log = logging.getLogger("voxelflow.stages.preprocess")

OUTPUTS = ("arrays", INDEX, SPEC, "rejected.csv")


def preprocess_row(job: tuple[dict, str, PreprocessSpec]) -> tuple[dict, np.ndarray | None]:
    """One manifest row (a picklable job for the pool): see ``preprocess_manifest_row``."""
    return preprocess_manifest_row(*job)


def read_fingerprint(manifest_csv: Path) -> dict | None:
    path = manifest_csv.with_name("fingerprint.json")
    return json.loads(path.read_text()) if path.is_file() else None


def run(
    manifest_csv: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict:
    """Preprocesses every volume of the manifest into ``out_dir`` (swapped in atomically)."""
    manifest_csv = Path(manifest_csv)
    rows = read_rows(manifest_csv)
    spec, filled = resolve_spec(params.preprocess, read_fingerprint(manifest_csv))
    if filled:
        log.info("preprocess: %s filled from the fingerprint: %s", filled, spec)
    classes = json.loads(manifest_csv.with_name("ingest_report.json").read_text())["classes"]
    workers, dask_address = compute_options(params.compute, workers, dask_address)
    source = str(Path(data_dir).resolve())  # workers may run elsewhere (Dask)
    key = resume_key(
        "preprocess",
        spec.to_dict(),
        classes,
        file_sha256(manifest_csv),
        source,
        code_fingerprint(),
    )
    with atomic_dir(out_dir, OUTPUTS, resume_key=key) as staging:
        (staging / "arrays").mkdir(exist_ok=True)
        journal = Journal(staging)
        finished = journal.finished()  # done by a killed run with the same inputs: kept
        todo = [row for row in rows if row["id"] not in finished]
        if finished:
            log.info("preprocess: resuming; %d of %d volumes done", len(finished), len(rows))
        jobs = ((row, source, spec) for row in todo)
        results = iter_items(preprocess_row, jobs, workers, "preprocess", dask_address)
        for row, (result, array) in zip(todo, results, strict=True):
            if array is None:  # not journalled: a failure may be passing, so retried
                finished[row["id"]] = {"failed": result}
                continue
            relative = f"arrays/{row['id']}.npy"
            save_npy(staging / relative, array)
            journal.record(row["id"], (relative,), done={**result, "array": relative})
            finished[row["id"]] = {"done": {**result, "array": relative}}
        done = [finished[row["id"]]["done"] for row in rows if "done" in finished[row["id"]]]
        failed = [finished[row["id"]]["failed"] for row in rows if "failed" in finished[row["id"]]]
        if not done:
            raise ValueError(f"{manifest_csv}: no volume could be preprocessed")
        write_csv(staging / INDEX, done, list(done[0]))
        write_csv(staging / "rejected.csv", failed, ("input", "reason"))
        write_json(staging / SPEC, {**spec.to_dict(), "classes": classes, "auto_filled": filled})
    for item in failed:
        log.warning("preprocess failed for %s: %s", item["input"], item["reason"])
    summary = {
        "preprocessed": len(done),
        "failed": len(failed),
        "shape": list(spec.target_shape),
        "resumed": len(rows) - len(todo),
    }
    log.info("preprocess: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Preprocess every manifest volume.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--data", required=True, help="the raw data folder the manifest is in")
    parser.add_argument("--out", required=True)
    add_compute_options(parser)
    args = parser.parse_args(argv)
    with stage_process("preprocess"):
        run(
            args.manifest,
            args.data,
            args.out,
            load_params(args.params),
            args.workers,
            args.dask_address,
        )


if __name__ == "__main__":
    main()
