"""Ingest: validate a data folder and its labels table into a manifest and a rejected list.

Every input (each volume file in the folder and each row of the table) ends up in exactly one
of ``manifest.csv`` (accepted volumes, with their split) and ``rejected.csv`` (with a reason a
person can act on).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxelflow.atomic import atomic_dir, check_replaceable, write_csv, write_json
from voxelflow.labels import LabelRow, Rejection, parse_labels, safe_relative_path, volume_stem
from voxelflow.nifti import VolumeError, is_volume_file, load_volume
from voxelflow.params import IngestParams
from voxelflow.runtime import map_items
from voxelflow.splits import assign_splits

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "id",
    "subject",
    "path",
    "label",
    "split",
    "shape",
    "spacing",
    "orientation",
    "dtype",
    "checksum",
)
REJECTED_COLUMNS = ("input", "reason")
OUTPUTS = ("manifest.csv", "rejected.csv", "ingest_report.json")
UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class Candidate:
    id: str
    path: str
    label: str
    subject: str
    split: str
    data_dir: str
    max_voxels: int
    min_size: int


def file_checksum(path: Path) -> str:
    """SHA-256 of the file's bytes; for an Analyze/NIfTI pair, of the .hdr then the .img."""
    digest = hashlib.sha256()
    files = [path]
    if path.suffix.lower() == ".hdr":
        files.append(path.with_suffix(".img" if path.suffix == ".hdr" else ".IMG"))
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_volume(candidate: Candidate) -> dict | Rejection:
    """Opens one volume and checks it is usable; a manifest row or the reason it is not."""
    file = Path(candidate.data_dir) / candidate.path
    try:
        volume = load_volume(file, max_voxels=candidate.max_voxels)
    except VolumeError as error:
        return Rejection(candidate.path, str(error).replace(str(file), candidate.path, 1))
    if min(volume.shape) < candidate.min_size:
        return Rejection(
            candidate.path,
            f"shape {volume.shape} has an axis below the minimum size {candidate.min_size}",
        )
    if float(np.ptp(volume.data)) == 0.0:
        return Rejection(candidate.path, f"constant volume (every voxel is {volume.data.flat[0]})")
    return {
        **{key: value for key, value in asdict(candidate).items() if key in MANIFEST_COLUMNS},
        "shape": "x".join(str(size) for size in volume.shape),
        "spacing": "x".join(f"{step:.4g}" for step in volume.spacing),
        "orientation": volume.orientation,
        "dtype": volume.disk_dtype,
        "checksum": file_checksum(file),
    }


def discover_volumes(data_dir: Path) -> list[str]:
    """Every volume file under the folder, as sorted posix paths relative to it."""
    return sorted(
        file.relative_to(data_dir).as_posix()
        for file in data_dir.rglob("*")
        if file.is_file() and is_volume_file(file) and not file.name.startswith(".")
    )


