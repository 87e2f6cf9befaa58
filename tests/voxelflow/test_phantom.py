import numpy as np
import pytest

from voxelflow import phantom
from voxelflow.seeding import rng_for


def _render(label: str, seed: int = 0):
    anatomy = phantom.sample_anatomy(rng_for(seed, "anatomy"), label)
    scan = phantom.sample_scan(rng_for(seed, "scan"), 64.0, (1.0, 1.4), 0.0, 0.0)
    return anatomy, scan, *phantom.render(anatomy, scan, rng_for(seed, "noise"))


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown phantom class 'tumour'"):
        phantom.sample_anatomy(np.random.default_rng(0), "tumour")


def test_render_matches_scan_grid_and_spacing():
    anatomy, scan, data, affine = _render("normal")
    assert data.shape == scan.shape
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), scan.spacing_mm)
    assert data.dtype == np.float32 and np.isfinite(data).all()


def test_same_seed_same_volume():
    assert np.array_equal(_render("lesion", 3)[2], _render("lesion", 3)[2])


def test_lesion_brightens_white_matter_locally():
    anatomy = phantom.sample_anatomy(np.random.default_rng(5), "lesion")
    assert anatomy.lesion_center is not None
    center = np.asarray(anatomy.lesion_center)[None]
    healthy = phantom.Anatomy(**{**anatomy.__dict__, "lesion_center": None})
    inside = phantom.tissue_image(anatomy, center)[0]
    before = phantom.tissue_image(healthy, center)[0]
    assert inside > before * (1 + 0.8 * anatomy.lesion_contrast)
    far = center + np.array([[40.0, 0.0, 0.0]])
    assert phantom.tissue_image(anatomy, far)[0] == phantom.tissue_image(healthy, far)[0]


def test_atrophy_enlarges_ventricles_but_not_total_csf():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(*[np.linspace(-30, 30, 41)] * 3, indexing="ij"), -1).reshape(-1, 3)
    ventricles, csf = {"normal": [], "atrophy": []}, {"normal": [], "atrophy": []}
    for _ in range(12):
        for label in ventricles:
            anatomy = phantom.sample_anatomy(rng, label)
            image = phantom.tissue_image(anatomy, grid)
            csf[label].append(np.isclose(image, anatomy.tissue[2]).mean())
            ventricles[label].append(anatomy.ventricle_scale)
    assert min(ventricles["atrophy"]) > max(ventricles["normal"])
    # the outer CSF shrinks to compensate: the CSF fractions overlap
    assert min(csf["atrophy"]) < max(csf["normal"])
