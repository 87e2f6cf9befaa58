"""Stage `evaluate`: the model bundle on the test split.

    python -m stages.evaluate --model models/classifier --preprocessed data/preprocessed \
        --metrics metrics --plots plots

Writes ``metrics/eval.json`` (DVC metrics: every metric with its bootstrap interval, and
with ``evaluate.tta`` the same for the test-time-augmented prediction beside the plain one),
``metrics/predictions.csv`` (one row per test volume) and the DVC plots' data:
``plots/confusion.csv``, ``plots/roc/<class>.csv``, ``plots/pr/<class>.csv`` and
``plots/reliability.csv``. The pictures and the HTML report are the ``report`` stage's.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from voxelflow.atomic import atomic_dir, sweep_stale, write_csv, write_json
from voxelflow.bundle import load_bundle
from voxelflow.data import preprocessed_source
from voxelflow.inference import predict_arrays, tta_variants
from voxelflow.metrics import (
    classification_metrics,
    precision_recall_curves,
    reliability,
    roc_curves,
)
from voxelflow.params import EvaluateParams, Params, load_params
from voxelflow.runtime import stage_process

log = logging.getLogger("voxelflow.stages.evaluate")

PLOTS = ("confusion.csv", "roc", "pr", "reliability.csv")


def _metrics(labels, probabilities, classes, settings: EvaluateParams, seed: int) -> dict:
    return classification_metrics(
        labels,
        probabilities,
        classes,
        resamples=settings.bootstrap_resamples,
        seed=seed,
        confidence=settings.confidence,
        bins=settings.calibration_bins,
    )


def _rows(ids, labels, probabilities, classes, tta=None) -> list[dict]:
    rows = []
    for index, identifier in enumerate(ids):
        label, probs = labels[index], probabilities[index]
        row = {
            "id": identifier,
            "actual": classes[label],
            "predicted": classes[int(np.argmax(probs))],
            **{f"p_{name}": round(float(p), 6) for name, p in zip(classes, probs, strict=True)},
        }
        if tta is not None:
            row["predicted_tta"] = classes[int(np.argmax(tta[index]))]
            for name, p in zip(classes, tta[index], strict=True):
                row[f"p_tta_{name}"] = round(float(p), 6)
        rows.append(row)
    return rows


def run(
    model_dir: str | Path,
    preprocessed_dir: str | Path,
    metrics_dir: str | Path,
    plots_dir: str | Path,
    params: Params,
) -> dict:
    """Evaluates the bundle on the test split and writes metrics and plot data."""
    settings = params.evaluate
    model, bundle = load_bundle(model_dir)
    classes = bundle["classes"]
    test = preprocessed_source(preprocessed_dir, ("test",), classes)
    if not len(test):
        raise ValueError(f"{preprocessed_dir}: the test split is empty")
    shape = tuple(bundle["preprocess"]["target_shape"])
    if tuple(test.read(0).shape) != shape:
        raise ValueError(
            f"{preprocessed_dir}: volumes of {test.read(0).shape}, but the model was trained "
            f"on {shape}; rerun preprocess (or evaluate the matching model)"
        )
    probabilities = predict_arrays(model, test.read, len(test), settings.batch_size)
    labels = np.asarray(test.labels)
    result = _metrics(labels, probabilities, classes, settings, params.seed)
    tta = None
    if settings.tta:
        variants = tta_variants(settings.tta_flip_axes, settings.tta_rotation_degrees)
        tta = predict_arrays(model, test.read, len(test), settings.batch_size, variants)
        result["tta"] = {
            "passes": [name for name, _ in variants],
            **_metrics(labels, tta, classes, settings, params.seed),
        }
    result["model"] = {
        "architecture": bundle["architecture"],
        "params_hash": bundle["params_hash"],
        "best_epoch": bundle["best_epoch"],
        "val_metrics": bundle["val_metrics"],
    }
    rows = _rows(test.ids, labels, probabilities, classes, tta)
    with atomic_dir(plots_dir, PLOTS) as staging:
        write_csv(staging / "confusion.csv", rows, ("id", "actual", "predicted"))
        for name, points in roc_curves(labels, probabilities, classes).items():
            write_csv(staging / "roc" / f"{name}.csv", points, ("fpr", "tpr"))
        for name, points in precision_recall_curves(labels, probabilities, classes).items():
            write_csv(staging / "pr" / f"{name}.csv", points, ("recall", "precision"))
        write_csv(
            staging / "reliability.csv",
            reliability(labels, probabilities, settings.calibration_bins),
            ("bin", "confidence", "accuracy", "volumes"),
        )
    # file by file (each atomic), eval.json last: metrics/ also holds finetune.json
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    sweep_stale(metrics_dir)  # what a killed writer of metrics/ left
    write_csv(Path(metrics_dir) / "predictions.csv", rows, list(rows[0]))
    write_json(Path(metrics_dir) / "eval.json", result)
    intervals = result.get("confidence_intervals", {})
    log.info(
        "evaluate: balanced accuracy %.3f %s, macro AUC %s %s on %d test volumes%s",
        result["balanced_accuracy"],
        intervals.get("balanced_accuracy", ""),
        result["macro_auc_ovr"],
        intervals.get("macro_auc_ovr", ""),
        len(labels),
        f"; with TTA {result['tta']['balanced_accuracy']:.3f}" if tta is not None else "",
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate the model bundle on the test split.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True)
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--plots", required=True)
    args = parser.parse_args(argv)
    with stage_process("evaluate"):
        run(args.model, args.preprocessed, args.metrics, args.plots, load_params(args.params))


if __name__ == "__main__":
    main()
