"""Stage `ingest`: validate the raw folder and its labels table into a manifest.

python -m stages.ingest --data data/raw --labels data/raw/labels.csv --out data/ingested
"""

from __future__ import annotations

import argparse
from pathlib import Path

from voxelflow.ingest import ingest_folder
from voxelflow.params import Params, load_params
from voxelflow.runtime import add_compute_options, compute_options, stage_process


def run(
    data_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    params: Params,
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict:
    """Writes manifest.csv, rejected.csv, ingest_report.json and fingerprint.json."""
    workers, dask_address = compute_options(params.compute, workers, dask_address)
    return ingest_folder(
        data_dir, labels_csv, out_dir, params.ingest, params.seed, workers, dask_address
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Validate a data folder and its labels table.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--out", required=True)
    add_compute_options(parser)
    args = parser.parse_args(argv)
    with stage_process("ingest"):
        run(
            args.data,
            args.labels,
            args.out,
            load_params(args.params),
            args.workers,
            args.dask_address,
        )


if __name__ == "__main__":
    main()
