"""The labels table: parsing and per-row validation.

The table is a CSV with a header: ``id`` and ``label`` required, ``path`` (relative to the
data folder; when absent, files are matched by ``id`` as their name stem), optional
``subject`` and ``split``. A malformed table as a whole raises ``ValueError``; a bad row is
returned as a rejection naming the row, the value and what was expected.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from voxelflow.atomic import unescape_cell
from voxelflow.nifti import ALL_SUFFIXES, is_volume_file

REQUIRED_COLUMNS = ("id", "label")
OPTIONAL_COLUMNS = ("path", "subject", "split")
SPLITS = ("train", "val", "test")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    suffix = next((suffix for suffix in ALL_SUFFIXES if lowered.endswith(suffix)), "")
    return name[: len(name) - len(suffix)]


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
        # unescaped: voxelflow's own tables (synth, import-npz) escape spreadsheet formulas
        cells = {key: unescape_cell((value or "").strip()) for key, value in row.items() if key}
        if None in row:
            cells["__extra__"] = "too many cells"
        cells["__line__"] = str(reader.line_num)  # the file's line, blank lines counted
        rows.append(cells)
    return header, rows


@dataclass
class ParsedLabels:
    """The valid rows, a rejection per invalid row, and every path any row named."""

    rows: list[LabelRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    referenced: set[str] = field(default_factory=set)


def parse_labels(
    labels_csv: str | Path,
    data_dir: str | Path,
    classes: list[str] | None = None,
) -> ParsedLabels:
    """Validates every row of the table against the data folder.

    Args:
        labels_csv: the table.
        data_dir: the folder that ``path`` cells are relative to.
        classes: the allowed labels; ``None`` accepts any non-empty label.

    Returns:
        The valid rows, a rejection for each invalid row (numbered by the file's line, the
        header being line 1, as a spreadsheet shows it), and the paths all rows named
        (so a file whose row was refused is not reported a second time as unlisted).
    """
    labels_csv, data_dir = Path(labels_csv), Path(data_dir)
    header, rows = read_table(labels_csv)
    stems: dict[str, list[Path]] = {}
    if "path" not in header:
        for file in sorted(data_dir.rglob("*")):
            if file.is_file() and is_volume_file(file):
                stems.setdefault(volume_stem(file.name), []).append(file)
    parsed = ParsedLabels()
    accepted, rejected = parsed.rows, parsed.rejected
    seen: dict[str, int] = {}
    named_by: dict[str, int] = {}
    for row in rows:
        number = int(row["__line__"])
        where = f"{labels_csv.name} row {number}"
        identifier = row.get("id", "")
        if "path" in header:
            named, _ = safe_relative_path(data_dir, row.get("path", ""))
            raw = PurePosixPath(row.get("path", "").replace("\\", "/"))
            if named is None and raw.parts and not raw.is_absolute() and ".." not in raw.parts:
                named = raw.as_posix()  # e.g. a symlink out of the folder: the row answers it
        else:
            found = stems.get(identifier, [])
            named = found[0].relative_to(data_dir).as_posix() if len(found) == 1 else None
        if named:
            parsed.referenced.add(named)

        def reject(reason: str, where: str = where, identifier: str = identifier) -> None:
            rejected.append(Rejection(f"{where} (id={identifier!r})", reason))

        if "__extra__" in row:
            reject("the row has more cells than the header")
            continue
        if not identifier:
            reject("empty id; expected a unique identifier")
            continue
        if not SAFE_NAME.match(identifier):
            reject(
                f"id {identifier!r} has characters other than letters, digits, '.', '_' and "
                "'-' (ids become file names)"
            )
            continue
        if identifier in seen:
            reject(f"duplicate id {identifier!r}, first used on row {seen[identifier]}")
            continue
        seen[identifier] = number
        label = row.get("label", "")
        if not label:
            reject("empty label; unlabelled volumes belong in the unlabelled folder")
            continue
        if not SAFE_NAME.match(label):
            reject(f"label {label!r} has characters other than letters, digits, '.', '_', '-'")
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
        if path in named_by:
            reject(f"path {path!r} is already named by row {named_by[path]}; one row per file")
            continue
        named_by[path] = number
        subject = row.get("subject", "") or identifier
        accepted.append(LabelRow(identifier, path, label, subject, split, number))
    return parsed
