import numpy as np

from voxelflow.dataset import read_rows
from voxelflow.nifti import load_volume
from voxelflow.params import parse_params
from voxelflow.synthdata import plan_scans, write_dataset


def test_plan_has_rescans_unlabelled_and_balanced_classes():
    params = parse_params(
        {"synth": {"subjects_per_class": 10, "rescan_fraction": 0.5, "unlabelled": 4}}
    )
    scans = plan_scans(params.synth, params.seed)
    labelled = [scan for scan in scans if not scan.relative_path.startswith("unlabelled/")]
    subjects = {scan.subject for scan in labelled}
    assert len(subjects) == 30
    assert len(labelled) > 30  # some subjects scanned twice
    assert sum(scan.relative_path.startswith("unlabelled/") for scan in scans) == 4
    counts = {
        label: sum(scan.label == label for scan in labelled if scan.scan_id.endswith("ses-1"))
        for label in params.synth.classes
    }
    assert set(counts.values()) == {10}
    assert {scan.dtype for scan in scans} == {"int16", "float32"}


def test_written_dataset_is_varied_and_deterministic(tmp_path, tiny_params):
    first = write_dataset(tmp_path / "a", tiny_params, workers=1)
    write_dataset(tmp_path / "b", tiny_params, workers=1)
    rows = read_rows(tmp_path / "a" / "labels.csv")
    assert len(rows) == first["labelled_scans"]
    assert set(rows[0]) == {"id", "path", "label", "subject"}
    orientations, spacings = set(), set()
    for row in rows:
        a = (tmp_path / "a" / row["path"]).read_bytes()
        b = (tmp_path / "b" / row["path"]).read_bytes()
        assert a == b  # byte-identical, gzip time stamps included
        volume = load_volume(tmp_path / "a" / row["path"])
        assert np.array_equal(volume.data, load_volume(tmp_path / "b" / row["path"]).data)
        orientations.add(volume.orientation)
        spacings.add(tuple(round(s, 2) for s in volume.spacing))
    assert len(orientations) > 2 and len(spacings) > 2
    assert any(len(set(spacing)) > 1 for spacing in spacings)  # anisotropic voxels


def test_global_intensity_statistics_stay_near_chance(tmp_path):
    """A logistic regression on global intensity statistics must not solve the task."""
    from voxelflow.baselines import global_intensity_features, global_stats_baseline
    from voxelflow.preprocess import PreprocessSpec, preprocess_volume

    # the default dataset's size (180 subjects, some scanned twice), another seed
    params = parse_params({"seed": 11, "synth": {"unlabelled": 0}})
    write_dataset(tmp_path, params)
    spec = PreprocessSpec((2.0, 2.0, 2.0), (32, 32, 32), (0.5, 99.9), 1)
    preprocessed, raw, labels, subjects = [], [], [], []
    for row in read_rows(tmp_path / "labels.csv"):
        volume = load_volume(tmp_path / row["path"])
        preprocessed.append(
            global_intensity_features(preprocess_volume(volume.data, volume.affine, spec))
        )
        raw.append(global_intensity_features(volume.data / np.percentile(volume.data, 99)))
        labels.append(row["label"])
        subjects.append(row["subject"])
    for name, features in (("preprocessed", preprocessed), ("raw", raw)):
        score = global_stats_baseline(np.array(features), np.array(labels), np.array(subjects))
        assert score < 0.5, f"global statistics of {name} volumes separate the classes: {score:.2f}"
