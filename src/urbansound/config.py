"""Typed configuration of a run, saved with every run and stored in every model file.

Each setting is declared once, here: its field carries the default (with a comment saying why it has that
value; most reproduce the baseline recipe), the help text, the allowed
values and the command-line spelling. ``urbansound.settings`` turns these declarations into the flags of
``urbansound train`` and ``crossval``, and ``validate`` checks the same allowed values.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from urbansound.errors import ConfigError

# Allowed values, one tuple per setting: validation and the command line both read them from here.
# The front ends of pretrained networks, reproduced exactly (urbansound.features.pretrained); a pretrained
# backbone (urbansound.models.backbones) declares which one it takes.
PRETRAINED_FEATURE_KINDS = ("panns_log_mel", "efficientat_mel", "kaldi_fbank")
FEATURE_KINDS = ("mel_spec", "gammatone", *PRETRAINED_FEATURE_KINDS)
DB_REFERENCES = ("absolute", "clip_max")
MIXUP_DOMAINS = ("db", "power")
SPLIT_METHODS = ("folds", "random")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_DTYPES = ("float32", "float16")
SCHEDULERS = ("onecycle", "cosine")
DATA_ON_DEVICE = ("auto", "yes", "no")
SELECT_EPOCH = ("val_accuracy", "val_loss", "last")
# How reports and plots name each choice of SELECT_EPOCH.
SELECT_EPOCH_TEXT = {
    "val_accuracy": "best validation accuracy",
    "val_loss": "lowest validation loss",
    "last": "the last epoch",
}
LAYOUTS = ("auto", "urbansound8k", "esc50", "folders")  # dataset layouts urbansound.data.datasets reads
PCEN_MODES = ("off", "fixed", "learnable")  # per-channel energy normalisation instead of dB compression
# Other common spellings of the feature kinds (the baseline command line's among them), kept as aliases.
FEATURE_KIND_ALIASES = {"mel": "mel_spec", "log_mel": "mel_spec", "gamma": "gammatone"}


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    flags: Sequence[str] = (),
    choices: Sequence[str] | None = None,
    aliases: Mapping[str, str] | None = None,
    label: str | None = None,
    metavar: str | None = None,
    group: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A dataclass field that is also a command-line setting.

    ``help`` is the flag's help text (a field with no help gets no flag); ``flags`` its spellings (default:
    ``--field-name``); ``choices`` the allowed values, checked by ``validate`` and by the parser, which also
    accepts ``aliases`` (alias -> value); ``label`` names the setting in error messages (default: the field
    name); ``group`` is the help section of a top-level field.
    """
    metadata = {
        "help": help,
        "flags": tuple(flags),
        "choices": tuple(choices) if choices is not None else None,
        "aliases": dict(aliases or {}),
        "label": label,
        "metavar": metavar,
        "group": group,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def check_choices(config: Any) -> None:
    """Raise ConfigError when a field of dataclass ``config`` holds a value outside its declared choices."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            label = f.metadata.get("label") or f.name
            raise ConfigError(f"unknown {label} {value!r}; choose one of {', '.join(choices)}")


@dataclass
class AudioConfig:
    """How a file becomes a fixed-length mono waveform."""

    # Hz; the baseline recipe resamples everything to 44.1 kHz
    sample_rate: int = setting(44_100, "Hz every clip is resampled to")
    # seconds; UrbanSound8K clips are at most 4 s, shorter ones are right-padded
    duration: float = setting(4.0, "seconds per clip (cut or padded)")

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

    # the baseline recipe's trans_type
    kind: str = setting(
        "mel_spec",
        "mel_spec (log-mel) or gammatone (alias: gamma)",
        flags=("--trans-type", "--trans_type"),
        choices=FEATURE_KINDS,
        aliases=FEATURE_KIND_ALIASES,
        label="feature kind",
    )
    n_fft: int = setting(1024, "FFT window in samples")  # baseline recipe: 23 ms window at 44.1 kHz
    # baseline recipe: 50% overlap, 345 frames for 4 s at 44.1 kHz
    hop_length: int = setting(512, "samples between frames")
    # baseline recipe: 64 bands (for gammatone too)
    n_mels: int = setting(64, "number of mel or gammatone bands", flags=("--n-mels", "--n-bands"))
    f_min: float = setting(0.0, "Hz, lowest band edge")  # librosa's default lower edge for mel
    f_max: float | None = setting(None, "Hz, highest band edge (none: Nyquist)")  # None means Nyquist
    # baseline recipe: dB dynamic range kept below each clip's maximum
    top_db: float = setting(80.0, "dB range kept below each clip's maximum")
    # "absolute": dB re full scale, as the baseline recipe. "clip_max": dB re each clip's loudest cell
    # (librosa's ref=np.max), so a recording's level no longer moves every feature. Applied by the model's
    # normaliser on top of the cached absolute dB, so it does not change (or invalidate) the feature cache.
    db_reference: str = setting(
        "absolute",
        "absolute: dB re full scale (baseline recipe); clip_max: dB re each clip's loudest cell "
        "(level-invariant)",
        choices=DB_REFERENCES,
        label="dB reference",
    )

    def validate(self, sample_rate: int) -> None:
        check_choices(self)
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
    """Accept the other spellings (``gamma``) and return the canonical feature kind."""
    kind = FEATURE_KIND_ALIASES.get(kind, kind)
    if kind not in FEATURE_KINDS:
        raise ConfigError(
            f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)} (or 'gamma')"
        )
    return kind


@dataclass
class ModelConfig:
    # the baseline recipe's 4-block CNN
    name: str = setting("cnn", "registered model name (see `urbansound models`)", flags=("--model",))
    n_classes: int = 10  # filled from the data; 10 for UrbanSound8K
    # family-specific options
    kwargs: dict[str, Any] = setting(
        help="model option, VALUE as JSON (e.g. batch_norm=true); repeatable",
        flags=("--model-option",),
        metavar="KEY=VALUE",
        default_factory=dict,
    )
    # Members of a seed ensemble: this many copies of the backbone, trained alike from seeds seed, seed+1, ...
    # on the same split, whose class probabilities are averaged. 1 is a single model (the baseline recipe's).
    ensemble: int = setting(
        1,
        "train N copies of the model from seeds seed..seed+N-1 and average their probabilities "
        "(one model file; N times the training time)",
        metavar="N",
    )

    # The input levers below act after the feature cache (the cache keeps dB band energies), so none of them
    # changes or invalidates it; all are off in the recipes unless benchmarks/select_recipe_notes.md says so
    # (the default recipe uses deltas).
    # PCEN (Wang et al. 2017; Lostanlen et al. 2019) instead of dB compression: an automatic gain control per
    # band for backgrounds whose level varies; "learnable" trains its four parameters per band.
    pcen: str = setting(
        "off",
        "per-channel energy normalisation instead of dB compression: off, fixed (librosa's parameters) "
        "or learnable (per band)",
        choices=PCEN_MODES,
        label="PCEN mode",
    )
    # 0: the dB features alone; 1 adds their time derivative as a channel, 2 also the second derivative
    # (the default recipe uses 2)
    deltas: int = setting(0, "delta orders stacked as extra input channels (0, 1: delta, 2: delta-delta)")
    # CoordConv (Liu et al. 2018): a convolution cannot tell where in frequency it is without it
    freq_channel: bool = setting(False, "add an input channel holding each band's position (-1 .. 1)")
    # seconds; 0 trains on whole clips. Salamon & Bello trained on 3 s patches of the 4 s clips.
    crop_seconds: float = setting(
        0.0,
        "train on random crops of 1 s up to this many seconds and predict the mean over windows of this "
        "length every 0.5 s (0: whole clips)",
    )
    # test-time augmentation: 0 classifies the clip as it is
    tta_shifts: int = setting(
        0, "also classify N circularly shifted copies (+-0.5 s, +-1 s, ...) and average the probabilities"
    )

    def validate(self) -> None:
        check_choices(self)
        if self.ensemble < 1:
            raise ConfigError(f"ensemble must have at least 1 member, got {self.ensemble}")
        if self.deltas not in (0, 1, 2):
            raise ConfigError(f"deltas must be 0, 1 or 2, got {self.deltas}")
        if self.crop_seconds != 0 and self.crop_seconds < 1:
            raise ConfigError(f"crop_seconds must be 0 (off) or at least 1 s, got {self.crop_seconds}")
        if self.tta_shifts < 0:
            raise ConfigError(f"tta_shifts must be >= 0, got {self.tta_shifts}")


@dataclass
class DistillConfig:
    """Knowledge distillation (Hinton et al. 2015): a student learns the teacher's softened probabilities.

    The loss is ``weight * T^2 * KL(teacher_T || student_T) + (1 - weight) * CE(student, labels)`` where
    ``_T`` is the softmax at temperature ``T``; ``T^2`` keeps the soft term's gradients the size of the hard
    term's as ``T`` changes.
    """

    # Hinton et al. used 1-20; 4 is common for 10 classes (higher spreads mass onto unlikely classes)
    temperature: float = setting(4.0, "softmax temperature of teacher and student in the soft term")
    # mostly the teacher: the labels are already in its probabilities, and born-again students use 1.0
    weight: float = setting(
        0.9,
        "weight of the soft (teacher) term; 1 - weight goes to the true labels",
        flags=("--distill-weight",),
    )

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.weight <= 1:
            raise ConfigError(f"distill weight must be in [0, 1], got {self.weight}")


@dataclass
class SplitConfig:
    """Which clips train, validate and test."""

    # official folds: the only leak-free UrbanSound8K protocol
    method: str = setting(
        "folds",
        "official folds, or a random 64/16/20 split of clips (leaks recordings across sides)",
        flags=("--split",),
        choices=SPLIT_METHODS,
        label="split method",
    )
    # None: the last fold the data has (UrbanSound8K: 10, the conventional hold-out; ESC-50: 5), so any
    # dataset's fold count works without naming folds
    test_fold: int | None = setting(None, "fold held out for testing (none: the last fold present)")
    # None: the fold before the test fold (after it, when the test fold is the first), never the test fold
    val_fold: int | None = setting(None, "fold used for validation (none: the fold before the test fold)")
    # instead of val_fold: this share of training recordings (by fsID)
    val_fraction: float | None = setting(
        None, "validate on this share of the training recordings (grouped by fsID) instead of a fold"
    )
    # None: every fold present except test and validation
    train_folds: list[int] | None = setting(None, "folds to train on, e.g. 1,2,3 (none: the rest)")

    def validate(self) -> None:
        check_choices(self)
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class TrainingConfig:
    epochs: int = setting(25, "passes over the training set")  # the baseline recipe's setting
    # the baseline recipe's setting; global: under torchrun each process takes an equal share
    batch_size: int = setting(
        16,
        "global batch: under torchrun each of N processes takes batch-size / N clips; above the recipe's "
        "batch the peak learning rate grows by sqrt(batch-size / recipe's batch), unless --lr is given",
        flags=("--batch-size", "--batch_size"),
    )
    max_lr: float = setting(1e-3, "peak learning rate", flags=("--lr", "--max-lr"))  # the baseline recipe's
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay")  # the baseline recipe uses none
    seed: int = setting(0, "random seed")  # one seed drives shuffling, initialisation and splits
    label_smoothing: float = setting(0.0, "in [0, 1)")  # the baseline recipe uses plain cross-entropy
    # early stopping: epochs without validation gain; None trains every epoch
    patience: int | None = setting(None, "early stopping patience in epochs (none: train every epoch)")
    # features are memory-mapped: loading a batch is a slice, workers only add overhead
    num_workers: int = setting(0, "data-loader workers", flags=("--workers",))
    # CUDA, then MPS, then CPU: the fastest device present, without a flag
    device: str = setting("auto", "auto (CUDA, then MPS, then CPU), cuda, mps or cpu")
    # bf16 autocast on CUDA (fp16 + grad scaler on GPUs without bf16), fp32 elsewhere
    precision: str = setting(
        "auto",
        "autocast dtype; auto: bf16 on CUDA (fp16 with loss scaling on GPUs without bf16), else fp32",
        choices=PRECISIONS,
    )
    # torch.compile: faster steps on GPUs, but minutes of compiling first
    compile: bool = setting(False, "wrap the model with torch.compile")
    # CPU training is bit-reproducible anyway; on CUDA cuDNN's autotuner and atomic-add kernels make two runs
    # (or a run and its resume) differ in the last bits, which then grow over the epochs.
    deterministic: bool = setting(
        False,
        "bit-reproducible training on GPUs (deterministic kernels, no cuDNN autotuning; slower); "
        "CPU training always is, on one machine with one thread count",
    )
    # Hold the training features (and variants) in device memory and gather batches there: "auto" does so on
    # accelerators when they take at most half the free device memory (on the CPU the memory-mapped cache
    # already is host memory); "yes" and "no" force it. The batches are the same either way.
    data_on_device: str = setting(
        "auto",
        "hold the training features in device memory and draw batches there (auto: on accelerators, "
        "when they take at most half the free device memory)",
        choices=DATA_ON_DEVICE,
    )
    # the baseline recipe's linear one-cycle; "cosine" warms up then decays to zero
    scheduler: str = setting(
        "onecycle", "onecycle (baseline recipe: Adam) or cosine (AdamW)", choices=SCHEDULERS
    )
    # a local model file whose weights start the training (fine-tuning); "" = random
    init_from: str = setting(
        "",
        "start from the weights of a local model file, or of a pretrained backbone's checkpoint (a PANNs "
        ".pth, an EfficientAT .pt, a Hugging Face directory or hf:ORG/NAME, which alone downloads)",
        metavar="CHECKPOINT",
    )
    # A linear probe: the pretrained backbone's weights (and BatchNorm statistics) stay fixed and only the
    # class head trains, as in EVAR's frozen-embedding protocol.
    freeze_backbone: bool = setting(False, "train only the class head; the backbone's weights stay fixed")
    # Fine-tuning: pretrained layers move at this share of the head's learning rate, so the new head can
    # settle before it pulls the pretrained features around. 1 trains every layer alike.
    backbone_lr_scale: float = setting(
        1.0, "learning rate of the pretrained layers as a share of the head's (--lr)", metavar="SHARE"
    )
    # Epochs at the start in which only the head trains (the backbone is frozen), so the randomly initialised
    # head's large early gradients do not disturb the pretrained weights.
    head_warmup_epochs: int = setting(0, "epochs at the start that train only the class head")
    # Exponential moving average of the weights (and BatchNorm statistics), updated every step; validation,
    # best-epoch selection and the saved model use the average. 0 disables it (the baseline recipe's way).
    ema_decay: float = setting(
        0.0,
        "keep an exponential moving average of the weights (e.g. 0.99 per step) and select, validate "
        "and save it; 0 disables",
    )
    # Which epoch's weights the run keeps: "val_accuracy" (the best, as the baseline recipe's successors
    # do), "val_loss" (the lowest validation loss) or "last" (the end of the schedule; validation is still
    # measured and reported). Patience counts epochs without a gain in the chosen criterion.
    select_epoch: str = setting(
        "val_accuracy",
        "which epoch's weights to keep: best validation accuracy, lowest validation loss, or the last",
        choices=SELECT_EPOCH,
    )

    def validate(self) -> None:
        check_choices(self)
        if self.epochs <= 0 or self.batch_size <= 0 or self.max_lr <= 0:
            raise ConfigError("epochs, batch_size and max_lr must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.patience is not None and self.patience <= 0:
            raise ConfigError(f"patience must be positive, got {self.patience}")
        if not 0 < self.backbone_lr_scale <= 1 or self.head_warmup_epochs < 0:
            raise ConfigError(
                f"backbone_lr_scale must be in (0, 1] and head_warmup_epochs >= 0, got "
                f"{self.backbone_lr_scale} and {self.head_warmup_epochs}"
            )


# Salamon & Bello (2017)'s augmentation factors: time stretch (TS) and pitch shift in semitones (PS1 + PS2).
SALAMON_BELLO_STRETCH = (0.81, 0.93, 1.07, 1.23)
SALAMON_BELLO_SEMITONES = (-3.5, -2.5, -2.0, -1.0, 1.0, 2.0, 2.5, 3.5)


@dataclass
class RejectConfig:
    """When a window is given no class: too quiet (``silence``), too short (``too_short``) or too uncertain
    (``unknown``). Stored in the model file; ``predict``, ``serve`` and ``listen`` flags override it."""

    # dBFS of the window's RMS (full scale 1.0). -80: below every clip of UrbanSound8K folds 1-2 (the
    # quietest is -73.3 dBFS, benchmarks/RESULTS.md), above digital silence and 16-bit dither (~-101).
    silence_floor_dbfs: float | None = setting(
        -80.0, "windows whose RMS level (dBFS) is below this are reported as silence (none: never)"
    )
    # seconds; the shortest UrbanSound8K clip is 0.054 s, a handful of samples carries no class
    min_input_s: float = setting(0.05, "recordings shorter than this (seconds) are reported as too_short")
    # 0 keeps every answer: rejecting uncertain ones is the user's trade-off (see the reliability diagram)
    min_confidence: float = setting(
        0.0, "windows and clips whose top (calibrated) probability is below this are reported as unknown"
    )

    def validate(self) -> None:
        if self.min_input_s < 0:
            raise ConfigError(f"min_input_s must be >= 0 seconds, got {self.min_input_s}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass
class EventConfig:
    """How window probabilities become sound events (``predict --events``; onset/offset in seconds)."""

    # 0.5: a class that is more likely than all others together; DCASE baselines threshold at 0.5 too
    threshold: float = setting(
        0.5, "a class is active where its probability reaches this", flags=("--event-threshold",)
    )
    # seconds; shorter detections are mostly one noisy window
    min_duration: float = setting(
        0.0, "events shorter than this (seconds) are dropped", flags=("--event-min-duration",)
    )
    # seconds; a one-window dip inside a long sound should not split it in two
    merge_gap: float = setting(
        0.5, "events of one class closer than this (seconds) are merged", flags=("--event-merge-gap",)
    )

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"event threshold must be in (0, 1], got {self.threshold}")
        if self.min_duration < 0 or self.merge_gap < 0:
            raise ConfigError("event min_duration and merge_gap must be >= 0 seconds")


@dataclass
class AugmentConfig:
    """Training-time augmentation; everything here is off at evaluation and for the test set.

    Audio-level changes (stretch, pitch, shift, gain, noise) are expensive, so ``variants`` versions of each
    training clip are computed once into the feature cache and each epoch picks one version per clip.
    Spectrogram-level changes (SpecAugment masks, mixup) are cheap and drawn fresh in every batch.
    """

    # precomputed audio variants per training clip; 0 disables audio augmentation
    variants: int = setting(
        0,
        "audio variants per training clip (stretch, pitch, shift, gain, noise), computed once, cached",
        flags=("--aug-variants",),
    )
    # Fresh variants: the training clips' audio stays in memory and every epoch each clip that would have
    # drawn a cached variant gets a new one instead, computed on the training device (a GPU makes this cheap;
    # on a CPU it costs about twice a training epoch). ``variants`` then only sets the share of augmented
    # clips, variants / (variants + 1), the same share and the same clips as with cached variants.
    fresh_variants: bool = setting(
        False,
        "draw a new audio variant of each augmented clip every epoch, on the training device, instead of "
        "reusing the cached ones (--aug-variants sets the share of augmented clips)",
    )
    time_stretch: list[float] = field(default_factory=lambda: list(SALAMON_BELLO_STRETCH))  # rate factors
    pitch_shift: list[float] = field(default_factory=lambda: list(SALAMON_BELLO_SEMITONES))  # semitones
    time_shift: float = 0.25  # max circular shift, as a share of the clip: events happen anywhere in a clip
    gain_db: float = 6.0  # max gain change (+-) in dB; dB features with a per-clip top_db barely move
    noise_snr_db: list[float] | None = field(default_factory=lambda: [10.0, 40.0])  # white noise SNR range
    freq_masks: int = setting(0, "SpecAugment frequency masks per clip")
    # max bands per frequency mask (EfficientAT uses ~1/8 of the bands)
    freq_mask_width: int = setting(16, "max bands per frequency mask")
    time_masks: int = setting(0, "SpecAugment time masks per clip")
    # max frames per time mask (~0.5 s at 22.05 kHz / hop 512)
    time_mask_width: int = setting(24, "max frames per time mask")
    # Beta(alpha, alpha) mixing weight; 0 disables mixup
    mixup_alpha: float = setting(0.0, "mixup Beta(alpha, alpha); 0 disables", flags=("--mixup",))
    # "db": mix dB features (Zhang et al.); "power": mix band energies, as two sounds add.
    mixup_domain: str = setting(
        "db",
        "mix dB features (db) or band energies, as two sounds played together (power)",
        choices=MIXUP_DOMAINS,
        label="mixup domain",
    )
    # FilterAugment (Nam et al., 2022): a random smooth gain curve over the bands, up to +-this many dB, as
    # another microphone or room would colour the sound; 0 disables it.
    filter_gain_db: float = setting(
        0.0, "FilterAugment: add a random smooth gain curve over the bands, up to +-DB (0: off)"
    )
    filter_points: list[int] = field(default_factory=lambda: [3, 6])  # [min, max] control points of the curve

    def validate(self) -> None:
        check_choices(self)
        if self.variants < 0:
            raise ConfigError(f"variants must be >= 0, got {self.variants}")
        if self.fresh_variants and self.variants == 0:
            raise ConfigError(
                "fresh variants need --aug-variants > 0: it sets the share of augmented clips per epoch"
            )
        if any(f <= 0 for f in self.time_stretch):
            raise ConfigError(f"time_stretch factors must be positive, got {self.time_stretch}")
        if not 0 <= self.time_shift <= 1:
            raise ConfigError(f"time_shift must be in [0, 1], got {self.time_shift}")
        if self.mixup_alpha < 0 or self.gain_db < 0 or self.filter_gain_db < 0:
            raise ConfigError("mixup_alpha, gain_db and filter_gain_db must be >= 0")
        if len(self.filter_points) != 2 or not 2 <= self.filter_points[0] <= self.filter_points[1]:
            raise ConfigError(f"filter_points is a [min, max] count >= 2, got {self.filter_points}")
        if min(self.freq_masks, self.time_masks, self.freq_mask_width, self.time_mask_width) < 0:
            raise ConfigError("SpecAugment mask counts and widths must be >= 0")
        if self.noise_snr_db is not None and len(self.noise_snr_db) != 2:
            raise ConfigError(f"noise_snr_db is a [low, high] range, got {self.noise_snr_db}")

    @property
    def spec_augment(self) -> bool:
        return (self.freq_masks > 0 and self.freq_mask_width > 0) or (
            self.time_masks > 0 and self.time_mask_width > 0
        )


@dataclass
class RunConfig:
    """Everything a training run needs; written to ``config.json`` in the run folder."""

    # path to UrbanSound8K.csv; no default on purpose: the user names the data
    annotations: str = setting("", "UrbanSound8K.csv or ESC-50's esc50.csv (none: folders)", group="data")
    data_dir: str = setting(  # folder holding fold1..fold10
        "",
        "audio folder: fold1..fold10 (UrbanSound8K), ESC-50's audio/, or one subfolder per class",
        flags=("--data",),
        group="data",
    )
    audio: AudioConfig = field(default_factory=AudioConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # default: none, as the baseline recipe
    reject: RejectConfig = field(default_factory=RejectConfig)  # stored in the model file
    # dataset layout: urbansound8k, esc50, folders, or auto (from the annotations)
    layout: str = setting(
        "auto",
        "dataset layout (auto: from the annotations' columns; no --annotations: folder per class)",
        choices=LAYOUTS,
        group="data",
    )
    recipe: str = ""  # the named recipe the settings started from (informational; flags may override)
    name: str = setting("run", "suffix of the run (or cross-validation) folder", group="run")
    runs_dir: str = setting("runs", "folder that holds the run folders", group="run")
    # empty: <data_dir>/../.urbansound-cache, or $URBANSOUND_CACHE
    cache_dir: str = setting(
        "", "feature cache (default: beside the data folder)", group="audio and features"
    )
    # float16 halves the cache (and page-cache traffic) for large sets
    cache_dtype: str = setting(
        "float32",
        "storage type of cached features (float16 halves the cache)",
        choices=CACHE_DTYPES,
        label="cache dtype",
        group="audio and features",
    )
    skip_bad: bool = setting(
        False,
        "skip clips with bad metadata or undecodable audio (listed in the run folder)",
        flags=("--skip-bad", "--skip_bad"),
        group="data",
    )
    # off by default: history.csv holds the same curves, and tensorboard is an optional extra
    tensorboard: bool = setting(
        False,
        "also log losses, accuracy and learning rate per epoch and the test confusion matrix for TensorBoard "
        "(in the run folder's tensorboard/; needs the tensorboard extra)",
        group="run",
    )

    def validate(self) -> None:
        check_choices(self)
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'urbansound[tensorboard]'"
            )
        self.audio.validate()
        self.features.validate(self.audio.sample_rate)
        self.model.validate()
        self.split.validate()
        self.training.validate()
        self.augment.validate()
        self.reject.validate()
        check_backbone_front_end(self)

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
    ("RunConfig", "augment"): AugmentConfig,
    ("RunConfig", "reject"): RejectConfig,
}


def default_cache_dir(data_dir: str | Path) -> Path:
    """Feature cache beside the data, so it is reused across runs on the same data."""
    import os

    env = os.environ.get("URBANSOUND_CACHE")
    if env:
        return Path(env)
    return Path(data_dir).resolve().parent / ".urbansound-cache"


# Named starting points for `urbansound train --recipe NAME`; explicit flags override any of these settings.
def _baseline_recipe(config: RunConfig) -> None:
    """A common tutorial pipeline's settings exactly: cnn, 64-band log-mel at 44.1 kHz, Adam one-cycle 1e-3,
    batch 16, 25 epochs, no augmentation, no label smoothing or weight decay (the dataclass defaults)."""
    config.audio = AudioConfig()
    config.features = FeatureConfig()
    config.model = ModelConfig()
    config.training = TrainingConfig()
    config.augment = AugmentConfig()


def _default_recipe(config: RunConfig) -> None:
    """The best of the candidates ranked by nested, recording-grouped cross-validation inside the training
    fold (benchmarks/select_recipe.py; the test fold is never read): a quarter-width ResNet-18 on 128-band
    log-mel at 22.05 kHz taken relative to each clip's maximum, with its deltas, cached pitch/stretch
    variants, SpecAugment, mixup, label smoothing, AdamW with a cosine schedule over 100 epochs, keeping the
    last epoch; four of them from consecutive seeds, their probabilities averaged (``--ensemble 1`` trains
    one, 4x faster)."""
    _baseline_recipe(config)
    config.audio.sample_rate = 22_050  # UrbanSound8K's most common rate; halves the cost of 44.1 kHz
    config.features.n_fft = 1024  # 46 ms window at 22.05 kHz
    config.features.hop_length = 1024  # 46 ms hop, 87 frames per 4 s: as Salamon & Bello's 128 frames / 3 s
    config.features.n_mels = 128  # Salamon & Bello's 128 bands
    # Recording level says nothing about the class; removing it raised held-out accuracy inside fold 1 from
    # 38% to 52% on three inner groups (benchmarks/select_recipe.md).
    config.features.db_reference = "clip_max"
    # Quarter width (16-32-64-128): 0.7 M parameters, a quarter of the half-width model's MACs; on 2 CPU
    # cores 25 epochs over one fold took ~1-2 min once features are cached. Inside fold 1 it beat the CRNN
    # (49.3% vs 48.2% held-out accuracy over five inner groups) and, earlier, SB-CNN on validation.
    # A seed ensemble of 4 (seeds seed..seed+3, probabilities averaged): over the five inner groups of fold 1
    # the first k members scored 50.6 / 49.8 / 49.8 / 51.2 / 51.0% for k = 1..5, and the rule fixed before
    # those runs takes the best k unless a smaller one is within 0.5 points. 4x the training time.
    # Log-mel with its delta and delta-delta as three input channels: over the five inner groups of fold 1
    # (two seeds each) 52.4% against 48.0% for log-mel alone, the only lever that cleared the +2-point bar
    # fixed before the runs (benchmarks/select_recipe_notes.md, round 5; most of the gain is on one group).
    # The cache keeps the log-mel; the deltas are computed per batch (2% more MACs).
    config.model = ModelConfig(name="resnet", kwargs={"widths": [16, 32, 64, 128]}, ensemble=4, deltas=2)
    config.training.batch_size = 32
    # 100 epochs, not 25: over the five inner groups of fold 1 (two seeds each) 25 -> 50 epochs raised
    # held-out accuracy from 52.4% to 58.9% and 50 -> 100 to 61.4%, each past the +2-point bar fixed before
    # its runs (benchmarks/select_recipe_notes.md, rounds 6 and 7). Four times the training time of 25; the
    # augmentation (variants, SpecAugment, mixup) keeps the long run from overfitting.
    config.training.epochs = 100
    config.training.max_lr = 2e-3  # BatchNorm tolerates a higher peak than the baseline recipe's 1e-3
    config.training.weight_decay = 1e-2  # AdamW's decoupled decay
    config.training.label_smoothing = 0.1
    config.training.scheduler = "cosine"
    # The end of the cosine schedule, not the best validation epoch: a 20% hold-out of one fold is a few
    # recordings per class, and picking its best epoch lost accuracy on unseen recordings in 4 of 5 recipes.
    config.training.select_epoch = "last"
    config.augment = AugmentConfig(
        # 8 rather than 4 versions per clip: 50.6% against 49.3% held-out accuracy inside fold 1 (within the
        # noise, but the selection rule fixed beforehand took the higher); costs twice the one-off variant
        # computation and cache (use --cache-dtype float16 to halve it).
        variants=8,
        # No white noise: it fills the silent (zero-padded) tails that every evaluation clip has, so 4 of 5
        # training versions would look unlike any test clip (measured: validation accuracy collapsed).
        noise_snr_db=None,
        freq_masks=2,
        freq_mask_width=16,
        time_masks=2,
        time_mask_width=12,
        mixup_alpha=0.2,
    )


def _finetune_recipe(config: RunConfig) -> None:
    """Fine-tuning a pretrained backbone (PANNs CNN14 unless ``--model`` names another; ``--init-from`` names
    its checkpoint): the backbone's own sample rate and front end, the head at 1e-3 and the pretrained layers
    at a tenth of it, the first epoch head-only, 10 epochs, SpecAugment as PANNs trained with."""
    _baseline_recipe(config)
    config.model = ModelConfig(name="panns_cnn14")
    # Pretrained features need few passes: PANNs' and EVAR's fine-tuning on ESC-50 and UrbanSound8K converge
    # within ~10 epochs, and a CNN14 epoch on 2 CPU cores is costly (docs/transfer-learning.md).
    config.training.epochs = 10
    config.training.batch_size = 32
    config.training.max_lr = 1e-3  # the new head's rate; the backbone moves at backbone_lr_scale of it
    config.training.backbone_lr_scale = 0.1  # 1e-4 for pretrained layers: PANNs' finetune_template rate
    config.training.head_warmup_epochs = 1  # the random head settles before gradients reach the backbone
    config.training.scheduler = "cosine"
    config.training.weight_decay = 1e-2  # AdamW's decoupled decay, as the default recipe
    config.training.label_smoothing = 0.1
    # PANNs' SpecAugmentation(time_drop_width=64, time_stripes_num=2, freq_drop_width=8, freq_stripes_num=2)
    config.augment = AugmentConfig(freq_masks=2, freq_mask_width=8, time_masks=2, time_mask_width=64)
    use_backbone_front_end(config)


def use_backbone_front_end(config: RunConfig, given: Sequence[str] = ()) -> RunConfig:
    """For a pretrained backbone (``config.model.name``): take its own sample rate and front end, and the
    model options its checkpoint (``training.init_from``) supplies (a Hugging Face config). A sample-rate or
    feature setting in ``given`` (paths such as ``"features.n_mels"``) that differs is a ConfigError: the
    pretrained weights only fit their own input. Other models are left as they are."""
    from urbansound.models.backbones import find_backbone  # models import this module

    backbone = find_backbone(config.model.name)
    if backbone is None:
        return config
    needs_options = backbone.options_from is not None and "config" not in config.model.kwargs
    if needs_options and config.training.init_from:
        config.model.kwargs = {**backbone.options_from(config.training.init_from), **config.model.kwargs}
    features = backbone.front_end(config.model.kwargs)
    sample_rate = int(config.model.kwargs.get("sample_rate", backbone.sample_rate))
    wanted = _front_end_settings(features, sample_rate)
    current = _front_end_settings(config.features, config.audio.sample_rate)
    clashes = [
        f"{path} {current[path]!r} (it takes {wanted[path]!r})"
        for path in given
        if path in wanted and current[path] != wanted[path]
    ]
    if clashes:
        raise ConfigError(
            f"{backbone.name} ({backbone.architecture}) only fits its own front end: " + "; ".join(clashes)
        )
    config.audio.sample_rate = sample_rate
    config.features = dataclasses.replace(features)  # a copy: configs are edited, the declaration is not
    return config


def _front_end_settings(features: FeatureConfig, sample_rate: int) -> dict[str, Any]:
    """Setting paths (as the command line names them) -> values of a front end."""
    return {f"features.{k}": v for k, v in asdict(features).items()} | {"audio.sample_rate": sample_rate}


def check_backbone_front_end(config: RunConfig) -> None:
    """ConfigError when a pretrained backbone is given features or a sample rate other than its own."""
    from urbansound.models.backbones import find_backbone

    backbone = find_backbone(config.model.name)
    if backbone is None:
        return  # a model trained from scratch may take any features, a pretrained network's too
    features = backbone.front_end(config.model.kwargs)
    sample_rate = int(config.model.kwargs.get("sample_rate", backbone.sample_rate))
    if config.features != features or config.audio.sample_rate != sample_rate:
        raise ConfigError(
            f"{backbone.name} ({backbone.architecture}) takes {sample_rate} Hz and {features}, got "
            f"{config.audio.sample_rate} Hz and {config.features} (urbansound.config.use_backbone_front_end "
            "sets them; the command line does it for you)"
        )


RECIPES = {"default": _default_recipe, "baseline": _baseline_recipe, "finetune": _finetune_recipe}
DEFAULT_RECIPE = "default"  # what `urbansound train` starts from without --recipe or --config
# The baseline recipe's first name ("seed": it reproduces a tutorial pipeline's settings), still accepted.
RECIPE_ALIASES = {"seed": "baseline"}


def scaled_peak_lr(recipe_lr: float, recipe_batch: int, batch_size: int) -> float:
    """The peak learning rate for ``batch_size`` when the recipe's was tuned at ``recipe_batch``.

    Above the recipe's batch the rate grows with the square root of the batch ratio: the scaling rule for
    Adam-type optimisers (Malladi et al., 2022, "On the SDEs and scaling rules for adaptive gradient
    algorithms"; Krizhevsky, 2014), under which a k-times larger batch with sqrt(k) times the rate follows
    the same trajectory to first order. The linear rule (Goyal et al., 2017) is SGD's and overshoots with
    Adam. At or below the recipe's batch the recipe's rate is kept: smaller batches are noisier, not
    unstable, at that rate. Both schedules warm up (one-cycle by construction, cosine over 5% of steps),
    which the larger rate needs. Measured at batch 256 inside fold 1 (benchmarks/select_recipe_notes.md,
    round 9): 57.0% held-out accuracy against 51.4% at the unscaled rate.
    """
    if batch_size <= recipe_batch:
        return recipe_lr
    return recipe_lr * (batch_size / recipe_batch) ** 0.5


def apply_recipe(config: RunConfig, name: str) -> RunConfig:
    """Overwrite ``config``'s audio, feature, model, training and augmentation settings with recipe ``name``
    (data paths and split are kept) and record the recipe's name."""
    name = RECIPE_ALIASES.get(name, name)
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    RECIPES[name](config)
    config.recipe = name
    return config
