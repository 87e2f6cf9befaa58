"""Classification metrics from predicted probabilities (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def _round(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict:
    """Accuracy, balanced accuracy, macro one-vs-rest AUC, per-class precision/recall/F1,
    the confusion matrix and the trivial baselines, for one test set.

    Args:
        labels: true class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, len(classes)).
        classes: class names in index order.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}; "
            f"expected {(len(labels), len(classes))}"
        )
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    per_class_auc = {}
    for index, name in enumerate(classes):
        positives = labels == index
        per_class_auc[name] = (
            _round(skm.roc_auc_score(positives, probabilities[:, index]))
            if 0 < positives.sum() < len(labels)
            else None
        )
    aucs = [value for value in per_class_auc.values() if value is not None]
    majority = np.bincount(labels, minlength=len(classes)).argmax()
    return {
        "test_volumes": int(len(labels)),
        "accuracy": _round(skm.accuracy_score(labels, predicted)),
        "balanced_accuracy": _round(skm.balanced_accuracy_score(labels, predicted)),
        "macro_auc_ovr": _round(np.mean(aucs)) if aucs else None,
        "per_class": {
            name: {
                "precision": _round(precision[index]),
                "recall": _round(recall[index]),
                "f1": _round(f1[index]),
                "auc_ovr": per_class_auc[name],
                "support": int(support[index]),
            }
            for index, name in enumerate(classes)
        },
        "confusion_matrix": {
            "classes": classes,
            "rows_true_columns_predicted": skm.confusion_matrix(
                labels, predicted, labels=indices
            ).tolist(),
        },
        "baselines": {
            "chance_balanced_accuracy": _round(1 / len(classes)),
            "majority_class_accuracy": _round(np.mean(labels == majority)),
        },
    }


def roc_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, list[dict]]:
    """One-vs-rest ROC points per class (classes absent from or filling the test set: none)."""
    curves = {}
    for index, name in enumerate(classes):
        positives = np.asarray(labels) == index
        if not 0 < positives.sum() < len(positives):
            continue
        fpr, tpr, _ = skm.roc_curve(positives, np.asarray(probabilities)[:, index])
        curves[name] = [{"fpr": _round(x), "tpr": _round(y)} for x, y in zip(fpr, tpr, strict=True)]
    return curves
