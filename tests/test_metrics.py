"""medconvnext.results.metrics against scikit-learn, computed independently here."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from medconvnext.results.metrics import SCALAR_METRICS, binary_auc, bootstrap_ci, classification_metrics


def _data(num_classes: int, n: int = 80, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), y] += 1.0  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if ties:  # rounded probabilities create tied scores, the case where rank-based AUCs go wrong
        probs = np.round(probs, 1) + 1e-3
        probs /= probs.sum(axis=1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("ties", [False, True])
def test_binary_matches_sklearn(ties):
    y, p = _data(2, ties=ties)
    pred = p.argmax(axis=1)
    m = classification_metrics(y, p, ["benign", "malignant"])
    assert m["positive_class"] == "malignant"
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p[:, 1]))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["per_class"]["malignant"]["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["n"] == len(y)


@pytest.mark.parametrize("ties", [False, True])
def test_multiclass_matches_sklearn(ties):
    y, p = _data(3, ties=ties)
    pred = p.argmax(axis=1)
    names = ["normal", "benign", "malignant"]
    m = classification_metrics(y, p, names)
    assert m["positive_class"] is None
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["f1_weighted"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    onehot = np.eye(3)[y]
    assert m["brier"] == pytest.approx(np.mean(np.sum((p - onehot) ** 2, axis=1)))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    cm = np.asarray(m["confusion_matrix"])
    specificities = []
    for k, name in enumerate(names):
        per = m["per_class"][name]
        assert per["precision"] == pytest.approx(skm.precision_score(y, pred, labels=[k], average="macro"))
        assert per["recall"] == pytest.approx(skm.recall_score(y, pred, labels=[k], average="macro"))
        assert per["f1"] == pytest.approx(skm.f1_score(y, pred, labels=[k], average="macro"))
        assert per["auc"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]))
        assert per["support"] == int(np.sum(y == k))
        tn = cm.sum() - cm[k, :].sum() - cm[:, k].sum() + cm[k, k]
        specificities.append(tn / (cm.sum() - cm[k, :].sum()))
        assert per["specificity"] == pytest.approx(specificities[-1])
    assert m["specificity"] == pytest.approx(np.mean(specificities))


def test_ece_by_hand():
    # two bins used: confidence 0.9 (3 right of 4) and 0.6 (1 right of 2) -> |0.75-0.9|*4/6 + |0.5-0.6|*2/6
    p = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    y = np.array([0, 0, 0, 1, 1, 0])
    m = classification_metrics(y, p, ["a", "b"])
    assert m["ece"] == pytest.approx(0.15 * 4 / 6 + 0.1 * 2 / 6)


def test_one_class_present_gives_none_not_nan():
    y = np.zeros(5, dtype=int)
    p = np.tile([0.7, 0.3], (5, 1))
    m = classification_metrics(y, p, ["a", "b"])
    assert m["auc"] is None and m["sensitivity"] is None and m["per_class"]["b"]["auc"] is None
    assert m["accuracy"] == 1.0 and m["specificity"] == 1.0
    assert binary_auc(np.ones(3, bool), np.arange(3.0)) is None
    assert set(SCALAR_METRICS) <= set(m)


def test_input_validation():
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(np.array([0, 1]), np.eye(2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside"):
        classification_metrics(np.array([0, 2]), np.eye(2), ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1, 1]), np.eye(2), ["a", "b"])


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("metric", ["auc", "accuracy", "balanced_accuracy"])
def test_bootstrap_ci_brackets_estimate_and_is_deterministic(num_classes, metric):
    y, p = _data(num_classes, n=60)
    point = classification_metrics(y, p, [str(i) for i in range(num_classes)])[metric]
    low, high = bootstrap_ci(y, p, metric=metric, n_boot=200, seed=3)
    assert low < point < high
    assert (low, high) == bootstrap_ci(y, p, metric=metric, n_boot=200, seed=3)
    assert (low, high) != bootstrap_ci(y, p, metric=metric, n_boot=200, seed=4)
    narrow = bootstrap_ci(y, p, metric=metric, n_boot=200, alpha=0.5, seed=3)
    assert low <= narrow[0] <= narrow[1] <= high


def test_bootstrap_ci_auc_undefined_and_bad_metric():
    y = np.zeros(10, dtype=int)
    p = np.tile([0.6, 0.4], (10, 1))
    assert bootstrap_ci(y, p, "auc", n_boot=20) == (None, None)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, p, "kappa")


def test_metrics_module_does_not_import_torch():
    code = "import sys, medconvnext.results.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == "False"