def build_candidates(
    data_dir: Path,
    rows: list[LabelRow],
    files: list[str],
    params: IngestParams,
    referenced: set[str] | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Labelled rows plus the unlabelled pool; files in neither are rejected.

    ``referenced`` holds every path a table row named, valid or not: such a file has its
    answer in the row's rejection and is neither re-reported nor pooled as unlabelled.
    """
    limits = dict(data_dir=str(data_dir), max_voxels=params.max_voxels, min_size=params.min_size)
    candidates = [
        Candidate(row.id, row.path, row.label, row.subject, row.split, **limits) for row in rows
    ]
    listed = {row.path for row in rows} | (referenced or set())
    prefix = params.unlabelled_dir.strip("/") + "/"
    rejected = []
    used_ids = {row.id for row in rows}
    for path in files:
        if path in listed:
            continue
        safe, problem = safe_relative_path(data_dir, path)
        if not safe:
            rejected.append(Rejection(path, problem))
            continue
        if path.startswith(prefix):
            identifier = volume_stem(Path(path).name)
            if identifier in used_ids:
                rejected.append(
                    Rejection(path, f"id {identifier!r} is already used by a labelled volume")
                )
                continue
            used_ids.add(identifier)
            candidates.append(Candidate(identifier, path, "", identifier, UNLABELLED, **limits))
        else:
            rejected.append(
                Rejection(path, f"not listed in the labels table and not under {prefix}")
            )
    return candidates, rejected


def ingest_folder(
    data_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    params: IngestParams,
    seed: int,
    workers: int = 0,
) -> dict:
    """Validates the folder and writes manifest.csv, rejected.csv and ingest_report.json.

    Raises:
        ValueError: the table as a whole is malformed, or no valid labelled volume is left.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: data folder not found")
    check_replaceable(out_dir, OUTPUTS, protect=(data_dir, labels_csv))
    parsed = parse_labels(labels_csv, data_dir, params.classes)
    rows, rejected = parsed.rows, list(parsed.rejected)
    candidates, unlisted = build_candidates(
        data_dir, rows, discover_volumes(data_dir), params, parsed.referenced
    )
    rejected += unlisted
    accepted = []
    for result in map_items(check_volume, candidates, workers, "ingest"):
        (rejected if isinstance(result, Rejection) else accepted).append(result)
    accepted, duplicates = _drop_duplicate_content(accepted)
    rejected += duplicates
    labelled = [row for row in accepted if row["split"] != UNLABELLED]
    if not labelled:
        raise ValueError(
            f"{data_dir}: no valid labelled volume left ({len(rejected)} inputs rejected; "
            "see the reasons above or in rejected.csv)"
        )
    labelled, conflicts = _conflicting_splits(labelled)
    rejected += conflicts
    accepted = [row for row in accepted if row["split"] == UNLABELLED] + labelled
    classes = params.classes or sorted({row["label"] for row in labelled})
    _apply_splits(labelled, params, seed)
    _check_coverage(labelled, classes, data_dir)
    order = {"train": 0, "val": 1, "test": 2, UNLABELLED: 3}
    accepted.sort(key=lambda row: (order[row["split"]], row["id"]))
    report = _report(accepted, rejected, classes)
    with atomic_dir(out_dir) as staging:  # checked before any work, inputs protected
        write_csv(staging / "manifest.csv", accepted, MANIFEST_COLUMNS)
        write_csv(staging / "rejected.csv", [asdict(item) for item in rejected], REJECTED_COLUMNS)
        write_json(staging / "ingest_report.json", report)
    for item in rejected:
        log.warning("rejected %s: %s", item.input, item.reason)
    log.info("ingest: %d accepted, %d rejected", len(accepted), len(rejected))
    return report


def _drop_duplicate_content(rows: list[dict]) -> tuple[list[dict], list[Rejection]]:
    """One volume per content. Copies with one label keep the first id; copies whose labels
    disagree are all rejected, since no one can tell which label is right."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda item: (item["split"] == UNLABELLED, item["id"])):
        groups[row["checksum"]].append(row)
    kept, rejected = [], []
    for copies in groups.values():
        labels = {row["label"] for row in copies if row["label"]}
        names = ", ".join(
            f"{row['path']} (id={row['id']!r}, label={row['label']!r})" for row in copies
        )
        if len(labels) > 1:
            for row in copies:
                rejected.append(
                    Rejection(row["path"], f"the same content is labelled differently: {names}")
                )
            continue
        kept.append(copies[0])
        for row in copies[1:]:
            rejected.append(
                Rejection(
                    row["path"],
                    f"same content as {copies[0]['path']} (id={copies[0]['id']!r}); "
                    f"duplicate of id {row['id']!r} dropped",
                )
            )
    return kept, rejected


def _conflicting_splits(rows: list[dict]) -> tuple[list[dict], list[Rejection]]:
    """Rejects every volume of a subject whose rows give different splits."""
    given: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["split"]:
            given[row["subject"]].add(row["split"])
    bad = {subject for subject, splits in given.items() if len(splits) > 1}
    kept = [row for row in rows if row["subject"] not in bad]
    rejected = [
        Rejection(
            row["path"],
            f"subject {row['subject']!r} is given more than one split "
            f"{sorted(given[row['subject']])}; all volumes of a subject must share one split",
        )
        for row in rows
        if row["subject"] in bad
    ]
    return kept, rejected


def _check_coverage(rows: list[dict], classes: list[str], data_dir: Path) -> None:
    """Every class must have volumes in train, val and test, or training cannot work."""
    present = {(row["split"], row["label"]) for row in rows}
    missing = [
        f"{split}/{name}"
        for split in ("train", "val", "test")
        for name in classes
        if (split, name) not in present
    ]
    if missing:
        raise ValueError(
            f"{data_dir}: no volumes for {', '.join(missing)} after splitting "
            f"({len(rows)} labelled volumes); add volumes or change ingest.splits"
        )


def _apply_splits(rows: list[dict], params: IngestParams, seed: int) -> None:
    given = {row["subject"]: row["split"] for row in rows if row["split"]}
    subject_labels: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        subject_labels[row["subject"]].append(row["label"])
    free = {subject: labels for subject, labels in subject_labels.items() if subject not in given}
    fractions = (params.splits.train, params.splits.val, params.splits.test)
    assignment = {**assign_splits(free, fractions, seed), **given}
    for row in rows:
        row["split"] = assignment[row["subject"]]


def _report(accepted: list[dict], rejected: list[Rejection], classes: list[str]) -> dict:
    per_split: dict[str, dict[str, int]] = {}
    for row in accepted:
        counts = per_split.setdefault(row["split"], {})
        key = row["label"] or UNLABELLED
        counts[key] = counts.get(key, 0) + 1
    return {
        "classes": classes,
        "accepted": len(accepted),
        "rejected": len(rejected),
        "subjects": len({row["subject"] for row in accepted}),
        "per_split": per_split,
        "rejected_reasons": dict(Counter(item.reason.split(":")[0] for item in rejected)),
    }
