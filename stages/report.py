"""Stage `report`: the pictures and the stand-alone HTML report of the evaluated model.

    python -m stages.report --model models/classifier --pretrained models/pretrained \
        --preprocessed data/preprocessed --ingested data/ingested --metrics metrics \
        --out reports --history metrics/evaluations.jsonl

Writes ``reports/index.html`` (images embedded: it stands alone) and the same pictures as
PNG files in ``reports/figures/``: confusion matrices (counts, normalised), ROC and
precision-recall curves per class, the reliability diagram, training curves (pretrain and
fine-tune), a gallery of the most confident errors (orthogonal slices) and Grad-CAM maps
of a few correctly classified test volumes per class. The report compares the model with
the previous one evaluated in this workspace: ``--history`` (a DVC ``persist`` output)
keeps one line per evaluated model.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import yaml

from voxelflow import figures
from voxelflow.atomic import atomic_dir, file_sha256
from voxelflow.bundle import load_bundle
from voxelflow.dataset import load_array, read_index, read_rows
from voxelflow.metrics import precision_recall_curves, reliability, roc_curves
from voxelflow.params import Params, load_params
from voxelflow.report import previous_evaluation, read_history, record_evaluation, render
from voxelflow.runtime import stage_process
from voxelflow.saliency import grad_cam

log = logging.getLogger("voxelflow.stages.report")

OUTPUTS = ("index.html", "figures")


def _history(path: Path) -> dict[str, list[float]]:
    """A history CSV as columns (empty when the file is absent)."""
    rows = read_rows(path) if path.is_file() else []
    keys = [key for key in (rows[0] if rows else {}) if key != "epoch"]
    return {key: [float(row[key]) if row[key] else float("nan") for row in rows] for key in keys}


def _predictions(path: Path, classes: list[str]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no predictions; run the evaluate stage first")
    labels = np.array([classes.index(row["actual"]) for row in rows])
    probabilities = np.array([[float(row[f"p_{name}"]) for name in classes] for row in rows])
    return rows, labels, probabilities


def most_confident_errors(rows: list[dict], probabilities: np.ndarray, count: int) -> list[int]:
    """Indices of misclassified rows, most confident (highest top probability) first."""
    wrong = [i for i, row in enumerate(rows) if row["actual"] != row["predicted"]]
    return sorted(wrong, key=lambda i: (-probabilities[i].max(), rows[i]["id"]))[:count]


def saliency_examples(labels, probabilities, per_class: int) -> list[int]:
    """Per class, the correctly classified test volumes it is most sure of."""
    chosen = []
    predicted = probabilities.argmax(axis=1)
    for index in np.unique(labels):
        right = np.flatnonzero((labels == index) & (predicted == index))
        order = right[np.argsort(-probabilities[right, index], kind="stable")]
        chosen += order[:per_class].tolist()
    return chosen


def _model_facts(brief: dict) -> dict:
    counts = brief.get("parameters", {})
    field = brief.get("encoder_receptive_field", {})
    return {
        "weights": f"{counts.get('total', '?')} ({counts.get('trainable', '?')} trainable, "
        f"{counts.get('frozen', '?')} frozen, {counts.get('statistics', 0)} statistics)",
        "GMACs per volume": brief.get("gmacs_per_volume"),
        "encoder receptive field": ", ".join(f"{k} {v}" for k, v in field.items()),
    }


def run(
    model_dir: str | Path,
    pretrained_dir: str | Path,
    preprocessed_dir: str | Path,
    ingested_dir: str | Path,
    metrics_dir: str | Path,
    out_dir: str | Path,
    params: Params,
    history_path: str | Path | None = None,
) -> dict:
    """Writes the report into ``out_dir`` (atomically) and records this evaluation."""
    settings = params.evaluate
    model_dir, metrics_dir = Path(model_dir), Path(metrics_dir)
    metrics_file = metrics_dir / "eval.json"
    if not metrics_file.is_file():
        raise ValueError(f"{metrics_file}: missing; run the evaluate stage first")
    metrics = json.loads(metrics_file.read_text())
    model, bundle = load_bundle(model_dir)
    classes = bundle["classes"]
    rows, labels, probabilities = _predictions(metrics_dir / "predictions.csv", classes)
    arrays = {row["id"]: row for row in read_index(preprocessed_dir, ("test",))}
    missing = [row["id"] for row in rows if row["id"] not in arrays]
    if missing:
        raise ValueError(
            f"{preprocessed_dir}: test volumes {missing[:5]} of the predictions are not in the "
            "test split; rerun evaluate"
        )

    def volume(i: int) -> np.ndarray:
        return load_array(preprocessed_dir, arrays[rows[i]["id"]]).astype(np.float32)

    model_hash = file_sha256(model_dir / "model.keras")
    history = read_history(history_path) if history_path else []
    previous = previous_evaluation(history, model_hash)
    data = json.loads((Path(ingested_dir) / "ingest_report.json").read_text())
    histories = {
        "pretrain": _history(Path(pretrained_dir) / "history.csv"),
        "finetune": _history(model_dir / "history.csv"),
    }
    with atomic_dir(out_dir, OUTPUTS) as staging:
        folder = staging / "figures"
        paths = {
            "confusion": figures.confusion_figure(
                metrics["confusion_matrix"]["rows_true_columns_predicted"],
                classes,
                folder / "confusion.png",
            ),
            "roc": figures.curves_figure(
                roc_curves(labels, probabilities, classes),
                "fpr",
                "tpr",
                "ROC, one class against the rest (test)",
                folder / "roc.png",
                diagonal=True,
                labels={
                    name: f"{name} (AUC {values['auc_ovr']:.3f})"
                    for name, values in metrics["per_class"].items()
                    if values["auc_ovr"] is not None
                },
            ),
            "pr": figures.curves_figure(
                precision_recall_curves(labels, probabilities, classes),
                "recall",
                "precision",
                "Precision-recall, one class against the rest (test)",
                folder / "pr.png",
            ),
            "reliability": figures.reliability_figure(
                reliability(labels, probabilities, settings.calibration_bins),
                metrics.get("ece"),
                folder / "reliability.png",
            ),
            "training": figures.training_curves_figure(histories, folder / "training.png"),
        }
        errors = most_confident_errors(rows, probabilities, settings.gallery_errors)
        paths["errors"] = figures.slices_gallery(
            [
                {
                    "volume": volume(i),
                    "title": f"{rows[i]['id']}\ntrue {rows[i]['actual']}\n"
                    f"predicted {rows[i]['predicted']} ({probabilities[i].max():.2f})",
                }
                for i in errors
            ],
            folder / "errors.png",
            f"The {len(errors)} most confident errors of {len(rows)} test volumes",
        )
        examples = []
        for i in saliency_examples(labels, probabilities, settings.saliency_per_class):
            array = volume(i)
            cam = grad_cam(model, array, int(labels[i]))
            examples.append(
                {
                    "volume": array,
                    "overlay": cam,
                    "center": np.unravel_index(int(cam.argmax()), cam.shape),
                    "title": f"{rows[i]['id']}\n{rows[i]['actual']} "
                    f"({probabilities[i, labels[i]]:.2f})",
                }
            )
        paths["saliency"] = figures.slices_gallery(
            examples, folder / "saliency.png", "Grad-CAM of the true class"
        )
        context = {
            "title": f"voxelflow report: {bundle['architecture']} classifier of "
            f"{', '.join(classes)}",
            "subtitle": f"model {model_hash[:12]}, params {bundle['params_hash']}, "
            f"written {time.strftime('%Y-%m-%d %H:%M')}",
            "metrics": metrics,
            "classes": classes,
            "data": data,
            "model": _model_facts(bundle.get("model", {})),
            "training": {
                "best epoch": bundle.get("best_epoch"),
                "epochs run": bundle.get("epochs_run"),
                "training samples": bundle.get("train_samples"),
                "validation volumes": bundle.get("val_volumes"),
                "frozen blocks": ", ".join(bundle.get("frozen_blocks", [])) or "none",
                "pretraining": bundle.get("params", {}).get("pretrain", {}).get("mode"),
                "training seconds": bundle.get("seconds"),
            },
            "params": yaml.safe_dump(bundle.get("params", {}), sort_keys=False),
            "previous": previous,
        }
        (staging / "index.html").write_text(render(context, paths))
    if history_path:
        record_evaluation(
            history_path,
            {
                "model_hash": model_hash,
                "params_hash": bundle["params_hash"],
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "metrics": {
                    key: metrics.get(key)
                    for key in (
                        "test_volumes",
                        "accuracy",
                        "balanced_accuracy",
                        "macro_auc_ovr",
                        "cohen_kappa",
                        "sensitivity",
                        "specificity",
                        "log_loss",
                        "brier",
                        "ece",
                    )
                },
            },
        )
    summary = {
        "report": str(Path(out_dir) / "index.html"),
        "figures": sorted(path.name for path in paths.values()),
        "errors_shown": len(errors),
        "saliency_maps": len(examples),
        "compared_with": previous["model_hash"][:12] if previous else None,
    }
    log.info("report: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the HTML report of the evaluated model.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--preprocessed", required=True)
    parser.add_argument("--ingested", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--history", help="evaluation history (JSON lines), for comparisons")
    args = parser.parse_args(argv)
    with stage_process("report"):
        run(
            args.model,
            args.pretrained,
            args.preprocessed,
            args.ingested,
            args.metrics,
            args.out,
            load_params(args.params),
            args.history,
        )


if __name__ == "__main__":
    main()
