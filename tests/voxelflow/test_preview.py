import matplotlib.image
import numpy as np
import pytest
from typer.testing import CliRunner

from voxelflow.cli import app
from voxelflow.nifti import orientation_affine, save_volume
from voxelflow.params import Params
from voxelflow.preview import load_for_preview, preview_copies

runner = CliRunner()


def test_preview_of_a_preprocessed_array_and_of_a_scan(tiny_data, tmp_path):
    array = next((tiny_data["preprocessed"] / "arrays").glob("*.npy"))
    result = runner.invoke(
        app, ["augment-preview", str(array), "--out", str(tmp_path / "p.png"), "--copies", "3"]
    )
    assert result.exit_code == 0, result.output
    image = matplotlib.image.imread(tmp_path / "p.png")
    assert image.shape[0] > image.shape[1]  # four rows of three slices: taller than wide
    scan = tmp_path / "scan.nii.gz"
    data = np.random.default_rng(0).normal(size=(30, 30, 30)).astype(np.float32)
    save_volume(scan, data, orientation_affine("LPS", (2, 2, 2), data.shape, (0, 0, 0)))
    result = runner.invoke(app, ["augment-preview", str(scan), "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_preview_copies_are_the_cache_copies(tiny_data, tiny_params):
    from voxelflow.data import cache_source

    cache = cache_source(tiny_data["augmented"], ["normal", "lesion", "atrophy"])
    identifier, copy = cache.ids[0].split("#")
    array = np.load(tiny_data["preprocessed"] / "arrays" / f"{identifier}.npy")
    spacing = tiny_params.preprocess.target_spacing_mm
    rows = preview_copies(array, identifier, spacing, tiny_params, int(copy) + 1)
    assert rows[0][0] == "original" and len(rows) == int(copy) + 2
    cached = cache.read(0)
    assert np.allclose(rows[-1][1], cached, atol=2e-2)  # the cache stores float16


def test_preview_refuses_auto_params_for_a_raw_scan(tmp_path):
    params = Params()
    params.preprocess.target_shape = "auto"
    scan = tmp_path / "scan.nii"
    save_volume(scan, np.ones((8, 8, 8)), np.eye(4))
    with pytest.raises(ValueError, match="preview a preprocessed array"):
        load_for_preview(scan, params)
