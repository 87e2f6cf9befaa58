"""The model registry: every promoted model version, and the champion in use.

``models/registry.json`` lists the promoted versions (the bundle copied to
``models/registry/<version>/``, its data version — the hash of the manifest it was trained
on —, params hash, model hash, test metrics and date) and every decision of the retraining
flow (promoted or rejected, both metrics, the reason). The champion is the version in use:
the last promoted one, or the one a person promoted by hand (``voxelflow models promote``),
which is recorded like any other decision.

Every write is atomic (the registry file is replaced whole; a bundle is copied into a
temporary folder and renamed), so a crash leaves the previous registry and champion intact.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from voxelflow.atomic import atomic_dir, file_sha256, write_json

REGISTRY = "registry.json"
BUNDLE_FILES = ("model.keras", "bundle.json")
LOWER_IS_BETTER = ("log_loss", "brier", "ece")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def read_registry(root: str | Path) -> dict:
    """The registry under ``root`` (the models folder); empty when there is none yet."""
    path = Path(root) / REGISTRY
    if not path.is_file():
        return {"champion": None, "versions": [], "decisions": []}
    try:
        registry = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); restore it from git or DVC") from None
    for key in ("versions", "decisions"):
        if not isinstance(registry.get(key), list):
            raise ValueError(f"{path}: '{key}' must be a list")
    return registry


def version_dir(root: str | Path, version: str) -> Path:
    return Path(root) / "registry" / version


def champion(root: str | Path) -> dict | None:
    """The champion's entry (None before the first promotion)."""
    registry = read_registry(root)
    return next((v for v in registry["versions"] if v["version"] == registry["champion"]), None)


def decide(
    challenger: dict, champion_metrics: dict | None, metric: str, margin: float
) -> tuple[bool, str]:
    """Whether the challenger replaces the champion: its ``metric`` must beat the champion's
    by more than ``margin`` (on the same test split; for a loss, be lower by more than that;
    a tie keeps the champion); with no champion it is promoted."""
    value = challenger.get(metric)
    if value is None:
        return False, f"the challenger has no {metric}"
    if champion_metrics is None:
        return True, f"no champion yet; challenger {metric} {value:.4f}"
    incumbent = champion_metrics.get(metric)
    if incumbent is None:
        return True, f"the champion has no {metric}; challenger {metric} {value:.4f}"
    gain = incumbent - value if metric in LOWER_IS_BETTER else value - incumbent
    verdict = gain > margin
    relation = "more than" if verdict else "not more than"
    return verdict, (
        f"challenger {metric} {value:.4f} vs champion {incumbent:.4f}: "
        f"{'better' if gain > 0 else 'not better'} by {abs(gain):.4f}, {relation} the margin "
        f"{margin:.4f}"
    )


def record_decision(root: str | Path, decision: dict) -> None:
    registry = read_registry(root)
    registry["decisions"].append({"date": now(), **decision})
    write_json(Path(root) / REGISTRY, registry)


def promote_bundle(
    root: str | Path,
    bundle_dir: str | Path,
    metrics: dict,
    data_version: str,
    reason: str,
) -> dict:
    """Copies the bundle in as a new version, makes it the champion and records why."""
    root, bundle_dir = Path(root), Path(bundle_dir)
    for name in BUNDLE_FILES:
        if not (bundle_dir / name).is_file():
            raise ValueError(f"{bundle_dir / name}: missing; not a model bundle")
    registry = read_registry(root)
    version = f"v{len(registry['versions']) + 1}"
    bundle = json.loads((bundle_dir / "bundle.json").read_text())
    with atomic_dir(version_dir(root, version)) as staging:
        for item in bundle_dir.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
    entry = {
        "version": version,
        "promoted": now(),
        "data_version": data_version,
        "params_hash": bundle.get("params_hash"),
        "model_hash": file_sha256(bundle_dir / "model.keras"),
        "metrics": metrics,
        "reason": reason,
    }
    registry["versions"].append(entry)
    registry["champion"] = version
    registry["decisions"].append(
        {"date": entry["promoted"], "decision": "promoted", "version": version, "reason": reason}
    )
    write_json(root / REGISTRY, registry)
    return entry


def set_champion(root: str | Path, version: str, reason: str) -> dict:
    """Makes an earlier (or the current) version the champion by hand, and records it."""
    registry = read_registry(root)
    entry = next((v for v in registry["versions"] if v["version"] == version), None)
    if entry is None:
        known = ", ".join(v["version"] for v in registry["versions"]) or "none"
        raise ValueError(f"no model version {version!r} in the registry (versions: {known})")
    if not (version_dir(root, version) / "model.keras").is_file():
        raise ValueError(f"{version_dir(root, version)}: the bundle of {version} is missing")
    previous = registry["champion"]
    registry["champion"] = version
    registry["decisions"].append(
        {
            "date": now(),
            "decision": "manual promotion",
            "version": version,
            "previous_champion": previous,
            "reason": reason,
        }
    )
    write_json(Path(root) / REGISTRY, registry)
    return entry


def evaluate_on_split(
    bundle_dir: str | Path,
    manifest_csv: str | Path,
    data_dir: str | Path,
    ids: list[str],
    resamples: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    bins: int = 15,
) -> dict:
    """A bundle's metrics on the manifest volumes ``ids`` (in that order), each file
    preprocessed with the bundle's own spec, so a champion trained under other
    preprocessing params is scored on the very volumes, and the same way, as the
    challenger."""
    from voxelflow.dataset import read_rows
    from voxelflow.metrics import classification_metrics
    from voxelflow.predictor import predict

    rows = {row["id"]: row for row in read_rows(manifest_csv)}
    missing = [identifier for identifier in ids if identifier not in rows]
    if missing or not ids:
        raise ValueError(f"{manifest_csv}: no volumes {missing[:5] or ids} to evaluate on")
    chosen = [rows[identifier] for identifier in ids]
    files = [Path(data_dir) / row["path"] for row in chosen]
    result = predict(bundle_dir, files)
    if result.rejected:
        raise ValueError(
            f"{bundle_dir}: could not predict {len(result.rejected)} test volumes: "
            f"{result.rejected[0]['path']}: {result.rejected[0]['reason']}"
        )
    classes = result.classes
    unknown = sorted({row["label"] for row in chosen} - set(classes))
    if unknown:
        raise ValueError(f"{bundle_dir}: the test split has classes {unknown} it never saw")
    labels = [classes.index(row["label"]) for row in chosen]
    probabilities = [[p[f"p_{name}"] for name in classes] for p in result.rows]
    return classification_metrics(labels, probabilities, classes, resamples, seed, confidence, bins)
