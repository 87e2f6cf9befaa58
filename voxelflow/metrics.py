"""Classification metrics from predicted probabilities, with bootstrap confidence intervals.

Every metric is computed here with NumPy (one code path for the point estimate and for each
bootstrap resample; the tests check them against scikit-learn):

- accuracy, balanced accuracy (mean recall over the classes present), Cohen's kappa;
- one-vs-rest AUC per class and their mean (macro AUC);
- precision, recall, F1 and support per class; for two classes, sensitivity (recall of the
  second class, the positive one) and specificity (recall of the first);
- log loss (probabilities clipped to [1e-15, 1]), the multi-class Brier score (mean over
  volumes of the summed squared error against the one-hot label: 0 is perfect, 2 the worst;
  for two classes it is twice scikit-learn's binary ``brier_score_loss``) and the expected
  calibration error (confidence = the top probability, equal-width bins).

Intervals come from a stratified percentile bootstrap over test volumes: each resample
draws, within every class, as many volumes as the class has, with replacement (so every
resample holds every class and its AUC is defined), from a seeded generator.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPSILON = 1e-15


def _round(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _check(labels, probabilities, classes) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(labels), len(classes)):
        raise ValueError(
            f"probabilities have shape {probabilities.shape}; "
            f"expected {(len(labels), len(classes))}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must be class indices in [0, {len(classes)}); got {labels}")
    return labels.astype(np.int64), probabilities


def auc_ovr(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` (Mann-Whitney,
    ties counted half); NaN when one side is empty."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(labels, probabilities, bins: int = 15) -> float:
    """ECE: the volume-weighted mean |accuracy - confidence| over equal-width bins of the top
    probability (Guo et al., 2017)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(labels)


def scalar_metrics(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> dict:
    """Every scalar metric of one (re)sample, as floats (NaN where undefined)."""
    n, k = probabilities.shape
    predicted = probabilities.argmax(axis=1)
    confusion = np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)
    support = confusion.sum(axis=1)
    called = confusion.sum(axis=0)
    hits = np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        precision = np.where(called > 0, hits / called, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = np.where(support > 0, f1, 0.0)
    accuracy = hits.sum() / n
    expected = (support * called).sum() / n**2
    onehot = np.eye(k)[labels]
    clipped = np.clip(probabilities / probabilities.sum(axis=1, keepdims=True), EPSILON, 1.0)
    aucs = np.array([auc_ovr(labels == c, probabilities[:, c]) for c in range(k)])
    out = {
        "accuracy": accuracy,
        "balanced_accuracy": np.nanmean(recall),
        "macro_auc_ovr": np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan,
        "cohen_kappa": (accuracy - expected) / (1 - expected) if expected < 1 else np.nan,
        "log_loss": -np.mean(np.log(clipped[np.arange(n), labels])),
        "brier": np.mean(np.sum((probabilities - onehot) ** 2, axis=1)),
        "ece": expected_calibration_error(labels, probabilities, bins),
    }
    if k == 2:
        out["sensitivity"], out["specificity"] = recall[1], recall[0]
    for c in range(k):
        out[f"{c}/precision"], out[f"{c}/recall"] = precision[c], recall[c]
        out[f"{c}/f1"], out[f"{c}/auc_ovr"] = f1[c], aucs[c]
    return out


def bootstrap(
    labels: np.ndarray,
    probabilities: np.ndarray,
    resamples: int,
    seed: int,
    confidence: float = 0.95,
    bins: int = 15,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every scalar metric from a stratified bootstrap."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        index = np.concatenate([rng.choice(group, size=len(group)) for group in groups])
        for key, value in scalar_metrics(labels[index], probabilities[index], bins).items():
            draws.setdefault(key, []).append(value)
    tail = (1 - confidence) / 2 * 100
    intervals = {}
    for key, values in draws.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            low, high = np.percentile(values, [tail, 100 - tail])
            intervals[key] = (float(low), float(high))
    return intervals


def classification_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str],
    resamples: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    bins: int = 15,
) -> dict:
    """All metrics of one test set, with ``confidence`` intervals from ``resamples``
    stratified bootstrap resamples (none when 0), the confusion matrix, the number of test
    volumes per class and the trivial baselines.

    Args:
        labels: true class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, len(classes)).
        classes: class names in index order.
    """
    labels, probabilities = _check(labels, probabilities, classes)
    if not len(labels):
        raise ValueError("no test volumes to compute metrics on")
    point = scalar_metrics(labels, probabilities, bins)
    intervals = (
        bootstrap(labels, probabilities, resamples, seed, confidence, bins) if resamples else {}
    )

    def interval(key: str) -> list[float | None] | None:
        return [_round(v) for v in intervals[key]] if key in intervals else None

    k = len(classes)
    predicted = probabilities.argmax(axis=1)
    counts = np.bincount(labels, minlength=k)
    summary = [
        "accuracy",
        "balanced_accuracy",
        "macro_auc_ovr",
        "cohen_kappa",
        "log_loss",
        "brier",
        "ece",
        *(["sensitivity", "specificity"] if k == 2 else []),
    ]
    result = {
        "test_volumes": int(len(labels)),
        "test_volumes_per_class": {name: int(counts[c]) for c, name in enumerate(classes)},
        **{key: _round(point[key]) for key in summary},
        "per_class": {
            name: {
                "precision": _round(point[f"{c}/precision"]),
                "recall": _round(point[f"{c}/recall"]),
                "f1": _round(point[f"{c}/f1"]),
                "auc_ovr": _round(point[f"{c}/auc_ovr"]),
                "support": int(counts[c]),
            }
            for c, name in enumerate(classes)
        },
        "confusion_matrix": {
            "classes": classes,
            "rows_true_columns_predicted": np.bincount(labels * k + predicted, minlength=k * k)
            .reshape(k, k)
            .tolist(),
        },
        "baselines": {
            "chance_balanced_accuracy": _round(1 / k),
            "majority_class_accuracy": _round(counts.max() / len(labels)),
        },
    }
    if resamples:
        result["confidence_intervals"] = {
            "method": "stratified percentile bootstrap over test volumes",
            "level": confidence,
            "resamples": resamples,
            "seed": seed,
            **{key: interval(key) for key in summary},
            "per_class": {
                name: {
                    metric: interval(f"{c}/{metric}")
                    for metric in ("precision", "recall", "f1", "auc_ovr")
                }
                for c, name in enumerate(classes)
            },
        }
    return result


