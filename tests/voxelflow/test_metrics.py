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


def _fixed(n: int = 60, classes: int = 3, seed: int = 0):
    """Fixed, imperfect predictions: right about 70% of the time."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("classes", [2, 3])
def test_metrics_agree_with_scikit_learn(classes):
    from sklearn import metrics as skm

    names = CLASSES[:classes] if classes <= 3 else None
    labels, probabilities = _fixed(61, classes)
    predicted = probabilities.argmax(axis=1)
    result = classification_metrics(labels, probabilities, names)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-6)
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, predicted), abs=1e-6
    )
    assert result["cohen_kappa"] == pytest.approx(
        skm.cohen_kappa_score(labels, predicted), abs=1e-6
    )
    assert result["log_loss"] == pytest.approx(skm.log_loss(labels, probabilities), abs=1e-6)
    precision, recall, f1, support = skm.precision_recall_fscore_support(labels, predicted)
    for index, name in enumerate(names):
        per_class = result["per_class"][name]
        assert per_class["precision"] == pytest.approx(precision[index], abs=1e-6)
        assert per_class["recall"] == pytest.approx(recall[index], abs=1e-6)
        assert per_class["f1"] == pytest.approx(f1[index], abs=1e-6)
        assert per_class["support"] == support[index]
        assert per_class["auc_ovr"] == pytest.approx(
            skm.roc_auc_score(labels == index, probabilities[:, index]), abs=1e-6
        )
    assert result["macro_auc_ovr"] == pytest.approx(
        skm.roc_auc_score(
            labels,
            probabilities if classes > 2 else probabilities[:, 1],
            multi_class="ovr",
            average="macro",
        ),
        abs=1e-6,
    )
    # multi-class Brier by hand; for two classes twice scikit-learn's binary score
    onehot = np.eye(classes)[labels]
    assert result["brier"] == pytest.approx(((probabilities - onehot) ** 2).sum(1).mean(), abs=1e-6)
    if classes == 2:
        assert result["brier"] == pytest.approx(
            2 * skm.brier_score_loss(labels, probabilities[:, 1]), abs=1e-6
        )
        assert result["sensitivity"] == pytest.approx(recall[1], abs=1e-6)
        assert result["specificity"] == pytest.approx(recall[0], abs=1e-6)
    assert result["test_volumes_per_class"] == {
        name: int((labels == i).sum()) for i, name in enumerate(names)
    }


def test_expected_calibration_error_by_hand():
    # two bins used: confidence 0.95 (2 volumes, 1 right) and 0.65 (2 volumes, both right)
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.35, 0.65]])
    result = classification_metrics(labels, probabilities, ["a", "b"])
    assert result["ece"] == pytest.approx(0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.65), abs=1e-6)


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_volumes():
    widths = []
    for n in (30, 300):
        labels, probabilities = _fixed(n)
        result = classification_metrics(labels, probabilities, CLASSES, resamples=400, seed=3)
        intervals = result["confidence_intervals"]
        assert intervals["level"] == 0.95 and intervals["resamples"] == 400
        for key in ("accuracy", "balanced_accuracy", "macro_auc_ovr", "cohen_kappa", "brier"):
            low, high = intervals[key]
            assert low <= result[key] <= high, key
        low, high = intervals["per_class"]["b"]["auc_ovr"]
        assert low <= result["per_class"]["b"]["auc_ovr"] <= high
        widths.append(intervals["balanced_accuracy"][1] - intervals["balanced_accuracy"][0])
    assert widths[1] < widths[0] / 2  # ten times the volumes: about a third of the width
    again = classification_metrics(labels, probabilities, CLASSES, resamples=400, seed=3)
    assert again["confidence_intervals"] == intervals  # seeded


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 3]), np.full((2, 3), 1 / 3), CLASSES)
