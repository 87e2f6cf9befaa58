"""Brain-like phantoms for the embedded default dataset.

A phantom is an analytic anatomy in world coordinates (mm, RAS+): scalp, skull, outer CSF, a
folded grey-matter ribbon, white matter and two lateral ventricles, with per-subject size,
shape and tissue variation. Each scan samples it on its own voxel grid (orientation,
anisotropic spacing, position and tilt of the head), then adds a smooth bias field, Rician
noise and a scanner gain. The classes differ only locally:

- ``normal``;
- ``lesion``: one focal hyperintense lesion (as an enhancing or FLAIR-bright lesion looks) of
  random size, contrast and position in white matter, with a darker rim of oedema; it is a
  few hundred voxels, too few to move the global intensity statistics;
- ``atrophy``: enlarged ventricles and a thinner cortex. The outer CSF space is shrunk by the
  ventricles' excess volume, so the CSF fraction (and with it the global histogram) stays
  in the normal range: the difference is where the CSF is, not how much there is.

A lesion is not the only bright thing in a head. Every subject, whatever its class, has
bright scalp fat (as on T1), short enhancing vessel segments inside the brain (clear of a
lesion and its rim) and a choroid plexus inside each lateral ventricle, as bright as a
lesion: the brightest voxel does not tell a lesion from a normal head, and a bright-spot
detector only in part; its shape (round, not a tube), its place (white matter, not a
ventricle) and its oedema rim do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from voxelflow.nifti import orientation_affine

CLASSES = ("normal", "lesion", "atrophy")
ORIENTATIONS = ("RAS", "LAS", "LPS", "LPI", "RAI", "ASL", "PIR", "IRP")
HEAD_RADII_MM = np.array([22.0, 26.0, 22.0])
VENTRICLE_RADII_MM = np.array([3.0, 9.0, 4.5])
VENTRICLE_OFFSET_MM = np.array([5.0, 2.0, 3.0])
SCALP, SKULL, CSF_LIMIT = 0.92, 0.85, 0.85
VESSEL_RADIUS_MM = (1.5, 2.5)  # large enhancing veins and sinuses, not capillaries
_MAX_VESSEL_DRAWS = 1000


@dataclass(frozen=True)
class Anatomy:
    """One subject's anatomy; rescans of a subject share it."""

    label: str
    size: float
    shape_quadratic: tuple[float, ...]
    shape_linear: tuple[float, float, float]
    gyral_phase: tuple[float, float, float]
    gyral_amplitude: float
    brain_radius: float
    cortex_thickness: float
    ventricle_scale: float
    tissue: tuple[float, float, float, float, float]  # scalp, skull, csf, grey, white
    lesion_center: tuple[float, float, float] | None = None
    lesion_radius_mm: float = 0.0
    lesion_contrast: float = 0.0
    lesion_edema: float = 0.0
    # enhancing vessel segments: (start xyz, end xyz, radius mm, intensity) each
    vessels: tuple[tuple[float, ...], ...] = ()
    choroid_plexus: tuple[tuple[float, float], ...] = ()  # (radius mm, intensity) per side


@dataclass(frozen=True)
class Scan:
    """How one acquisition samples an anatomy."""

    orientation: str
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    shift_mm: tuple[float, float, float]
    tilt_degrees: tuple[float, float]
    bias: tuple[float, ...]
    noise_std: float
    gain: float


def _ventricle_volume(size: float, scale: float) -> float:
    return 2 * 4 / 3 * np.pi * float(np.prod(VENTRICLE_RADII_MM)) * (size * scale) ** 3


