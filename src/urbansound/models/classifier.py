"""The deployable classifier: spectrogram front end + per-band normaliser + backbone in one module, as in
PANNs/EfficientAT, so a model file plus a waveform is all a prediction needs.

It is the same module in training, inference and export and carries nothing training-only: augmentation
is applied by the training wrapper (:class:`urbansound.training.hardware.TrainingModel`) around
:meth:`AudioClassifier.classify_normalized`, never stored on the classifier.
"""

from __future__ import annotations

import torch
from torch import nn


class AudioClassifier(nn.Module):
    """Front end + normaliser + backbone. State-dict keys: ``normalizer.*`` and ``backbone.*`` (the front
    end's window and filterbank are non-persistent buffers, rebuilt from the spec).

    >>> logits = classifier(waveforms)  # (batch, samples) -> (batch, n_classes)  # doctest: +SKIP
    """

    def __init__(self, frontend: nn.Module, normalizer: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.normalizer = normalizer
        self.backbone = backbone

    def classify_normalized(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` from normalised features ``(batch, n_bands, frames)``."""
        return self.backbone(features.unsqueeze(1))  # (batch, 1, n_bands, frames) -> (batch, n_classes)

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from dB features ``(batch, n_bands, frames)`` (the cached training path)."""
        return self.classify_normalized(self.normalizer(features))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Logits from waveforms ``(batch, samples)`` at the model's sample rate."""
        return self.classify_features(self.frontend(waveform))  # frontend: (batch, n_bands, frames)
