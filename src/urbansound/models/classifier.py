"""The deployable classifier: spectrogram front end + per-band normaliser + backbone in one module, as in
PANNs/EfficientAT, so a model file plus a waveform is all a prediction needs.

It is the same module in training, inference and export and carries nothing training-only: augmentation
is applied by the training wrapper (:class:`urbansound.training.hardware.TrainingModel`) around
:meth:`AudioClassifier.classify_normalized`, never stored on the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from urbansound.errors import ConfigError


class AudioClassifier(nn.Module):
    """Front end + normaliser + backbone. State-dict keys: ``normalizer.*`` and ``backbone.*`` (the front
    end's window and filterbank are non-persistent buffers, rebuilt from the spec).

    >>> logits = classifier(waveforms)  # (batch, samples) -> (batch, n_classes)  # doctest: +SKIP
    """

    def __init__(
        self,
        frontend: nn.Module,
        normalizer: nn.Module,
        backbone: nn.Module,
        inputs: nn.Module | None = None,
        views: nn.Module | None = None,
    ) -> None:
        """``inputs`` (default: the features as one channel) and ``views`` (default: the clip as it is) are
        :class:`~urbansound.features.views.InputChannels` and :class:`~urbansound.features.views.ViewAverage`;
        neither holds weights, so state-dict keys stay ``normalizer.*`` and ``backbone.*``."""
        from urbansound.features.views import InputChannels, ViewAverage

        super().__init__()
        self.frontend = frontend
        self.normalizer = normalizer
        self.backbone = backbone
        self.inputs = inputs if inputs is not None else InputChannels()
        self.views = views if views is not None else ViewAverage()

    def classify_normalized(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` from normalised features ``(batch, n_bands, frames)``; in eval mode
        the log of the mean probability over the clip's views when there are several."""
        if self.training or not getattr(self.views, "active", False):
            return self.backbone(self.inputs(features))  # inputs: (batch, channels, n_bands, frames)
        views = self.views.expand(features)  # (views * batch, n_bands, window)
        return self.views.combine(self.backbone(self.inputs(views)), features.shape[0])

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from dB features ``(batch, n_bands, frames)`` (the cached training path)."""
        return self.classify_normalized(self.normalizer(features))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Logits from waveforms ``(batch, samples)`` at the model's sample rate."""
        return self.classify_features(self.frontend(waveform))  # frontend: (batch, n_bands, frames)

    def output_layers(self) -> list[nn.Linear]:
        """The layer that gives the class scores, one per backbone (per member of a seed ensemble): the last
        ``nn.Linear`` each registers, as every registered family declares its output layer last."""
        from urbansound.models.ensemble import SeedEnsemble

        ensemble = isinstance(self.backbone, SeedEnsemble)
        backbones = list(self.backbone.members) if ensemble else [self.backbone]
        layers = []
        for backbone in backbones:
            linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ConfigError(f"{type(backbone).__name__} has no linear output layer to embed from")
            layers.append(linears[-1])
        return layers

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer embeddings ``(batch, dim)`` of waveforms ``(batch, samples)``: what each output
        layer receives. A seed ensemble's members live in different spaces, so theirs are concatenated in
        member order (``dim`` = members x one member's width) rather than averaged."""
        captured: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_pre_hook(lambda _layer, inputs: captured.append(inputs[0]))
            for layer in self.output_layers()
        ]
        try:
            self(waveform)
        finally:
            for hook in hooks:
                hook.remove()
        embedding = torch.cat(captured, dim=-1)  # (views * batch, dim), view-major
        batch = waveform.shape[0]
        # Several views of a clip (eval-time crops or shifts) are averaged, as their probabilities are.
        return embedding.reshape(embedding.shape[0] // batch, batch, -1).mean(dim=0)  # (batch, dim)