def sample_anatomy(
    rng: np.random.Generator,
    label: str,
    lesion_radius_mm: tuple[float, float] = (3.0, 4.5),
    lesion_contrast: tuple[float, float] = (0.6, 0.9),
    atrophy_ventricle_scale: tuple[float, float] = (1.5, 1.9),
    scalp_intensity: tuple[float, float] = (1.0, 1.3),
    lesion_edema: tuple[float, float] = (0.15, 0.3),
    vessels: tuple[int, int] = (2, 4),
    focus_intensity: tuple[float, float] = (1.1, 1.6),
    choroid_plexus: bool = True,
) -> Anatomy:
    """Draws a subject of class ``label`` (one of :data:`CLASSES`).

    The ranges set how hard the task is: a lesion's radius, its relative brightening of
    white matter and the darkening of its oedema rim, and how much atrophy enlarges the
    ventricles (normal subjects: 0.75-1.15). The distractors every class has: the scalp's
    intensity (white matter is 0.76-0.86), a number of enhancing vessel segments, a choroid
    plexus in each lateral ventricle, and the intensity of these foci. With scalp (0.35,
    0.5), no oedema, no vessels and no choroid plexus it draws the dataset before the
    distractors (synth v1, on which benchmarks/RESULTS.md's earlier tables were measured):
    the distractors' draws come after every other draw, so the subjects are the same.
    """
    if label not in CLASSES:
        raise ValueError(f"unknown phantom class {label!r}; expected one of {CLASSES}")
    size = rng.uniform(0.92, 1.06)
    quadratic = rng.normal(0, 0.04, size=6)
    linear = rng.normal(0, 0.02, size=3)
    brain_radius = rng.uniform(0.68, 0.80)
    if label == "atrophy":
        ventricle_scale = rng.uniform(*atrophy_ventricle_scale)
        cortex = rng.uniform(0.085, 0.125)
        head_volume = 4 / 3 * np.pi * float(np.prod(HEAD_RADII_MM)) * size**3
        excess = _ventricle_volume(size, ventricle_scale) - _ventricle_volume(size, 1.0)
        brain_radius = min((brain_radius**3 + excess / head_volume) ** (1 / 3), 0.84)
    else:
        ventricle_scale = rng.uniform(0.75, 1.15)
        cortex = rng.uniform(0.095, 0.14)
    tissue = (
        rng.uniform(*scalp_intensity),
        rng.uniform(0.08, 0.16),
        rng.uniform(0.22, 0.32),
        rng.uniform(0.5, 0.6),
        rng.uniform(0.76, 0.86),
    )
    anatomy = dict(
        label=label,
        size=float(size),
        shape_quadratic=tuple(float(value) for value in quadratic),
        shape_linear=tuple(float(value) for value in linear),
        gyral_phase=tuple(float(value) for value in rng.uniform(0, 2 * np.pi, size=3)),
        gyral_amplitude=float(rng.uniform(0.02, 0.04)),
        brain_radius=float(brain_radius),
        cortex_thickness=float(cortex),
        ventricle_scale=float(ventricle_scale),
        tissue=tuple(float(value) for value in tissue),
    )
    if label == "lesion":
        white_radius = brain_radius - cortex - 0.06
        while True:
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            point = direction * rng.uniform(0.2, white_radius) * HEAD_RADII_MM * size
            if not _inside_ventricles(point[None], size, ventricle_scale, margin=1.6)[0]:
                break
        anatomy.update(
            lesion_center=tuple(float(value) for value in point),
            lesion_radius_mm=float(rng.uniform(*lesion_radius_mm)),
            lesion_contrast=float(rng.uniform(*lesion_contrast)),
        )
        if lesion_edema[1] > 0:
            anatomy["lesion_edema"] = float(rng.uniform(*lesion_edema))
    segments = []
    lesion = anatomy.get("lesion_center")
    for _ in range(int(rng.integers(vessels[0], vessels[1] + 1)) if vessels[1] > 0 else 0):
        for _attempt in range(_MAX_VESSEL_DRAWS):
            # a straight segment 8-16 mm long through a point inside the brain, any direction
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            unit = rng.normal(size=3)
            unit /= np.linalg.norm(unit)
            center = unit * rng.uniform(0.1, brain_radius - 0.05) * HEAD_RADII_MM * size
            half = direction * rng.uniform(4.0, 8.0)
            radius = float(rng.uniform(*VESSEL_RADIUS_MM))
            intensity = float(rng.uniform(*focus_intensity))
            ends = np.stack([center - half, center + half])
            # both ends inside the brain (not through the skull), and clear of a lesion and
            # its oedema rim (a vessel over a lesion would hide what tells it apart)
            inside = _head_coordinates(ends, size, quadratic, linear)[0] <= brain_radius
            if inside.all() and (
                lesion is None
                or _segment_distance(np.asarray(lesion)[None], *ends)[0]
                > 2.0 * anatomy["lesion_radius_mm"] + radius + 1.0
            ):
                break
        else:  # pragma: no cover - 1.85 draws per vessel on average (900 subjects, RESULTS)
            raise RuntimeError(f"no vessel fits this {label} subject in {_MAX_VESSEL_DRAWS} draws")
        segments.append((*(float(value) for value in ends.ravel()), radius, intensity))
    anatomy["vessels"] = tuple(segments)
    if choroid_plexus:
        anatomy["choroid_plexus"] = tuple(
            (float(rng.uniform(1.8, 2.6)), float(rng.uniform(*focus_intensity))) for _ in range(2)
        )
    return Anatomy(**anatomy)


