"""nn.Module wrappers: the spectrogram front end and the per-band normaliser. The full classifier (front
end + normaliser + backbone) is :class:`urbansound.models.classifier.AudioClassifier`, still importable
from here as ``AudioClassifier``."""

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

    Normalising each batch by its own statistics (as the baseline recipe's source did) makes a clip's
    prediction depend on its batch mates; fixed statistics make every prediction a function of the clip alone.
    With ``db_reference="clip_max"`` each clip is first taken relative to its own maximum, which removes the
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


def __getattr__(name: str) -> object:
    """``AudioClassifier`` moved to :mod:`urbansound.models.classifier`; old imports keep working (looked up
    lazily: the models package imports this module's wrappers' neighbours, not the other way round)."""
    if name == "AudioClassifier":
        from urbansound.models.classifier import AudioClassifier

        return AudioClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_frontend(config: FeatureConfig, sample_rate: int) -> nn.Module:
    """The front end of ``config.kind``: :class:`SpectrogramFrontend` (log-mel, gammatone) or, for a
    pretrained network's kind, :class:`~urbansound.features.pretrained.PretrainedFrontend`. Both map waveforms
    ``(batch, samples)`` to ``(batch, n_bands, frames)`` and have ``n_frames(n_samples)``."""
    from urbansound.features.pretrained import PRETRAINED_KINDS, PretrainedFrontend

    if config.kind in PRETRAINED_KINDS:
        return PretrainedFrontend(config, sample_rate)
    return SpectrogramFrontend(config, sample_rate)
