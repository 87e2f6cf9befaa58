import inspect

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


V1 = dict(
    scalp_intensity=(0.35, 0.5), lesion_edema=(0.0, 0.0), vessels=(0, 0), choroid_plexus=False
)


def test_v1_draws_the_same_subjects_without_the_distractors():
    for seed, label in enumerate(phantom.CLASSES * 3):
        v1 = phantom.sample_anatomy(rng_for(seed, "a"), label, **V1)
        v2 = phantom.sample_anatomy(rng_for(seed, "a"), label)
        assert v1.vessels == () and v1.choroid_plexus == () and v1.lesion_edema == 0.0
        assert 0.35 <= v1.tissue[0] <= 0.5 and 1.0 <= v2.tissue[0] <= 1.3
        same = ("tissue", "vessels", "choroid_plexus", "lesion_edema")
        assert {k: v for k, v in v1.__dict__.items() if k not in same} == {
            k: v for k, v in v2.__dict__.items() if k not in same
        }


def test_v1_renders_the_volume_it_rendered_before_the_distractors():
    """Figures of a v1 lesion scan as commit 142308f (before synth v2) rendered it."""
    anatomy = phantom.sample_anatomy(rng_for(0, "golden"), "lesion", **V1)
    scan = phantom.sample_scan(rng_for(0, "golden-scan"), 64.0, (1.0, 1.4), 0.04, 0.15)
    data, _ = phantom.render(anatomy, scan, rng_for(0, "golden-noise"))
    assert data.shape == (63, 63, 47)
    assert np.isclose(data.astype(np.float64).sum(), 29754752.2956, rtol=1e-6)
    assert np.isclose(data[31, 31, 23], 972.11707, rtol=1e-5)
    assert np.isclose(data.max(), 1834.9727, rtol=1e-5)


def test_every_class_has_lesion_bright_distractors():
    for seed, label in enumerate(phantom.CLASSES * 4):
        anatomy = phantom.sample_anatomy(rng_for(seed, "d"), label)
        assert 2 <= len(anatomy.vessels) <= 4 and len(anatomy.choroid_plexus) == 2
        for vessel in anatomy.vessels:
            middle = (np.asarray(vessel[:3]) + np.asarray(vessel[3:6]))[None] / 2
            # a vessel of radius >= 1.5 mm is its own intensity on its axis (alone: vessels
            # may cross each other or the choroid plexus)
            alone = phantom.Anatomy(**{**anatomy.__dict__, "vessels": (vessel,)})
            alone = phantom.Anatomy(**{**alone.__dict__, "choroid_plexus": ()})
            assert abs(phantom.tissue_image(alone, middle)[0] - vessel[7]) < 0.1
            assert 1.1 <= vessel[7] <= 1.6
            # its whole axis inside the brain: never through the skull (darker than any CSF)
            axis = np.linspace(vessel[:3], vessel[3:6], 40)
            healthy = phantom.Anatomy(**{**alone.__dict__, "vessels": ()})
            assert (phantom.tissue_image(healthy, axis) > anatomy.tissue[2] - 0.01).all()
            # clear of a lesion and its oedema rim: the lesion looks as it would alone
            if anatomy.lesion_center is not None:
                distance = phantom._segment_distance(
                    np.asarray(anatomy.lesion_center)[None],
                    np.asarray(vessel[:3]),
                    np.asarray(vessel[3:6]),
                )[0]
                assert distance > 2 * anatomy.lesion_radius_mm + vessel[6] + 1.0
        # each choroid plexus sits in its lateral ventricle, its intensity at its centre
        for side, (_radius, intensity) in zip((-1, 1), anatomy.choroid_plexus, strict=True):
            assert 1.1 <= intensity <= 1.6
            center = phantom.choroid_center(anatomy, side)
            assert phantom._inside_ventricles(center[None], anatomy.size, anatomy.ventricle_scale)
            assert abs(phantom.tissue_image(anatomy, center[None])[0] - intensity) < 0.1
        # the scalp, at the edge of the head, is brighter than white matter
        radius = phantom.HEAD_RADII_MM[0] * anatomy.size
        line = np.linspace(0.8, 1.2, 81)[:, None] * [[radius, 0.0, 0.0]]
        profile = phantom.tissue_image(anatomy, line)
        assert np.isclose(profile, anatomy.tissue[0]).any()
        assert anatomy.tissue[0] > anatomy.tissue[4]


def test_choroid_plexus_stays_inside_the_smallest_ventricle():
    anatomy = phantom.sample_anatomy(rng_for(3, "d"), "normal")
    small = phantom.Anatomy(
        **{**anatomy.__dict__, "ventricle_scale": 0.75, "size": 0.92, "vessels": ()}
    )
    small = phantom.Anatomy(**{**small.__dict__, "choroid_plexus": ((2.6, 1.6), (2.6, 1.6))})
    without = phantom.Anatomy(**{**small.__dict__, "choroid_plexus": ()})
    # a 0.25 mm grid over both ventricles and everything within 6 mm of them
    axes = [np.arange(-12.0, 12.0, 0.25), np.arange(-14.0, 14.0, 0.25), np.arange(-4, 10, 0.25)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = phantom._inside_ventricles(points, small.size, small.ventricle_scale)
    with_plexus = phantom.tissue_image(small, points)
    changed = ~np.isclose(with_plexus, phantom.tissue_image(without, points))
    assert changed.sum() > 100  # the plexus is there (a 2.6 mm radius ball is 5,000 points)
    assert not (changed & ~inside).any()  # and nowhere outside a ventricle


def test_lesion_has_a_darker_oedema_rim():
    anatomy = phantom.sample_anatomy(np.random.default_rng(5), "lesion", vessels=(0, 0))
    assert 0.15 <= anatomy.lesion_edema <= 0.3
    healthy = phantom.Anatomy(**{**anatomy.__dict__, "lesion_center": None})
    rim = np.asarray(anatomy.lesion_center)[None] + [[1.5 * anatomy.lesion_radius_mm, 0, 0]]
    darker = phantom.tissue_image(anatomy, rim)[0] / phantom.tissue_image(healthy, rim)[0]
    # about 0.9 of the darkening at 1.5 radii (the lesion's own edge adds a little back)
    assert darker < 1 - 0.5 * anatomy.lesion_edema


def test_sample_anatomy_defaults_are_the_default_datasets():
    """params.py imports no voxelflow module (every stage depends on it), so synth's
    defaults are written twice: here and in SynthParams. They must not drift apart."""
    from voxelflow.params import SynthParams

    synth = SynthParams()
    signature = inspect.signature(phantom.sample_anatomy)
    defaults = {
        name: parameter.default
        for name, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    assert defaults  # the difficulty ranges and distractors
    for name, default in defaults.items():
        assert getattr(synth, name) == default, name