def sample_scan(
    rng: np.random.Generator,
    field_of_view_mm: float,
    spacing_range: tuple[float, float],
    noise_std: float,
    bias_strength: float,
) -> Scan:
    """Draws an acquisition: orientation, anisotropic spacing, head pose, bias, noise, gain."""
    in_plane = rng.uniform(*spacing_range)
    through_plane = rng.uniform(in_plane, spacing_range[1])
    spacing = [in_plane, in_plane, in_plane]
    spacing[int(rng.integers(3))] = through_plane
    shape = tuple(int(round(field_of_view_mm / step)) for step in spacing)
    return Scan(
        orientation=str(rng.choice(ORIENTATIONS)),
        spacing_mm=tuple(float(step) for step in spacing),
        shape=shape,
        shift_mm=tuple(float(value) for value in rng.uniform(-3, 3, size=3)),
        tilt_degrees=tuple(float(value) for value in rng.uniform(-6, 6, size=2)),
        bias=tuple(float(value) for value in rng.normal(0, bias_strength, size=9)),
        noise_std=float(noise_std * rng.uniform(0.7, 1.3)),
        gain=float(rng.uniform(300, 3000)),
    )


def _inside_ventricles(points: np.ndarray, size: float, scale: float, margin: float = 1.0):
    radii = VENTRICLE_RADII_MM * size * scale * margin
    inside = np.zeros(points.shape[0], dtype=bool)
    for side in (-1.0, 1.0):
        center = VENTRICLE_OFFSET_MM * size * np.array([side, 1.0, 1.0])
        inside |= np.sum(((points - center) / radii) ** 2, axis=1) <= 1.0
    return inside


def _head_coordinates(points, size, quadratic, linear):
    """The head's radial coordinate (1 at the scalp's surface) and direction of each point."""
    scaled = points / (HEAD_RADII_MM * size)
    rho = np.linalg.norm(scaled, axis=1)
    unit = scaled / np.maximum(rho, 1e-6)[:, None]
    q = quadratic
    shape = (
        q[0] * unit[:, 0] ** 2
        + q[1] * unit[:, 1] ** 2
        - (q[0] + q[1]) * unit[:, 2] ** 2
        + q[2] * unit[:, 0] * unit[:, 1]
        + q[3] * unit[:, 0] * unit[:, 2]
        + q[4] * unit[:, 1] * unit[:, 2]
    )
    return rho / (1.0 + shape + unit @ np.asarray(linear)), unit


