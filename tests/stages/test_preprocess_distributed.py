"""Preprocess gives byte-identical outputs inline, on a process pool and on a Dask cluster."""

import filecmp
import json

import pytest

from stages import preprocess
from voxelflow.dataset import read_rows


def _same_tree(left, right):
    names = sorted(path.relative_to(left) for path in left.rglob("*") if path.is_file())
    assert names == sorted(path.relative_to(right) for path in right.rglob("*") if path.is_file())
    for name in names:
        assert filecmp.cmp(left / name, right / name, shallow=False), name


def test_pool_and_dask_cluster_give_byte_identical_outputs(tiny_data, tiny_params, tmp_path):
    distributed = pytest.importorskip("distributed")
    manifest = tiny_data["ingested"] / "manifest.csv"
    preprocess.run(manifest, tiny_data["raw"], tmp_path / "pool", tiny_params, workers=2)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        preprocess.run(
            manifest,
            tiny_data["raw"],
            tmp_path / "dask",
            tiny_params,
            dask_address=cluster.scheduler_address,
        )
    _same_tree(tmp_path / "pool", tmp_path / "dask")
    _same_tree(tiny_data["preprocessed"], tmp_path / "pool")  # and the inline run
    assert len(read_rows(tmp_path / "dask" / "index.csv")) == len(read_rows(manifest))


def test_auto_params_are_filled_from_the_fingerprint(tiny_data, tiny_params, tmp_path):
    params = tiny_params.model_copy(deep=True)
    params.preprocess.target_spacing_mm = "auto"
    params.preprocess.target_shape = "auto"
    params.preprocess.max_auto_shape = 24
    params.preprocess.normalization = "window"
    manifest = tiny_data["ingested"] / "manifest.csv"
    preprocess.run(manifest, tiny_data["raw"], tmp_path / "auto", params, workers=1)
    written = json.loads((tmp_path / "auto" / "preprocess.json").read_text())
    fingerprint = json.loads((tiny_data["ingested"] / "fingerprint.json").read_text())
    assert written["auto_filled"] == ["target_spacing_mm", "target_shape", "window"]
    assert written["target_spacing_mm"] == fingerprint["spacing_mm"]["median"]
    assert all(size % 8 == 0 and 8 <= size <= 24 for size in written["target_shape"])
    intensity = fingerprint["foreground_intensity"]
    assert written["window"] == [intensity["p0.5"], intensity["p99.5"]]


def test_preprocess_reads_a_volume_as_ingest_accepted_it(tmp_path):
    import nibabel as nib
    import numpy as np

    from voxelflow.preprocess import PreprocessSpec

    series = np.random.default_rng(0).normal(10, 1, (10, 10, 10, 3)).astype(np.float32)
    series[2, 2, 2, 1] = np.nan
    nib.save(nib.Nifti1Image(series, np.eye(4)), str(tmp_path / "series.nii.gz"))
    spec = PreprocessSpec((1.0,) * 3, (8,) * 3, (0.5, 99.9), 1)
    row = {"id": "s", "path": "series.nii.gz", "volume_index": "1", "repaired": "1"}
    kept, array = preprocess.preprocess_row((row, str(tmp_path), spec))
    assert kept is row and array.shape == (8, 8, 8) and np.isfinite(array).all()
    other, array = preprocess.preprocess_row((row | {"volume_index": "2"}, str(tmp_path), spec))
    assert array is not None  # volume 2 has no NaN
    refused, array = preprocess.preprocess_row((row | {"repaired": "0"}, str(tmp_path), spec))
    assert array is None and "1 of 1000 voxels are NaN" in refused["reason"]
    refused, _ = preprocess.preprocess_row((row | {"volume_index": ""}, str(tmp_path), spec))
    assert "a 4D series of 3 volumes" in refused["reason"]
