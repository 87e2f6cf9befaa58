import json

import numpy as np
import pytest

from tests.benchmarks import load_benchmark
from voxelflow.params import parse_params
from voxelflow.preprocess import PreprocessSpec
from voxelflow.synthdata import write_dataset


def _module():
    return load_benchmark("lesion_signal")


def test_blob_score_finds_a_small_bright_spot_in_noise():
    signal = _module()
    rng = np.random.default_rng(0)
    plain = rng.normal(0, 0.1, size=(24, 24, 24))
    spotted = plain.copy()
    grid = np.indices(plain.shape) - np.array([12, 9, 14])[:, None, None, None]
    spotted[(grid**2).sum(axis=0) <= 2**2] += 1.0
    assert signal.blob_score(spotted) > signal.blob_score(plain) + 0.3


def _table(tmp_path, capsys, **synth) -> dict:
    tmp_path.mkdir()
    signal = _module()
    params = parse_params(
        {
            "seed": 5,
            "synth": {
                "classes": ["normal", "lesion"],
                "subjects_per_class": 8,
                "rescan_fraction": 0.0,
                "unlabelled": 0,
                **synth,
            },
        }
    )
    write_dataset(tmp_path / "raw", params, workers=1)
    spec_dir = tmp_path / "preprocessed"
    spec_dir.mkdir()
    spec = PreprocessSpec((2.0, 2.0, 2.0), (32, 32, 32), (0.5, 99.9), 1)
    (spec_dir / "preprocess.json").write_text(json.dumps(spec.to_dict()))
    signal.main([str(tmp_path / "raw"), "--spec", str(spec_dir)])
    out = capsys.readouterr().out
    assert "8 lesion and 8 normal volumes" in out
    lines = out.splitlines()
    rows = [line.split("|")[1:-1] for line in lines if line.startswith(("| 99", "| 100"))]
    assert [row[0].strip() for row in rows] == ["99.5", "99.9", "99.99", "100"]
    return {row[0].strip(): (float(row[1]), float(row[2])) for row in rows}


def test_table_scores_lesion_against_normal_for_each_upper_clip(tmp_path, capsys):
    # synth v1 (no distractors): unclipped, the lesions are the brightest voxels
    v1 = _table(
        tmp_path / "v1",
        capsys,
        scalp_intensity=[0.35, 0.5],
        lesion_edema=[0.0, 0.0],
        vessels=[0, 0],
        choroid_plexus=False,
    )
    assert v1["100"][0] >= 0.9 and v1["100"][1] >= 0.9
    # the default dataset: scalp, vessels and choroid plexus are as bright in every class
    v2 = _table(tmp_path / "v2", capsys)
    assert v2["100"][0] <= 0.8 and v2["99.9"][0] <= 0.8


def test_refuses_a_table_without_normal_or_lesion_rows(tmp_path):
    signal = _module()
    (tmp_path / "labels.csv").write_text("id,path,label,subject\na,a.nii.gz,atrophy,s1\n")
    spec_dir = tmp_path / "preprocessed"
    spec_dir.mkdir()
    spec = PreprocessSpec((2.0, 2.0, 2.0), (32, 32, 32), (0.5, 99.9), 1)
    (spec_dir / "preprocess.json").write_text(json.dumps(spec.to_dict()))
    with pytest.raises(SystemExit, match="no 'normal' or 'lesion' rows"):
        signal.main([str(tmp_path), "--spec", str(spec_dir)])
