"""Stage `preprocess`: every manifest volume onto the canonical grid, normalised.

    python -m stages.preprocess --manifest data/ingested/manifest.csv --data data/raw \
        --out data/preprocessed
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from voxelflow.atomic import atomic_dir, save_npy, write_csv, write_json
from voxelflow.dataset import INDEX, SPEC, read_rows
from voxelflow.nifti import VolumeError, load_volume
from voxelflow.params import Params, PreprocessParams, load_params
from voxelflow.preprocess import PreprocessSpec, preprocess_volume
from voxelflow.runtime import map_items, setup_logging

log = logging.getLogger("voxelflow.stages.preprocess")

OUTPUTS = ("arrays", INDEX, SPEC, "rejected.csv")


def spec_from_params(params: PreprocessParams) -> PreprocessSpec:
    return PreprocessSpec(
        target_spacing_mm=tuple(params.target_spacing_mm),
        target_shape=tuple(params.target_shape),
        clip_percentiles=tuple(params.clip_percentiles),
        interpolation_order=params.interpolation_order,
    )


def _preprocess_one(job: tuple[dict, str, str, PreprocessSpec]) -> dict:
    row, data_dir, out_dir, spec = job
    try:
        volume = load_volume(Path(data_dir) / row["path"])
        array = preprocess_volume(volume.data, volume.affine, spec)
    except (VolumeError, ValueError) as error:
        return {"input": row["path"], "reason": str(error)}
    relative = f"arrays/{row['id']}.npy"
    save_npy(Path(out_dir) / relative, array)
    return {**row, "array": relative}


def run(
    manifest_csv: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    workers: int = 0,
) -> dict:
    """Preprocesses every volume of the manifest into ``out_dir`` (swapped in atomically)."""
    rows = read_rows(manifest_csv)
    spec = spec_from_params(params.preprocess)
    report_path = Path(manifest_csv).with_name("ingest_report.json")
    classes = json.loads(report_path.read_text())["classes"]
    with atomic_dir(out_dir, OUTPUTS) as staging:
        (staging / "arrays").mkdir()
        jobs = [(row, str(data_dir), str(staging), spec) for row in rows]
        results = map_items(_preprocess_one, jobs, workers, "preprocess")
        done = [result for result in results if "array" in result]
        failed = [result for result in results if "array" not in result]
        if not done:
            raise ValueError(f"{manifest_csv}: no volume could be preprocessed")
        write_csv(staging / INDEX, done, list(done[0]))
        write_csv(staging / "rejected.csv", failed, ("input", "reason"))
        write_json(staging / SPEC, {**spec.to_dict(), "classes": classes})
    for item in failed:
        log.warning("preprocess failed for %s: %s", item["input"], item["reason"])
    summary = {"preprocessed": len(done), "failed": len(failed), "shape": list(spec.target_shape)}
    log.info("preprocess: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Preprocess every manifest volume.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--data", required=True, help="the raw data folder the manifest is in")
    parser.add_argument("--out", required=True)
    parser.add_argument("--workers", type=int, default=0, help="0: one process per core")
    args = parser.parse_args(argv)
    setup_logging()
    run(args.manifest, args.data, args.out, load_params(args.params), args.workers)


if __name__ == "__main__":
    main()
