"""How much of the lesion class's signal survives preprocessing: two fixed, unlearned
detectors of a focal bright spot, scored lesion against normal on every labelled volume of
a dataset in the synth layout (labels.csv + NIfTI files), for several upper clipping
percentiles of ``preprocess.clip_percentiles``.

    .venv/bin/python benchmarks/lesion_signal.py [data/raw] [--spec data/preprocessed]

- ``max``: the brightest voxel of the preprocessed volume (a purely global statistic);
- ``blob``: the largest difference of Gaussians (sigma 0.8 minus 3 voxels), a local
  contrast detector that a one-filter CNN could learn.

Each is an ROC AUC (lesion positive, normal negative; atrophy volumes left out). Nothing is
trained, so every volume is scored; it bounds what preprocessing leaves for a model to
find, it does not select anything. Run it after `make demo` (or on any ablation workspace).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from scipy import ndimage

from voxelflow.dataset import read_rows, read_spec
from voxelflow.metrics import auc_ovr
from voxelflow.nifti import load_volume
from voxelflow.preprocess import normalize, resample

UPPER = (99.5, 99.9, 99.99, 100.0)


def blob_score(volume: np.ndarray) -> float:
    """The strongest local bright spot: the maximum of a difference of Gaussians."""
    volume = np.asarray(volume, dtype=np.float64)
    fine, coarse = ndimage.gaussian_filter(volume, 0.8), ndimage.gaussian_filter(volume, 3.0)
    return float((fine - coarse).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", nargs="?", default="data/raw")
    parser.add_argument(
        "--spec", default="data/preprocessed", help="the preprocessed folder whose spec to use"
    )
    args = parser.parse_args(argv)
    base = read_spec(args.spec)
    rows = [
        row
        for row in read_rows(Path(args.raw) / "labels.csv")
        if row.get("label") in ("normal", "lesion")
    ]
    if not rows:
        raise SystemExit(f"{args.raw}/labels.csv: no 'normal' or 'lesion' rows to score")
    # resampling does not depend on the clip: once per volume, then normalised per clip
    resampled = []
    for row in rows:
        volume = load_volume(Path(args.raw) / row["path"])
        resampled.append(resample(np.asarray(volume.data, dtype=np.float32), volume.affine, base))
    positive = np.array([row["label"] == "lesion" for row in rows])
    print(
        f"{int(positive.sum())} lesion and {int((~positive).sum())} normal volumes of "
        f"{args.raw}, preprocessed as {args.spec} was but for the upper clip "
        f"(there: {base.clip_percentiles[1]:g}); ROC AUC, lesion against normal:\n"
    )
    print("| upper clip percentile | max AUC | blob AUC |")
    print("|---|---|---|")
    for upper in UPPER:
        spec = dataclasses.replace(base, clip_percentiles=(base.clip_percentiles[0], upper))
        arrays = [normalize(array, spec) for array in resampled]
        peak = auc_ovr(positive, np.array([array.max() for array in arrays]))
        blob = auc_ovr(positive, np.array([blob_score(array) for array in arrays]))
        print(f"| {upper:g} | {peak:.3f} | {blob:.3f} |")


if __name__ == "__main__":
    main()
