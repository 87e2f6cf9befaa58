"""The labels table: parsing and per-row validation.

The table is a CSV with a header: ``id`` and ``label`` required, ``path`` (relative to the
data folder; when absent, files are matched by ``id`` as their name stem), optional
``subject`` and ``split``. A malformed table as a whole raises ``ValueError``; a bad row is
returned as a rejection naming the row, the value and what was expected.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from voxelflow.nifti import is_volume_file

REQUIRED_COLUMNS = ("id", "label")
OPTIONAL_COLUMNS = ("path", "subject", "split")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelRow:
    id: str
    path: str
    label: str
    subject: str
    split: str
    row: int


@dataclass(frozen=True)
class Rejection:
    input: str
    reason: str


def volume_stem(name: str) -> str:
    """The file name without its volume extension(s): ``a.nii.gz`` -> ``a``."""
    lowered = name.lower()
    for suffix in (".nii.gz", ".nii", ".mgz", ".mgh", ".hdr", ".img"):
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_relative_path(data_dir: Path, value: str) -> tuple[str | None, str]:
    """Checks that ``value`` names a file inside ``data_dir``; returns (posix path, problem)."""
    if not value:
        return None, "empty path"
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or (len(value) > 1 and value[1] == ":"):
        return None, f"absolute path {value!r}; expected a path relative to the data folder"
    if ".." in pure.parts:
        return None, f"path {value!r} escapes the data folder ('..' is not allowed)"
    root = data_dir.resolve()
    target = (data_dir / pure).resolve()
    if not target.is_relative_to(root):
        return None, f"path {value!r} resolves outside the data folder (symlink to {target})"
    if not target.is_file():
        return None, f"path {value!r} does not exist in {data_dir}"
    return pure.as_posix(), ""


def read_table(labels_csv: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of the table; ``ValueError`` when the table as a whole is malformed."""
    try:
        text = labels_csv.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{labels_csv}: labels table not found") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{labels_csv}: not UTF-8 text ({error})") from None
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in (reader.fieldnames or [])]
    if not header:
        raise ValueError(f"{labels_csv}: empty table; expected a header with columns id,path,label")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ValueError(
            f"{labels_csv}: missing required column(s) {missing}; header is {header}, "
            f"expected {list(REQUIRED_COLUMNS)} plus optional {list(OPTIONAL_COLUMNS)}"
        )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise ValueError(f"{labels_csv}: duplicate column(s) {duplicated}")
    reader.fieldnames = header
    rows = []
    for row in reader:
        if None in row:
            rows.append({"__extra__": "too many cells", **{k: v for k, v in row.items() if k}})
        else:
            rows.append({key: (value or "").strip() for key, value in row.items()})
    return header, rows


def parse_labels(
    labels_csv: str | Path,
    data_dir: str | Path,
    classes: list[str] | None = None,
) -> tuple[list[LabelRow], list[Rejection]]:
    """Validates every row of the table against the data folder.

    Args:
        labels_csv: the table.
        data_dir: the folder that ``path`` cells are relative to.
        classes: the allowed labels; ``None`` accepts any non-empty label.

    Returns:
        The valid rows, and a rejection for each invalid row (row number counted from the
        header = 1, as a spreadsheet shows it).
    """
    labels_csv, data_dir = Path(labels_csv), Path(data_dir)
    header, rows = read_table(labels_csv)
    stems: dict[str, list[Path]] = {}
    if "path" not in header:
        for file in sorted(data_dir.rglob("*")):
            if file.is_file() and is_volume_file(file):
                stems.setdefault(volume_stem(file.name), []).append(file)
    accepted: list[LabelRow] = []
    rejected: list[Rejection] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        where = f"{labels_csv.name} row {number}"
        identifier = row.get("id", "")

        def reject(reason: str, where: str = where, identifier: str = identifier) -> None:
            rejected.append(Rejection(f"{where} (id={identifier!r})", reason))

        if "__extra__" in row:
            reject("the row has more cells than the header")
            continue
        if not identifier:
            reject("empty id; expected a unique identifier")
            continue
        if identifier in seen:
            reject(f"duplicate id {identifier!r}, first used on row {seen[identifier]}")
            continue
        seen[identifier] = number
        label = row.get("label", "")
        if not label:
            reject("empty label; unlabelled volumes belong in the unlabelled folder")
            continue
        if classes is not None and label not in classes:
            reject(f"unknown label {label!r}; expected one of {classes}")
            continue
        split = row.get("split", "")
        if split and split not in SPLITS:
            reject(f"unknown split {split!r}; expected one of {list(SPLITS)} or empty")
            continue
        if "path" in header:
            path, problem = safe_relative_path(data_dir, row.get("path", ""))
            if problem:
                reject(problem)
                continue
        else:
            matches = stems.get(identifier, [])
            if len(matches) != 1:
                reject(
                    f"no volume file named {identifier}.*"
                    if not matches
                    else f"{len(matches)} files match id {identifier!r}: "
                    f"{[str(m.relative_to(data_dir)) for m in matches]}"
                )
                continue
            path = matches[0].relative_to(data_dir).as_posix()
        subject = row.get("subject", "") or identifier
        accepted.append(LabelRow(identifier, path, label, subject, split, number))
    return accepted, rejected
