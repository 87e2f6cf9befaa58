"""Stage `evaluate`: the model bundle on the test split.

    python -m stages.evaluate --model models/classifier --preprocessed data/preprocessed \
        --metrics metrics --plots plots

Writes ``metrics/eval.json`` (DVC metrics), ``metrics/predictions.csv`` and DVC plots:
``plots/confusion.csv`` (one row per test volume) and ``plots/roc/<class>.csv``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from voxelflow.atomic import atomic_dir, write_csv, write_json
from voxelflow.bundle import load_bundle
from voxelflow.data import classification_dataset, preprocessed_source, steps_per_epoch
from voxelflow.metrics import classification_metrics, roc_curves
from voxelflow.params import Params, load_params
from voxelflow.runtime import setup_logging

log = logging.getLogger("voxelflow.stages.evaluate")


def run(
    model_dir: str | Path,
    preprocessed_dir: str | Path,
    metrics_dir: str | Path,
    plots_dir: str | Path,
    params: Params,
) -> dict:
    """Evaluates the bundle on the test split and writes metrics and plots."""
    model, bundle = load_bundle(model_dir)
    classes = bundle["classes"]
    test = preprocessed_source(preprocessed_dir, ("test",), classes)
    if not len(test):
        raise ValueError(f"{preprocessed_dir}: the test split is empty")
    shape = tuple(bundle["preprocess"]["target_shape"])
    dataset = classification_dataset(test, params.evaluate.batch_size, shape, shuffle=False)
    probabilities = model.predict(
        dataset.map(lambda volume, label: volume),
        steps=steps_per_epoch(len(test), params.evaluate.batch_size),
        verbose=0,
    )
    labels = np.asarray(test.labels)
    result = classification_metrics(labels, probabilities, classes)
    result["model"] = {
        "architecture": bundle["architecture"],
        "params_hash": bundle["params_hash"],
        "best_epoch": bundle["best_epoch"],
        "val_metrics": bundle["val_metrics"],
    }
    predicted = probabilities.argmax(axis=1)
    rows = [
        {
            "id": identifier,
            "actual": classes[label],
            "predicted": classes[guess],
            **{f"p_{name}": round(float(p), 6) for name, p in zip(classes, probs, strict=True)},
        }
        for identifier, label, guess, probs in zip(
            test.ids, labels, predicted, probabilities, strict=True
        )
    ]
    with atomic_dir(plots_dir, ("confusion.csv", "roc")) as staging:
        write_csv(staging / "confusion.csv", rows, ("id", "actual", "predicted"))
        for name, points in roc_curves(labels, probabilities, classes).items():
            write_csv(staging / "roc" / f"{name}.csv", points, ("fpr", "tpr"))
    # file by file (each atomic), eval.json last: metrics/ also holds finetune.json
    Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    write_csv(Path(metrics_dir) / "predictions.csv", rows, list(rows[0]))
    write_json(Path(metrics_dir) / "eval.json", result)
    log.info(
        "evaluate: accuracy %.3f, balanced accuracy %.3f, macro AUC %s on %d test volumes",
        result["accuracy"],
        result["balanced_accuracy"],
        result["macro_auc_ovr"],
        len(labels),
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
    setup_logging()
    run(args.model, args.preprocessed, args.metrics, args.plots, load_params(args.params))


if __name__ == "__main__":
    main()
