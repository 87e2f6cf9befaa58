"""Trivial baselines that a 3D CNN must beat: what global intensity statistics alone reveal."""

from __future__ import annotations

import numpy as np

PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


def global_intensity_features(volume: np.ndarray) -> list[float]:
    """Mean, standard deviation and percentiles of the whole volume: no spatial information."""
    volume = np.asarray(volume, dtype=np.float64)
    return [float(volume.mean()), float(volume.std()), *np.percentile(volume, PERCENTILES).tolist()]


def global_stats_baseline(
    features: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    seed: int = 0,
    folds: int = 5,
) -> float:
    """Cross-validated balanced accuracy of a logistic regression on the given features.

    ``groups`` (subjects) keep the rescans of a subject in one fold, so a subject's
    statistics cannot be learnt from its own rescan.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    labels = np.asarray(labels)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    predicted = cross_val_predict(model, np.asarray(features), labels, cv=splitter, groups=groups)
    return float(balanced_accuracy_score(labels, predicted))
