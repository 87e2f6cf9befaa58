"""``voxelflow predict``: a model bundle applied to new NIfTI files.

New files go through the ingest checks (``voxelflow.ingest.check_volume``, with the ingest
params the bundle was trained with) and the preprocessing spec stored in the bundle — never
the current ``params.yaml`` — then :func:`voxelflow.inference.predict_arrays`, as the
evaluate stage does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voxelflow.atomic import write_csv
from voxelflow.bundle import load_bundle
from voxelflow.inference import predict_arrays
from voxelflow.ingest import Candidate, check_volume
from voxelflow.labels import Rejection, volume_stem
from voxelflow.nifti import is_volume_file
from voxelflow.preprocess import PreprocessSpec, preprocess_manifest_row

log = logging.getLogger("voxelflow.predictor")


@dataclass
class Predictions:
    """What ``predict`` did: a row per predicted file, and the files it could not use."""

    classes: list[str]
    rows: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        return ["id", "path", "predicted", *(f"p_{name}" for name in self.classes)]


def find_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[dict]]:
    """Volume files named or found (recursively, sorted) in the folders named; the inputs
    that are neither, with the reason."""
    files, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                path
                for path in item.rglob("*")
                if path.is_file() and not path.name.startswith(".") and is_volume_file(path)
            )
            if not found:
                problems.append({"path": str(item), "reason": "folder holds no NIfTI/Analyze file"})
            files += found
        elif item.is_file():
            if is_volume_file(item):
                files.append(item)
            else:
                problems.append(
                    {"path": str(item), "reason": "not a volume file (NIfTI/Analyze header)"}
                )
        else:
            problems.append({"path": str(item), "reason": "no such file or folder"})
    unique = list(dict.fromkeys(path.resolve() for path in files))
    return unique, problems


def _ids(files: list[Path]) -> list[str]:
    """The file stem, or the path without its extension where two files share a stem."""
    stems = [volume_stem(path.name) for path in files]
    return [
        stem if stems.count(stem) == 1 else volume_stem(path.as_posix())
        for stem, path in zip(stems, files, strict=True)
    ]


def predict(
    bundle_dir: str | Path,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Predictions:
    """Predicts the class of every NIfTI file in ``inputs`` (files or folders) with the
    model bundle in ``bundle_dir``.

    Every file is checked as ingest checks it and preprocessed with the bundle's own spec;
    files that fail are listed in ``Predictions.rejected`` with the reason while the others
    are still predicted. With ``out``, writes the predictions CSV (id, path, predicted
    class, one probability column per class) and, when some files were refused, a
    ``<out>.rejected.csv`` beside it.
    """
    model, bundle = load_bundle(bundle_dir)
    spec = PreprocessSpec.from_dict(bundle["preprocess"])
    ingest = bundle["params"]["ingest"]
    classes = list(bundle["classes"])
    result = Predictions(classes)
    files, result.rejected = find_inputs(inputs)
    from tqdm import tqdm

    batch: list[tuple[str, Path, np.ndarray]] = []  # at most one batch of arrays in memory

    def flush() -> None:
        probabilities = predict_arrays(model, lambda i: batch[i][2], len(batch), batch_size)
        for (identifier, path, _), probs in zip(batch, probabilities, strict=True):
            result.rows.append(
                {
                    "id": identifier,
                    "path": str(path),
                    "predicted": classes[int(np.argmax(probs))],
                    **{
                        f"p_{name}": round(float(p), 6)
                        for name, p in zip(classes, probs, strict=True)
                    },
                }
            )
        batch.clear()

    pairs = list(zip(_ids(files), files, strict=True))
    for identifier, path in tqdm(pairs, desc="predicting", unit="file", disable=not progress):
        candidate = Candidate(
            id=identifier,
            path=path.name,
            label="",
            subject=identifier,
            split="",
            data_dir=str(path.parent),
            max_voxels=ingest["max_voxels"],
            min_size=ingest["min_size"],
            volume_index=ingest["volume_index"],
            non_finite=ingest["non_finite"],
            seed=0,
        )
        checked = check_volume(candidate)
        if isinstance(checked, Rejection):
            result.rejected.append({"path": str(path), "reason": checked.reason})
            continue
        row, array = preprocess_manifest_row(checked.row, path.parent, spec)
        if array is None:
            result.rejected.append({"path": str(path), "reason": row["reason"]})
            continue
        batch.append((identifier, path, array))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    for problem in result.rejected:
        log.warning("not predicted: %s: %s", problem["path"], problem["reason"])
    if out is not None:
        out = Path(out)
        write_csv(out, result.rows, result.columns)
        rejected_csv = out.with_name(out.stem + ".rejected.csv")
        if result.rejected:
            write_csv(rejected_csv, result.rejected, ("path", "reason"))
        elif rejected_csv.exists():
            rejected_csv.unlink()  # from an earlier run: not about these inputs
    return result
