"""Ingest: validate a data folder and its labels table into a manifest and a rejected list.

Every input (each volume file in the folder, a ``.hdr``/``.img`` pair counting once, and each
row of the table) ends up in exactly one of ``manifest.csv`` (accepted volumes, with their
split) and ``rejected.csv`` (with a reason a person can act on). ``fingerprint.json``
describes the training volumes (see :mod:`voxelflow.fingerprint`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxelflow.atomic import atomic_dir, check_replaceable, write_csv, write_json
from voxelflow.fingerprint import summarize, volume_stats
from voxelflow.labels import (
    SAFE_NAME,
    LabelRow,
    Rejection,
    parse_labels,
    safe_relative_path,
    volume_stem,
)
from voxelflow.nifti import (
    VolumeError,
    companion_files,
    header_of,
    is_companion_file,
    is_volume_file,
    load_volume,
)
from voxelflow.params import IngestParams
from voxelflow.runtime import iter_items
from voxelflow.seeding import derive_seed, unit_hash
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
    "volume_index",
    "repaired",
    "checksum",
    "content",
)
REJECTED_COLUMNS = ("input", "reason")
OUTPUTS = ("manifest.csv", "rejected.csv", "ingest_report.json", "fingerprint.json")
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
    volume_index: int | None
    non_finite: str
    seed: int


@dataclass(frozen=True)
class Checked:
    """An accepted volume: its manifest row and its fingerprint statistics."""

    row: dict
    stats: dict


def file_checksum(path: Path) -> str:
    """SHA-256 of the file's bytes; for a header/data pair, of the header then the data."""
    digest = hashlib.sha256()
    for file in [path, *companion_files(path)]:
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def content_hash(data: np.ndarray) -> str:
    """SHA-256 of the voxel values (as float32, with their shape): the same image stored
    twice, even in two formats (``.nii`` and ``.nii.gz``) or with an edited header, has the
    same content hash."""
    digest = hashlib.sha256(str(data.shape).encode())
    digest.update(np.ascontiguousarray(data, dtype=np.float32).tobytes())
    return digest.hexdigest()


def check_volume(candidate: Candidate) -> Checked | Rejection:
    """Opens one volume and checks it is usable; its manifest row or the reason it is not."""
    file = Path(candidate.data_dir) / candidate.path
    try:
        volume = load_volume(
            file,
            max_voxels=candidate.max_voxels,
            volume_index=candidate.volume_index,
            non_finite=candidate.non_finite,
        )
    except VolumeError as error:
        message = str(error).replace(str(file), candidate.path)
        return Rejection(candidate.path, message.replace(f"{candidate.data_dir}/", ""))
    if min(volume.shape) < candidate.min_size:
        return Rejection(
            candidate.path,
            f"shape {volume.shape} has an axis below the minimum size {candidate.min_size} "
            "(ingest.min_size)",
        )
    if float(np.ptp(volume.data)) == 0.0:
        return Rejection(candidate.path, f"constant volume (every voxel is {volume.data.flat[0]})")
    if volume.repaired:
        log.warning(
            "%s: %d NaN/Inf voxels replaced by the volume's minimum (ingest.non_finite: repair)",
            candidate.path,
            volume.repaired,
        )
    row = {
        **{key: value for key, value in asdict(candidate).items() if key in MANIFEST_COLUMNS},
        "shape": "x".join(str(size) for size in volume.shape),
        "spacing": "x".join(f"{step:.4g}" for step in volume.spacing),
        "orientation": volume.orientation,
        "dtype": volume.disk_dtype,
        "volume_index": "" if candidate.volume_index is None else candidate.volume_index,
        "repaired": volume.repaired,
        "checksum": file_checksum(file),
        "content": content_hash(volume.data),
    }
    stats = volume_stats(volume.data, volume.affine, derive_seed(candidate.seed, candidate.id))
    return Checked(row, stats)


def discover_volumes(data_dir: Path) -> tuple[list[str], list[Rejection]]:
    """Every volume file under the folder (sorted posix paths relative to it), and the
    data files of pairs whose header is missing (each is an input that cannot be read)."""
    volumes, orphans = [], []
    for file in sorted(data_dir.rglob("*")):
        if not file.is_file() or file.name.startswith("."):
            continue
        relative = file.relative_to(data_dir).as_posix()
        if is_volume_file(file):
            volumes.append(relative)
        elif is_companion_file(file) and header_of(file) is None:
            orphans.append(
                Rejection(
                    relative,
                    f"data file without its header (expected {volume_stem(file.name)}.hdr "
                    "next to it)",
                )
            )
    return volumes, orphans


