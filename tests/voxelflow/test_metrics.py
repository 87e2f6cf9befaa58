import numpy as np
import pytest

from voxelflow.metrics import classification_metrics, roc_curves

CLASSES = ["a", "b", "c"]


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[labels] * 0.9 + 0.05
    result = classification_metrics(labels, probabilities, CLASSES)
    assert result["accuracy"] == 1.0 and result["balanced_accuracy"] == 1.0
    assert result["macro_auc_ovr"] == 1.0
    assert result["confusion_matrix"]["rows_true_columns_predicted"] == [
        [2, 0, 0],
        [0, 2, 0],
        [0, 0, 2],
    ]
    assert result["baselines"]["chance_balanced_accuracy"] == pytest.approx(1 / 3, abs=1e-6)


def test_balanced_accuracy_with_imbalance():
    labels = np.array([0] * 8 + [1] * 2)
    probabilities = np.tile([0.9, 0.1, 0.0], (10, 1))  # always predicts a
    result = classification_metrics(labels, probabilities, CLASSES)
    assert result["accuracy"] == 0.8
    assert result["balanced_accuracy"] == 0.5
    assert result["per_class"]["b"]["recall"] == 0.0
    assert result["per_class"]["c"]["support"] == 0 and result["per_class"]["c"]["auc_ovr"] is None
    assert result["baselines"]["majority_class_accuracy"] == 0.8


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 2)), CLASSES)


def test_roc_curves_per_present_class():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.4, 0], [0.3, 0.7, 0]])
    curves = roc_curves(labels, probabilities, CLASSES)
    assert set(curves) == {"a", "b"}
    assert curves["a"][0] == {"fpr": 0.0, "tpr": 0.0} and curves["a"][-1] == {
        "fpr": 1.0,
        "tpr": 1.0,
    }