def _segment_distance(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 3) to the segment from ``start`` to ``end``."""
    axis = end - start
    along = np.clip((points - start) @ axis / float(axis @ axis), 0.0, 1.0)
    return np.linalg.norm(points - (start + along[:, None] * axis), axis=1)


def _rotation(tilt_degrees: tuple[float, float]) -> np.ndarray:
    yaw, pitch = np.deg2rad(tilt_degrees)
    around_z = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    around_x = np.array(
        [[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]]
    )
    return around_z @ around_x


def tissue_image(anatomy: Anatomy, points: np.ndarray) -> np.ndarray:
    """Noise-free tissue intensities at head-centred points (N, 3) in mm."""
    rho, unit = _head_coordinates(
        points, anatomy.size, anatomy.shape_quadratic, anatomy.shape_linear
    )
    phase = anatomy.gyral_phase
    folds = anatomy.gyral_amplitude * (
        np.sin(9 * unit[:, 0] + phase[0])
        * np.sin(9 * unit[:, 1] + phase[1])
        * np.sin(9 * unit[:, 2] + phase[2])
    )
    scalp, skull, csf, grey, white = anatomy.tissue
    image = np.zeros(points.shape[0], dtype=np.float64)
    image[rho <= 1.0] = scalp
    image[rho <= SCALP] = skull
    image[rho <= CSF_LIMIT] = csf
    image[rho <= anatomy.brain_radius + folds * 0.5] = grey
    image[rho <= anatomy.brain_radius - anatomy.cortex_thickness + folds] = white
    ventricles = _inside_ventricles(points, anatomy.size, anatomy.ventricle_scale)
    image[ventricles] = csf
    if anatomy.lesion_center is not None:
        distance = np.linalg.norm(points - np.asarray(anatomy.lesion_center), axis=1)
        weight = _soft_inside(distance, anatomy.lesion_radius_mm)
        if anatomy.lesion_edema:
            # oedema: a darker shell out to twice the radius, fading at its edge
            edema = _soft_inside(distance, 2.0 * anatomy.lesion_radius_mm) - weight
            image *= 1.0 - anatomy.lesion_edema * edema
        image *= 1.0 + anatomy.lesion_contrast * weight
    for segment in anatomy.vessels:
        distance = _segment_distance(points, np.asarray(segment[:3]), np.asarray(segment[3:6]))
        _blend(image, _soft_inside(distance, segment[6]), segment[7])
    for side, (radius, intensity) in zip((-1.0, 1.0), anatomy.choroid_plexus, strict=False):
        distance = np.linalg.norm(points - choroid_center(anatomy, side), axis=1)
        # inside the ventricle only, however small it is (never a bright spot in white matter)
        weight = _soft_inside(distance, radius * anatomy.size) * ventricles
        _blend(image, weight, intensity)
    return image


def choroid_center(anatomy: Anatomy, side: float) -> np.ndarray:
    """The choroid plexus's centre (mm) in the atrium of the lateral ventricle of ``side``
    (-1 or 1), wherever the ventricle is."""
    scale = anatomy.size * anatomy.ventricle_scale
    center = VENTRICLE_OFFSET_MM * anatomy.size * np.array([side, 1.0, 1.0])
    return center - np.array([0.0, 0.5 * VENTRICLE_RADII_MM[1] * scale, 0.0])


def _soft_inside(distance: np.ndarray, radius: float) -> np.ndarray:
    """1 inside ``radius``, 0 outside, with a 0.5 mm soft edge (partial volume)."""
    return 1.0 / (1.0 + np.exp((distance - radius) / 0.5))


def _blend(image: np.ndarray, weight: np.ndarray, intensity: float) -> None:
    """An enhancing structure of ``intensity`` replaces the tissue where ``weight`` is 1."""
    image *= 1.0 - weight
    image += intensity * weight


def render(anatomy: Anatomy, scan: Scan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Samples the anatomy on the scan's grid: (data in scanner units, affine)."""
    affine = orientation_affine(scan.orientation, scan.spacing_mm, scan.shape, (0.0, 0.0, 0.0))
    grid = np.indices(scan.shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ grid).T + affine[:3, 3]
    head = (world - np.asarray(scan.shift_mm)) @ _rotation(scan.tilt_degrees)
    image = tissue_image(anatomy, head)
    normalised = world / (HEAD_RADII_MM * 1.2)
    x, y, z = normalised.T
    b = scan.bias
    field = b[0] * x + b[1] * y + b[2] * z + b[3] * x * y + b[4] * y * z + b[5] * x * z
    field += b[6] * (x**2 - y**2) + b[7] * (y**2 - z**2) + b[8] * (x**2 + y**2 + z**2 - 1)
    image *= np.exp(field)
    real = image + rng.normal(0, scan.noise_std, size=image.shape)
    imaginary = rng.normal(0, scan.noise_std, size=image.shape)
    data = np.sqrt(real**2 + imaginary**2) * scan.gain
    return data.reshape(scan.shape).astype(np.float32), affine


def describe(anatomy: Anatomy, scan: Scan) -> dict:
    """The ground truth of one synthetic scan, for the dataset's sidecar file."""
    return {"anatomy": asdict(anatomy), "scan": asdict(scan)}