def build_candidates(
    data_dir: Path,
    rows: list[LabelRow],
    files: list[str],
    params: IngestParams,
    seed: int,
    referenced: set[str] | None = None,
) -> tuple[list[Candidate], list[Rejection]]:
    """Labelled rows plus the unlabelled pool; files in neither are rejected.

    ``referenced`` holds every path a table row named, valid or not: such a file has its
    answer in the row's rejection and is neither re-reported nor pooled as unlabelled.
    """
    limits = dict(
        data_dir=str(data_dir.resolve()),  # workers may run elsewhere (Dask)
        max_voxels=params.max_voxels,
        min_size=params.min_size,
        volume_index=params.volume_index,
        non_finite=params.non_finite,
        seed=seed,
    )
    candidates = [
        Candidate(row.id, row.path, row.label, row.subject, row.split, **limits) for row in rows
    ]
    listed = {row.path for row in rows} | (referenced or set())
    for path in list(listed):  # a row naming the .img of a pair names its header too
        header = header_of(data_dir / path)
        if header is not None:
            listed.add(header.relative_to(data_dir).as_posix())
    prefix = params.unlabelled_dir.strip("/") + "/"
    rejected = []
    used_ids = {row.id: f"the labels table (row {row.row})" for row in rows}
    for path in files:
        if path in listed:
            continue
        safe, problem = safe_relative_path(data_dir, path)
        if not safe:
            rejected.append(Rejection(path, problem))
            continue
        if path.startswith(prefix):
            identifier = volume_stem(Path(path).name)
            if not SAFE_NAME.match(identifier):
                rejected.append(
                    Rejection(
                        path,
                        f"file name {identifier!r} has characters other than letters, digits, "
                        "'.', '_' and '-' (its name becomes the volume's id and a file name)",
                    )
                )
                continue
            if identifier in used_ids:
                rejected.append(
                    Rejection(path, f"id {identifier!r} is already used by {used_ids[identifier]}")
                )
                continue
            used_ids[identifier] = path
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
    dask_address: str | None = None,
) -> dict:
    """Validates the folder; writes manifest.csv, rejected.csv, ingest_report.json and
    fingerprint.json. Volumes are checked on a process pool (``workers``, 0: every core) or
    on the Dask cluster at ``dask_address``.

    Raises:
        ValueError: the table as a whole is malformed, or no valid labelled volume is left.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: data folder not found")
    check_replaceable(out_dir, OUTPUTS, protect=(data_dir, labels_csv))
    parsed = parse_labels(labels_csv, data_dir, params.classes)
    rows, rejected = parsed.rows, list(parsed.rejected)
    files, orphans = discover_volumes(data_dir)
    candidates, unlisted = build_candidates(
        data_dir, rows, files, params, seed, parsed.referenced
    )
    rejected += orphans + unlisted
    accepted, stats = [], {}
    for result in iter_items(check_volume, candidates, workers, "ingest", dask_address):
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            accepted.append(result.row)
            stats[result.row["id"]] = result.stats
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
    moved = _apply_splits(labelled, params, seed)
    hidden = _hide_training_labels(labelled, params.label_fraction, seed)
    _check_coverage(labelled, classes, data_dir)
    order = {"train": 0, "val": 1, "test": 2, UNLABELLED: 3}
    accepted.sort(key=lambda row: (order[row["split"]], row["id"]))
    report = _report(accepted, rejected, classes)
    report["classes_from"] = "params" if params.classes else "inferred from the table"
    report["split_moves"] = moved
    report["labels_hidden"] = hidden
    fingerprint = {
        "split": "train",
        **summarize([stats[row["id"]] for row in accepted if row["split"] == "train"]),
    }
    with atomic_dir(out_dir) as staging:  # checked before any work, inputs protected
        write_csv(staging / "manifest.csv", accepted, MANIFEST_COLUMNS)
        write_csv(staging / "rejected.csv", [asdict(item) for item in rejected], REJECTED_COLUMNS)
        write_json(staging / "ingest_report.json", report)
        write_json(staging / "fingerprint.json", fingerprint)
    for item in rejected:
        log.warning("rejected %s: %s", item.input, item.reason)
    log.info("ingest: %d accepted, %d rejected", len(accepted), len(rejected))
    return report


def _drop_duplicate_content(rows: list[dict]) -> tuple[list[dict], list[Rejection]]:
    """One volume per content. Copies with one label keep the first id; copies whose labels
    disagree are all rejected, since no one can tell which label is right."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda item: (item["split"] == UNLABELLED, item["id"])):
        groups[row["content"]].append(row)
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


def _apply_splits(rows: list[dict], params: IngestParams, seed: int) -> list[str]:
    """Sets each row's split (a given split column wins); returns the subjects moved to fill a
    split their class had no subject in."""
    given = {row["subject"]: row["split"] for row in rows if row["split"]}
    subject_labels: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        subject_labels[row["subject"]].append(row["label"])
    free = {subject: labels for subject, labels in subject_labels.items() if subject not in given}
    fixed: dict[str, Counter] = defaultdict(Counter)
    for subject, split in given.items():
        fixed[Counter(sorted(subject_labels[subject])).most_common(1)[0][0]][split] += 1
    fractions = (params.splits.train, params.splits.val, params.splits.test)
    assigned, moved = assign_splits(free, fractions, seed, fixed)
    assignment = {**assigned, **given}
    for row in rows:
        row["split"] = assignment[row["subject"]]
    return moved


def _hide_training_labels(rows: list[dict], fraction: float, seed: int) -> int:
    """Moves the training subjects outside ``fraction`` (by a hash of seed and subject, at
    least one subject kept per class) to the unlabelled pool; returns the volumes moved."""
    if fraction >= 1:
        return 0
    subjects: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["split"] == "train":
            subjects[row["label"]][row["subject"]] = unit_hash(seed, "labels", row["subject"])
    kept = set()
    for ranked in subjects.values():
        chosen = {subject for subject, value in ranked.items() if value < fraction}
        kept |= chosen or {min(ranked, key=ranked.get)}
    hidden = 0
    for row in rows:
        if row["split"] == "train" and row["subject"] not in kept:
            row["split"], row["label"] = UNLABELLED, ""
            hidden += 1
    return hidden


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
