"""Typed configuration of a run, saved with every run and stored in every model file.

Each default carries a comment saying why it has that value (most reproduce the seed project).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from urbansound.errors import ConfigError

FEATURE_KINDS = ("mel_spec", "gammatone")
# The seed's own spelling of the gammatone option, kept as an alias.
FEATURE_KIND_ALIASES = {"mel": "mel_spec", "log_mel": "mel_spec", "gamma": "gammatone"}


@dataclass
class AudioConfig:
    """How a file becomes a fixed-length mono waveform."""

    sample_rate: int = 44_100  # Hz; the seed resampled everything to 44.1 kHz
    duration: float = 4.0  # seconds; UrbanSound8K clips are at most 4 s, shorter ones are right-padded

    @property
    def n_samples(self) -> int:
        return round(self.sample_rate * self.duration)

    def validate(self) -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.duration <= 0:
            raise ConfigError(f"duration must be positive, got {self.duration}")


@dataclass
class FeatureConfig:
    """Time-frequency front end. Names follow torchaudio/librosa."""

    kind: str = "mel_spec"  # the seed's default trans_type
    n_fft: int = 1024  # seed: 23 ms window at 44.1 kHz
    hop_length: int = 512  # seed: 50% overlap, 345 frames for 4 s at 44.1 kHz
    n_mels: int = 64  # seed: 64 bands (for gammatone too)
    f_min: float = 0.0  # Hz; librosa's default lower edge for mel
    f_max: float | None = None  # Hz; None means Nyquist
    top_db: float = 80.0  # seed: dB dynamic range kept below each clip's maximum

    def validate(self, sample_rate: int) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ConfigError(f"unknown feature kind {self.kind!r}; choose one of {', '.join(FEATURE_KINDS)}")
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ConfigError("n_fft, hop_length and n_mels must be positive")
        f_max = self.f_max if self.f_max is not None else sample_rate / 2
        if not 0 <= self.f_min < f_max <= sample_rate / 2:
            raise ConfigError(
                f"need 0 <= f_min < f_max <= Nyquist ({sample_rate / 2} Hz), got {self.f_min}, {f_max}"
            )
        if self.top_db is not None and self.top_db <= 0:
            raise ConfigError(f"top_db must be positive, got {self.top_db}")


def normalise_feature_kind(kind: str) -> str:
    """Accept the seed's spellings (``gamma``) and return the canonical feature kind."""
    kind = FEATURE_KIND_ALIASES.get(kind, kind)
    if kind not in FEATURE_KINDS:
        raise ConfigError(
            f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)} (or 'gamma')"
        )
    return kind


@dataclass
class ModelConfig:
    name: str = "cnn"  # the seed's 4-block CNN
    n_classes: int = 10  # filled from the data; 10 for UrbanSound8K
    kwargs: dict[str, Any] = field(default_factory=dict)  # family-specific options


@dataclass
class SplitConfig:
    """Which clips train, validate and test."""

    method: str = "folds"  # official folds: the only leak-free UrbanSound8K protocol
    test_fold: int = 10  # conventional hold-out fold when a single split is run
    val_fold: int | None = 9  # the fold next to the test fold, so model selection never sees test data
    val_fraction: float | None = None  # instead of val_fold: this share of training recordings (by fsID)
    train_folds: list[int] | None = None  # None: every fold present except test and validation

    def validate(self) -> None:
        if self.method not in ("folds", "random"):
            raise ConfigError(f"unknown split method {self.method!r}; choose 'folds' or 'random'")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TrainingConfig:
    epochs: int = 25  # the seed's setting
    batch_size: int = 16  # the seed's setting; global: under torchrun each process takes an equal share
    max_lr: float = 1e-3  # one-cycle peak, the seed's setting
    weight_decay: float = 0.0  # the seed used none
    seed: int = 0  # one seed drives shuffling, initialisation and splits
    label_smoothing: float = 0.0  # the seed used plain cross-entropy
    patience: int | None = None  # early stopping: epochs without validation gain; None trains every epoch
    num_workers: int = 0  # features are memory-mapped: loading a batch is a slice, workers only add overhead
    device: str = "auto"  # CUDA, then MPS, then CPU: the fastest device present, without a flag
    precision: str = "auto"  # bf16 autocast on CUDA (fp16 + grad scaler on GPUs without bf16), fp32 elsewhere
    compile: bool = False  # torch.compile: faster steps on GPUs, but minutes of compiling first

    def validate(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_lr <= 0:
            raise ConfigError("epochs, batch_size and max_lr must be positive")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"unknown precision {self.precision!r}; choose auto, fp32, bf16 or fp16")


@dataclass
class RunConfig:
    """Everything a training run needs; written to ``config.json`` in the run folder."""

    annotations: str = ""  # path to UrbanSound8K.csv; no default on purpose: the user names the data
    data_dir: str = ""  # folder holding fold1..fold10
    audio: AudioConfig = field(default_factory=AudioConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    name: str = "run"  # suffix of the run folder
    runs_dir: str = "runs"
    cache_dir: str = ""  # empty: <data_dir>/../.urbansound-cache, or $URBANSOUND_CACHE
    cache_dtype: str = "float32"  # float16 halves the cache (and page-cache traffic) for large sets
    skip_bad: bool = False

    def validate(self) -> None:
        if self.cache_dtype not in ("float32", "float16"):
            raise ConfigError(f"cache dtype must be float32 or float16, got {self.cache_dtype!r}")
        self.audio.validate()
        self.features.validate(self.audio.sample_rate)
        self.split.validate()
        self.training.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) dataclass from ``asdict`` output, ignoring unknown keys from newer versions."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            continue
        sub = _NESTED.get((cls.__name__, key))
        kwargs[key] = _from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {
    ("RunConfig", "audio"): AudioConfig,
    ("RunConfig", "features"): FeatureConfig,
    ("RunConfig", "model"): ModelConfig,
    ("RunConfig", "split"): SplitConfig,
    ("RunConfig", "training"): TrainingConfig,
}


def default_cache_dir(data_dir: str | Path) -> Path:
    """Feature cache beside the data, so it is reused across runs on the same data."""
    import os

    env = os.environ.get("URBANSOUND_CACHE")
    if env:
        return Path(env)
    return Path(data_dir).resolve().parent / ".urbansound-cache"
