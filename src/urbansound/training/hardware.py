"""How the classifier runs on the device: mixed precision, channels-last, torch.compile, DDP.

The training loop drives a :class:`TrainingModel`, whose ``classify_features`` applies the training-only
augmentation and goes through DDP and ``torch.compile`` (both wrap ``forward`` only, so the training path is
a module's ``forward``) under autocast. The plain :class:`~urbansound.models.classifier.AudioClassifier`
inside keeps the weights: it is what the optimiser, checkpoints and model files see.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

from urbansound.config import PRECISIONS
from urbansound.errors import ConfigError
from urbansound.models.classifier import AudioClassifier
from urbansound.training.distributed import DistributedContext, convert_batchnorm

logger = logging.getLogger(__name__)

# Devices whose convolutions run faster with channels-last (NHWC) weights: cuDNN's tensor-core kernels, and
# oneDNN's on x86 CPUs (one training step of the default model at batch 32 on 2 cores: 112 ms -> 77 ms, fp32).
# MPS is left out: its channels-last convolutions have had correctness bugs across torch releases.
CHANNELS_LAST_DEVICES = ("cuda", "cpu")


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device``; ``None`` means plain float32.

    ``auto``: bf16 on CUDA GPUs that support it (no loss scaling needed), fp16 on older ones (with a grad
    scaler), float32 elsewhere. bf16 on CPU is allowed when asked for; fp16 needs CUDA.
    """
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name == "fp32":
        return None
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16 needs a CUDA device, not {device.type}")
    if name == "bf16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"--precision bf16 runs on CUDA or CPU, not {device.type}")
    return torch.bfloat16 if name == "bf16" else torch.float16


class _TrainingPath(nn.Module):
    """The training path as a ``forward``, so that DDP and torch.compile (which wrap ``forward`` only) see
    it: FilterAugment on dB features, the classifier's normaliser, SpecAugment on normalised features, the
    backbone. Both augmentations act only in training mode and hold no state, so the classifier's
    state_dict (what checkpoints and model files store) is the same with or without them."""

    def __init__(self, classifier: AudioClassifier, band_augment: nn.Module, spec_augment: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.band_augment = band_augment
        self.spec_augment = spec_augment

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # features: (batch, n_bands, frames) dB -> logits (batch, n_classes)
        x = self.spec_augment(self.classifier.normalizer(self.band_augment(features)))
        return self.classifier.classify_normalized(x)


class TrainingModel(nn.Module):
    """The classifier as :func:`~urbansound.training.loop.train_one_epoch` and ``evaluate`` drive it: the
    training-only behaviour (augmentation, DDP, autocast) lives here, never on the deployable classifier.

    In training mode FilterAugment (before the normaliser) and SpecAugment (after it) are applied and
    ``classify_features`` runs through DDP (when distributed); in eval mode it bypasses DDP, whose forward
    may issue collectives that ranks scoring different numbers of batches would not match. Both run under
    autocast when a reduced precision is chosen.
    """

    def __init__(
        self, train_path: nn.Module, eval_path: nn.Module, device: torch.device, dtype: torch.dtype | None
    ) -> None:
        super().__init__()
        self.train_path = train_path
        self.eval_path = eval_path
        self.device_type = device.type
        self.autocast_dtype = dtype

    def classify_features(self, features: torch.Tensor) -> torch.Tensor:
        path = self.train_path if self.training else self.eval_path
        autocast = (
            torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            return path(features)  # (batch, n_classes)


# cuBLAS reproducibility needs a fixed workspace per stream, chosen by this variable before cuBLAS starts
# (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
CUBLAS_WORKSPACE_VARIABLE = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def kernel_choice(device: torch.device, deterministic: bool) -> Iterator[None]:
    """Which kernels torch picks while training on ``device``, restored on exit (they are process-wide).

    Default: on CUDA, cuDNN's benchmark mode: every batch has the same shape, so its one-off search for the
    fastest convolution algorithm per shape pays back from the second step, at the price of results that
    differ between runs in the last bits. ``deterministic``: no autotuning, cuDNN's deterministic
    algorithms, ``torch.use_deterministic_algorithms`` (warning, not failing, at an operation that has no
    deterministic kernel) and a fixed cuBLAS workspace, so a CUDA run repeats and resumes bit for bit like a
    CPU run (which needs none of this).
    """
    cudnn = torch.backends.cudnn
    saved = (
        cudnn.benchmark,
        cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cuda":
        cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
        if deterministic:
            os.environ.setdefault(CUBLAS_WORKSPACE_VARIABLE, CUBLAS_DETERMINISTIC_WORKSPACE)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def prepare_model(
    classifier: AudioClassifier,
    context: DistributedContext,
    precision: str = "fp32",
    compile: bool = False,
    band_augment: nn.Module | None = None,
    spec_augment: nn.Module | None = None,
) -> TrainingModel:
    """Move ``classifier`` to the context's device and wrap it for training, with ``band_augment``
    (FilterAugment, on dB features) and ``spec_augment`` (SpecAugment, on normalised features) applied in
    training mode (default: none).

    Distributed: BatchNorm is synchronised over ranks (in place, parameters kept) and the model is wrapped
    in DistributedDataParallel. CUDA and CPU: channels-last weights (cuDNN and oneDNN then run every
    convolution NHWC, which tensor cores and SIMD units prefer; the 1-channel input is the same in either
    layout). ``compile``: torch.compile,
    applied outside DDP as PyTorch recommends, so it can split graphs at DDP's bucket boundaries.
    """
    device = context.device
    dtype = resolve_precision(precision, device)
    if context.distributed:
        convert_batchnorm(classifier, device)
    classifier.to(device)
    if device.type in CHANNELS_LAST_DEVICES:
        classifier.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    eval_path: nn.Module = _TrainingPath(
        classifier, band_augment or nn.Identity(), spec_augment or nn.Identity()
    )
    train_path: nn.Module = eval_path
    if context.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_path = DistributedDataParallel(
            eval_path, device_ids=[device.index] if device.type == "cuda" else None
        )
    if compile:
        train_path = torch.compile(train_path)  # type: ignore[assignment]
        eval_path = torch.compile(eval_path) if context.distributed else train_path  # type: ignore[assignment]
    if context.is_main:
        logger.info(
            "device %s, precision %s%s%s",
            device,
            "fp32" if dtype is None else str(dtype).removeprefix("torch."),
            ", torch.compile" if compile else "",
            f", DDP over {context.world_size} processes" if context.distributed else "",
        )
    return TrainingModel(train_path, eval_path, device, dtype)
