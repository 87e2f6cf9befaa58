"""The trivial baseline of the default dataset: a logistic regression on global intensity
statistics (mean, std, percentiles) of every preprocessed labelled volume, 5-fold CV
grouped by subject.

    .venv/bin/python benchmarks/global_stats_baseline.py [data/preprocessed]

Run it after `make demo`; it prints the balanced accuracy (chance is 1 / number of classes).
"""

from __future__ import annotations

import sys

import numpy as np

from voxelflow.baselines import global_intensity_features, global_stats_baseline
from voxelflow.dataset import class_names, load_array, read_index


def main(directory: str = "data/preprocessed") -> None:
    rows = read_index(directory, ("train", "val", "test"))
    features = np.array([global_intensity_features(load_array(directory, row)) for row in rows])
    labels = np.array([row["label"] for row in rows])
    subjects = np.array([row["subject"] for row in rows])
    score = global_stats_baseline(features, labels, groups=subjects)
    classes = class_names(directory)
    print(
        f"global-statistics logistic regression: balanced accuracy {score:.3f} "
        f"over {len(rows)} volumes, {len(classes)} classes (chance {1 / len(classes):.3f})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
