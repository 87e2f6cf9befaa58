"""Stage `synth`: writes the embedded default dataset (NIfTI phantoms + labels.csv).

python -m stages.synth --params params.yaml --out data/raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

from voxelflow.params import Params, load_params
from voxelflow.runtime import stage_process
from voxelflow.synthdata import write_dataset


def run(out_dir: str | Path, params: Params, workers: int | None = None) -> dict:
    """Writes the default dataset into ``out_dir``; returns its counts."""
    return write_dataset(out_dir, params, params.compute.workers if workers is None else workers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the embedded default dataset.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--workers", type=int, default=None, help="processes; 0: every core [params: compute]"
    )
    args = parser.parse_args(argv)
    with stage_process("synth"):
        run(args.out, load_params(args.params), args.workers)


if __name__ == "__main__":
    main()
