"""Classification metrics of a set of predictions, as plain JSON-serialisable Python values.

Example::

    >>> m = classification_metrics([0, 1, 1], [0, 1, 0], ["dog_bark", "siren"])
    >>> round(m["accuracy"], 3), m["confusion_matrix"]
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from urbansound.errors import ConfigError


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: true class index of each clip, in ``0 .. len(class_names) - 1``.
        y_pred: predicted class index of each clip, same length as ``y_true``.
        class_names: name of each class index; every class is reported, even one absent from both.

    Returns:
        ``{"accuracy", "macro_f1", "n_clips", "per_class", "confusion_matrix"}`` where ``per_class`` maps
        each class name to ``{"precision", "recall", "f1", "support"}`` and ``confusion_matrix`` is a
        ``(n_classes, n_classes)`` list of lists of counts, rows = true class, columns = predicted.
        Undefined ratios (a class never predicted or never present) are 0. Macro-F1 averages over
        every class in ``class_names``, including absent ones.

    Raises:
        ConfigError: lengths differ, class names empty or repeated, or an index outside the class range.
    """
    true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    pred = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    n_classes = len(class_names)
    if true.shape != pred.shape:
        raise ConfigError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    if n_classes == 0:
        raise ConfigError("class_names is empty")
    if len(set(class_names)) != n_classes:
        raise ConfigError(f"class_names holds duplicates: {list(class_names)}")
    for label, values in (("y_true", true), ("y_pred", pred)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ConfigError(f"{label} holds class indices outside 0..{n_classes - 1}")

    labels = list(range(n_classes))
    if true.size == 0:
        accuracy = 0.0
        macro_f1 = 0.0
        precision = recall = f1 = np.zeros(n_classes)
        support = np.zeros(n_classes, dtype=np.int64)
    else:
        accuracy = float(accuracy_score(true, pred))
        macro_f1 = float(f1_score(true, pred, labels=labels, average="macro", zero_division=0))
        precision, recall, f1, support = precision_recall_fscore_support(
            true, pred, labels=labels, average=None, zero_division=0
        )
    confusion = (
        confusion_matrix(true, pred, labels=labels) if true.size else np.zeros((n_classes, n_classes), int)
    )

    per_class = {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "n_clips": int(true.size),
        "per_class": per_class,
        "confusion_matrix": [[int(c) for c in row] for row in confusion],
    }
