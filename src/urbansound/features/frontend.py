"""nn.Module wrappers: the spectrogram front end, the per-band normaliser, and the full classifier
(front end + normaliser + backbone) that a model file rebuilds for inference, as in PANNs/EfficientAT."""

from __future__ import annotations

import torch
from torch import nn

from urbansound.config import FeatureConfig
from urbansound.features.spectrogram import filterbank_matrix, log_filterbank_spectrogram


class SpectrogramFrontend(nn.Module):
    """Waveforms ``(batch, samples)`` at ``sample_rate`` -> dB band energies ``(batch, n_bands, frames)``.

    Window and filterbank are buffers, so the module follows ``.to(device)`` and is exported with the model.
    """

    def __init__(self, config: FeatureConfig, sample_rate: int) -> None:
        super().__init__()
        config.validate(sample_rate)
        self.config = config
        self.sample_rate = sample_rate
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer(
            "filterbank", torch.from_numpy(filterbank_matrix(config, sample_rate)), persistent=False
        )

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.config.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        # waveform: (batch, samples)
        return log_filterbank_spectrogram(
            waveform,
            self.filterbank,
            self.config.n_fft,
            self.config.hop_length,
            self.config.top_db,
            self.window,
        )  # (batch, n_bands, frames)


def relative_to_clip_max(features: torch.Tensor) -> torch.Tensor:
    """dB features ``(batch, n_bands, frames)`` re each clip's loudest cell (librosa's ``ref=np.max``)."""
    return features - features.amax(dim=(1, 2), keepdim=True)


class BandNormalizer(nn.Module):
    """Standardise each band with mean and std measured on the training set (stored with the model).

    The seed normalised each batch by its own statistics, so a clip's prediction depended on its batch
    mates; fixed statistics make every prediction a function of the clip alone. With
    ``db_reference="clip_max"`` each clip is first taken relative to its own maximum, which removes the
    recording level (a gain change shifts every dB cell of a clip by the same amount).
    """

    def __init__(self, n_bands: int, db_reference: str = "absolute") -> None:
        super().__init__()
        self.db_reference = db_reference
        self.register_buffer("mean", torch.zeros(n_bands))
        self.register_buffer("std", torch.ones(n_bands))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        # A silent band (std 0) must not blow up: floor at 1e-5 dB.
        self.std.copy_(std.clamp_min(1e-5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames)
        if self.db_reference == "clip_max":
            features = relative_to_clip_max(features)
        return (features - self.mean[:, None]) / self.std[:, None]

    def extra_repr(self) -> str:
        return f"db_reference={self.db_reference!r}"


class AudioClassifier(nn.Module):
    """Front end + normaliser + backbone: a model file plus a waveform is all a prediction needs."""

    def __init__(
        self, frontend: SpectrogramFrontend, normalizer: BandNormalizer, backbone: nn.Module
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.normalizer = normalizer
        self.backbone = backbone
        # Training-only spectrogram augmentation, set by the training run: ``band_augment`` on dB features
        # (FilterAugment's gain curves), ``augment`` on normalised ones (SpecAugment's masks). Identities
        # here, so model files and inference never depend on them; they hold no state, so state_dicts are
        # unchanged.
        self.band_augment: nn.Module = nn.Identity()
        self.augment: nn.Module = nn.Identity()

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from dB features ``(batch, n_bands, frames)`` (the cached training path)."""
        x = self.augment(self.normalizer(self.band_augment(features)))  # (batch, n_bands, frames)
        x = x.unsqueeze(1)  # (batch, 1, n_bands, frames)
        return self.backbone(x)  # (batch, n_classes)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Logits from waveforms ``(batch, samples)`` at the model's sample rate."""
        return self.classify_features(self.frontend(waveform))
