"""The embedded default dataset: planned scans of brain phantoms written as NIfTI + labels.csv.

Each scan is a pure function of (seed, subject, scan id), so the dataset is identical in any
worker order; ``truth.jsonl`` beside the volumes records the ground truth of every scan.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from voxelflow import phantom
from voxelflow.atomic import atomic_dir, check_replaceable, write_csv
from voxelflow.nifti import save_volume
from voxelflow.params import Params, SynthParams
from voxelflow.runtime import map_items
from voxelflow.seeding import rng_for

log = logging.getLogger(__name__)

FORMATS = ((".nii.gz", "int16"), (".nii", "float32"), (".nii.gz", "float32"), (".nii", "int16"))
LABEL_COLUMNS = ("id", "path", "label", "subject")


@dataclass(frozen=True)
class PlannedScan:
    scan_id: str
    subject: str
    label: str
    relative_path: str
    dtype: str
    seed: int
    params: SynthParams


def plan_scans(
    params: SynthParams, seed: int, unlabelled_dir: str = "unlabelled"
) -> list[PlannedScan]:
    """Every scan of the dataset: labelled subjects (some scanned twice) and the unlabelled pool."""
    scans = []
    subjects = params.subjects_per_class * len(params.classes)
    for index in range(subjects):
        subject = f"sub-{index + 1:04d}"
        label = params.classes[index % len(params.classes)]
        rescans = (
            2 if rng_for(seed, "synth-rescan", subject).random() < params.rescan_fraction else 1
        )
        for session in range(1, rescans + 1):
            scan_id = f"{subject}_ses-{session}"
            suffix, dtype = FORMATS[
                int(rng_for(seed, "synth-format", scan_id).integers(len(FORMATS)))
            ]
            scans.append(
                PlannedScan(scan_id, subject, label, scan_id + suffix, dtype, seed, params)
            )
    for index in range(params.unlabelled):
        scan_id = f"unl-{index + 1:04d}"
        suffix, dtype = FORMATS[int(rng_for(seed, "synth-format", scan_id).integers(len(FORMATS)))]
        label = params.classes[index % len(params.classes)]
        scans.append(
            PlannedScan(
                scan_id, scan_id, label, f"{unlabelled_dir}/{scan_id}{suffix}", dtype, seed, params
            )
        )
    return scans


def render_scan(planned: PlannedScan) -> tuple:
    """Pure: the volume, its affine and its ground truth, from the planned scan alone."""
    params = planned.params
    anatomy = phantom.sample_anatomy(
        rng_for(planned.seed, "synth-anatomy", planned.subject),
        planned.label,
        lesion_radius_mm=params.lesion_radius_mm,
        lesion_contrast=params.lesion_contrast,
        atrophy_ventricle_scale=params.atrophy_ventricle_scale,
        scalp_intensity=params.scalp_intensity,
        lesion_edema=params.lesion_edema,
        vessels=params.vessels,
        focus_intensity=params.focus_intensity,
        choroid_plexus=params.choroid_plexus,
    )
    scan_rng = rng_for(planned.seed, "synth-scan", planned.scan_id)
    scan = phantom.sample_scan(
        scan_rng,
        params.field_of_view_mm,
        params.spacing_mm,
        params.noise_std,
        params.bias_field_strength,
    )
    data, affine = phantom.render(anatomy, scan, scan_rng)
    return data, affine, phantom.describe(anatomy, scan)


def _write_scan(job: tuple[PlannedScan, str]) -> dict:
    planned, out_dir = job
    data, affine, truth = render_scan(planned)
    save_volume(Path(out_dir) / planned.relative_path, data, affine, planned.dtype)
    return {"id": planned.scan_id, "path": planned.relative_path, **truth}


def write_dataset(out_dir: str | Path, params: Params, workers: int = 0) -> dict:
    """Writes the dataset into ``out_dir`` (replaced as a whole, atomically).

    Returns:
        Counts of labelled scans, subjects and unlabelled scans.
    """
    out_dir = Path(out_dir)
    if not (out_dir / "truth.jsonl").is_file():  # not a dataset this function wrote before
        check_replaceable(out_dir, ())
    planned = plan_scans(params.synth, params.seed, params.ingest.unlabelled_dir)
    with atomic_dir(out_dir) as staging:
        truths = map_items(
            _write_scan, [(scan, str(staging)) for scan in planned], workers, "synth"
        )
        labelled = [scan for scan in planned if not scan.scan_id.startswith("unl-")]
        write_csv(
            staging / "labels.csv",
            [
                {"id": s.scan_id, "path": s.relative_path, "label": s.label, "subject": s.subject}
                for s in labelled
            ],
            LABEL_COLUMNS,
        )
        with open(staging / "truth.jsonl", "w") as handle:
            for truth in truths:
                handle.write(json.dumps(truth) + "\n")
    summary = {
        "labelled_scans": len(labelled),
        "subjects": params.synth.subjects_per_class * len(params.synth.classes),
        "unlabelled_scans": len(planned) - len(labelled),
    }
    log.info("synth wrote %s to %s", summary, out_dir)
    return summary
