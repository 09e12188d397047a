"""Test-time averaging over windows: a clip longer than the model's window is classified window by window
and the class probabilities are averaged, instead of cutting the clip to its first window.

>>> probabilities = predict_windows(model, waveform, window=88_200)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from urbansound.features.frontend import AudioClassifier


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of windows covering ``n_samples``: every ``hop``, plus one flush with the end so the
    tail is never dropped. A clip no longer than ``window`` has the single start 0."""
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return starts


@torch.no_grad()
def predict_windows(
    model: AudioClassifier,
    waveform: np.ndarray | torch.Tensor,
    window: int,
    hop: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Class probabilities of one clip, averaged over its windows.

    Args:
        model: the classifier (front end included), used in eval mode.
        waveform: mono samples ``(samples,)`` at the model's sample rate.
        window: the model's clip length in samples (``AudioConfig.n_samples``); shorter clips are
            right-padded to it, as in training.
        hop: samples between window starts (default: half a window).

    Returns:
        float32 ``(n_classes,)``, summing to 1.
    """
    hop = hop or max(window // 2, 1)
    wave = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
    if wave.shape[0] < window:
        wave = torch.nn.functional.pad(wave, (0, window - wave.shape[0]))
    starts = window_starts(wave.shape[0], window, hop)
    device = next(model.parameters()).device
    model.eval()
    total = None
    for first in range(0, len(starts), batch_size):
        batch = torch.stack([wave[s : s + window] for s in starts[first : first + batch_size]])  # (b, window)
        probabilities = torch.softmax(model(batch.to(device)).float(), dim=1).sum(dim=0)  # (n_classes,)
        total = probabilities if total is None else total + probabilities
    assert total is not None
    return (total / len(starts)).cpu().numpy()