def _one_vs_rest_curves(labels, probabilities, classes, curve, names) -> dict[str, list[dict]]:
    """``curve(positives, scores)`` -> (x, y) per class present in, and not filling, the set."""
    curves = {}
    for index, name in enumerate(classes):
        positives = np.asarray(labels) == index
        if not 0 < positives.sum() < len(positives):
            continue
        x, y = curve(positives, np.asarray(probabilities)[:, index])
        curves[name] = [
            {names[0]: _round(a), names[1]: _round(b)} for a, b in zip(x, y, strict=True)
        ]
    return curves


def roc_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, list[dict]]:
    """One-vs-rest ROC points per class (classes absent from or filling the test set: none)."""
    from sklearn import metrics as skm

    def curve(positives, scores):
        return skm.roc_curve(positives, scores)[:2]

    return _one_vs_rest_curves(labels, probabilities, classes, curve, ("fpr", "tpr"))


def precision_recall_curves(
    labels: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, list[dict]]:
    """One-vs-rest precision-recall points per class (as :func:`roc_curves`)."""
    from sklearn import metrics as skm

    def curve(positives, scores):
        precision, recall, _ = skm.precision_recall_curve(positives, scores)
        return recall, precision

    return _one_vs_rest_curves(labels, probabilities, classes, curve, ("recall", "precision"))


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = 15) -> list[dict]:
    """The reliability diagram's points: per non-empty confidence bin, its mean confidence,
    accuracy and number of volumes."""
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [
        {
            "bin": int(b),
            "confidence": _round(confidence[which == b].mean()),
            "accuracy": _round(correct[which == b].mean()),
            "volumes": int((which == b).sum()),
        }
        for b in np.unique(which)
    ]
