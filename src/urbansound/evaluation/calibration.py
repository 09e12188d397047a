"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks") and the expected
calibration error (ECE), with a reliability diagram.

One scalar ``T`` divides the logits before the softmax: ``softmax(z / T)``. It changes no prediction (the
argmax is the same), only how sure the probabilities are. It is fitted by minimising the negative
log-likelihood on the **validation** split, after training; the test split is only scored, before and
after, so the reported ECE is that of a choice the test set never influenced.

Only class probabilities are needed: ``log p`` differs from the logits by a constant per clip, which the
softmax ignores, so ``softmax(log p / T) == softmax(z / T)`` (and an ensemble's output is already the log of
its mean probabilities).

Example::

    calibration = calibrate(val_labels, val_probabilities, test_labels, test_probabilities)
    calibration.temperature, calibration.test_ece_before, calibration.test_ece_after
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from urbansound.io_utils import atomic_output

logger = logging.getLogger(__name__)

# Equal-width confidence bins of the ECE: 15, as Guo et al. and most calibration papers report it.
ECE_BINS = 15
# Search range of log T: T in [0.05, 20] covers every miscalibration seen in practice (Guo et al.: 1-3).
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
# Probabilities are clipped here before the log: float32 softmax underflows to 0 for far-off classes.
MIN_PROBABILITY = 1e-12


def scale_probabilities(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` of class probabilities ``(n, n_classes)``."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), MIN_PROBABILITY, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p[label]`` over clips."""
    picked = np.asarray(probabilities)[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, MIN_PROBABILITY, None))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` ``(n,)`` under scaled ``probabilities``
    ``(n, n_classes)``; 1.0 when there are no clips."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return 1.0
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(scale_probabilities(probabilities, math.exp(log_t)), labels),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(result.x))


@dataclass
class Reliability:
    """Per confidence bin (equal width over [0, 1]): clips, mean confidence, accuracy (NaN when empty)."""

    counts: list[int]
    confidence: list[float]
    accuracy: list[float]

    @property
    def ece(self) -> float:
        """Expected calibration error: the clip-weighted mean |accuracy - confidence| over bins."""
        total = sum(self.counts)
        if total == 0:
            return 0.0
        return float(
            sum(
                n * abs(a - c)
                for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)
                if n
            )
            / total
        )


def reliability(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> Reliability:
    """Bin clips by their top probability; each bin's mean confidence and accuracy."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=1) if len(labels) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if len(labels) else np.zeros(0, dtype=bool)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)  # confidence 1.0: the last bin
    counts, conf, acc = [], [], []
    for b in range(n_bins):
        inside = bins == b
        counts.append(int(inside.sum()))
        conf.append(float(confidence[inside].mean()) if inside.any() else float("nan"))
        acc.append(float(correct[inside].mean()) if inside.any() else float("nan"))
    return Reliability(counts, conf, acc)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of class probabilities ``(n, n_classes)`` against ``labels`` ``(n,)`` (``n_bins`` equal bins)."""
    return reliability(probabilities, labels, n_bins).ece


@dataclass
class Calibration:
    """``metrics.json``'s ``calibration``: the fitted temperature and the test split's ECE around it."""

    temperature: float
    fitted_on: str  # which split, and how many clips
    val_nll_before: float | None  # None without validation clips
    val_nll_after: float | None
    test_ece_before: float
    test_ece_after: float
    n_bins: int
    test_before: Reliability
    test_after: Reliability

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("test_before", "test_after"):  # JSON has no NaN: empty bins are null
            data[key] = {
                k: [None if isinstance(x, float) and math.isnan(x) else x for x in v]
                for k, v in data[key].items()
            }
        return data


def calibrate(
    val_labels: np.ndarray,
    val_probabilities: np.ndarray,
    test_labels: np.ndarray,
    test_probabilities: np.ndarray,
) -> Calibration:
    """Fit the temperature on the validation split; score the test split's ECE before and after it."""
    temperature = fit_temperature(val_probabilities, val_labels)
    if len(val_labels) == 0:
        logger.warning("no validation clips: the temperature stays 1 (probabilities as trained)")
    val_nll = (
        (
            negative_log_likelihood(val_probabilities, val_labels),
            negative_log_likelihood(scale_probabilities(val_probabilities, temperature), val_labels),
        )
        if len(val_labels)
        else (None, None)  # JSON has no NaN
    )
    before = reliability(test_probabilities, test_labels)
    after = reliability(
        scale_probabilities(test_probabilities, temperature) if len(test_labels) else test_probabilities,
        test_labels,
    )
    return Calibration(
        temperature=round(temperature, 4),
        fitted_on=f"validation split ({len(val_labels)} clips)",
        val_nll_before=val_nll[0],
        val_nll_after=val_nll[1],
        test_ece_before=before.ece,
        test_ece_after=after.ece,
        n_bins=ECE_BINS,
        test_before=before,
        test_after=after,
    )


def plot_reliability(calibration: dict[str, Any], path: Path) -> Path:
    """Reliability diagram of ``metrics.json``'s ``calibration``: accuracy against confidence per bin,
    before and after temperature scaling, with the diagonal of perfect calibration. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bins = int(calibration["n_bins"])
    centres = (np.arange(n_bins) + 0.5) / n_bins
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for key, name, marker in (("test_before", "before", "o"), ("test_after", "after", "s")):
        bins = calibration[key]
        accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=float)
        ece = calibration[f"test_ece_{name}"]
        axis.plot(centres, accuracy, marker=marker, label=f"{name} scaling (ECE {100 * ece:.1f}%)")
    axis.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top class probability)",
        ylabel="accuracy",
        title=f"Test split reliability, T = {calibration['temperature']:.2f}",
    )
    axis.legend(loc="upper left")
    figure.tight_layout()
    with atomic_output(Path(path), "the reliability diagram") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return Path(path)
