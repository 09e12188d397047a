"""``--init-from``: start a classifier from a checkpoint, whatever its format.

The format is read from the file itself, never from its name:

- an urbansound model file (safetensors with an ``urbansound-model`` header): its backbone's weights
  (:func:`urbansound.modelfile.load_pretrained_weights`);
- a PyTorch checkpoint (a zip archive or a legacy pickle), read with ``torch.load(weights_only=True)`` so it
  runs no code: a PANNs release ``.pth`` (a dict whose ``"model"`` is the network's state dict) or an
  EfficientAT ``.pt`` state dict;
- a Hugging Face ``save_pretrained`` directory, or ``hf:ORG/NAME`` (downloaded only because the user
  named it).

Loading is strict: every tensor of the registered backbone must be in the checkpoint with its shape, and
nothing else may be, except the class head (replaced when the class count differs) and, for PANNs, the
fixed front-end tensors, which are compared with urbansound's own front end. Any mismatch is a ConfigError
naming the file, the format and architecture expected, and the tensors that differ.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from urbansound.errors import ConfigError, DataError
from urbansound.modelfile import load_pretrained_weights, state_differences
from urbansound.models.backbones import Backbone, find_backbone, list_backbones
from urbansound.models.classifier import AudioClassifier

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
# Agreement (absolute) between a release's fixed front-end tensors and ours: both are float32 roundings of
# the same float64 values (window x DFT basis, mel weights), so they agree far below this.
FRONT_END_TOLERANCE = 1e-4


def sniff_format(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (zip archive or legacy pickle) or ``"unknown"``, by the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    # Before the pickle test: the header length's low byte may be 0x80 too.
    if len(head) >= 9 and head[8:9] == b"{":  # 8-byte little-endian header length, then JSON
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol 2+: torch.save's legacy format
        return "torch"
    return "unknown"


def init_from(model: AudioClassifier, source: str, model_name: str) -> list[str]:
    """Initialise ``model`` (built for registered model ``model_name``) from checkpoint ``source``.

    Returns:
        names of the backbone tensors left at their fresh initialisation (the class head, if replaced).

    Raises:
        DataError: the file is missing, truncated or unreadable.
        ConfigError: the checkpoint is another format or architecture than ``model_name`` loads.
    """
    backbone = find_backbone(model_name)
    path = Path(source)
    if source.startswith(HUB_PREFIX) or path.is_dir():
        return _load(model, _huggingface_state(source, backbone, model_name), backbone, source)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    kind = sniff_format(path)
    if kind == "safetensors":
        return load_pretrained_weights(model, path)
    if kind == "unknown":
        raise DataError(
            f"{path}: neither an urbansound model file nor a PyTorch checkpoint{_wanted(backbone)}"
        )
    if backbone is None:
        raise ConfigError(
            f"{path}: a PyTorch checkpoint, but --model {model_name} starts only from urbansound model "
            f"files; the pretrained backbones that load PyTorch checkpoints are {', '.join(list_backbones())}"
        )
    return _load(model, _torch_state(path, backbone), backbone, str(path))


def _wanted(backbone: Backbone | None) -> str:
    return f" ({backbone.name} expects {backbone.expected})" if backbone is not None else ""


def _torch_state(path: Path, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The state dict inside a PyTorch checkpoint, in ``backbone``'s format."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path}: truncated or unreadable PyTorch checkpoint ({str(error).splitlines()[0]}); "
            f"expected {backbone.expected}"
        ) from None
    is_release_dict = isinstance(data, dict) and isinstance(data.get("model"), dict)
    if backbone.checkpoint_format == "panns":
        if not is_release_dict:
            raise ConfigError(
                f"{path}: no 'model' state dict in it; {backbone.name} expects {backbone.expected}"
            )
        data = data["model"]
    elif backbone.checkpoint_format == "efficientat" and is_release_dict:
        raise ConfigError(
            f"{path}: a dict with 'model' (a PANNs release?); {backbone.name} expects {backbone.expected}"
        )
    elif backbone.checkpoint_format == "huggingface":
        raise ConfigError(f"{path}: a PyTorch file; {backbone.name} expects {backbone.expected}")
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConfigError(f"{path}: not a state dict of tensors; {backbone.name} expects {backbone.expected}")
    return dict(data)


def _huggingface_state(source: str, backbone: Backbone | None, model_name: str) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face checkpoint, keyed as the registered backbone holds them (``model.``).

    transformers' own ``from_pretrained`` reads them (safetensors, or a ``.bin`` with ``weights_only``), as it
    renames the keys of older checkpoints to its current module names; its loading report must be clean.
    """
    if backbone is None or backbone.checkpoint_format != "huggingface":
        wanted = f"{backbone.expected}" if backbone is not None else "urbansound model files"
        raise ConfigError(
            f"{source}: a Hugging Face model; --model {model_name} expects {wanted} (use hf_ast)"
        )
    from urbansound.models.huggingface import _transformers, local_directory

    folder = local_directory(source)
    auto = _transformers().AutoModelForAudioClassification
    try:
        network, report = auto.from_pretrained(folder, output_loading_info=True)
    except (OSError, ValueError, RuntimeError, EOFError, SafetensorError, pickle.UnpicklingError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"{folder}: truncated or unreadable weights ({reason}); expected {backbone.expected}"
        ) from None
    problems = {k: v for k, v in report.items() if k != "error_msgs" and v}
    if problems:
        raise ConfigError(f"{folder}: not the weights of {backbone.architecture}: {problems}")
    return {f"model.{k}": v for k, v in network.state_dict().items()}


def _load(
    model: AudioClassifier, state: dict[str, torch.Tensor], backbone: Backbone | None, source: str
) -> list[str]:
    """Load ``state`` into ``model.backbone`` strictly but for the head; returns the head tensors reset."""
    assert backbone is not None
    front_end = {k: state.pop(k) for k in backbone.front_end_keys if k in state}
    if front_end:
        check_panns_front_end(front_end, model, backbone, source)
    target = model.backbone.state_dict()
    mismatched = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    head = [k for k in mismatched if k.startswith(backbone.head + ".")]
    differences = state_differences(state, target, ignore=head)
    if differences:
        raise ConfigError(
            f"{source}: not the weights of {backbone.architecture} (expected {backbone.expected}): "
            + differences
        )
    # Every other key was checked above, so strict=False only leaves the replaced head at its initialisation.
    model.backbone.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=False)
    if head:
        logger.info(
            "%s: class head %s replaced for %d classes", source, backbone.head, target[head[0]].shape[0]
        )
    logger.info("initialised %s from %s", backbone.name, source)
    return head


def check_panns_front_end(
    found: dict[str, torch.Tensor], model: AudioClassifier, backbone: Backbone, source: str
) -> None:
    """Compare a PANNs release's fixed STFT kernels and mel matrix with the model's front end."""
    ours = panns_front_end_tensors(model)
    differ = [
        k
        for k, v in found.items()
        if k in ours and (v.shape != ours[k].shape or (v.float() - ours[k]).abs().max() > FRONT_END_TOLERANCE)
    ]
    if differ:
        f = backbone.features
        raise ConfigError(
            f"{source}: its front end ({', '.join(differ)}) is not {backbone.name}'s "
            f"({backbone.sample_rate} Hz, n_fft {f.n_fft}, {f.n_mels} mel bands {f.f_min:g}-{f.f_max:g} Hz): "
            "the checkpoint was trained on other features (a 16 kHz release is panns_cnn14_16k)"
        )


def panns_front_end_tensors(model: AudioClassifier) -> dict[str, torch.Tensor]:
    """The front-end tensors a PANNs release stores (torchlibrosa's layout), from the model's front end."""
    frontend: Any = model.frontend
    kernels = frontend.kernels.detach().cpu()  # (2 bins, 1, n_fft): real rows, then imaginary rows
    bins = frontend.n_bins
    return {
        "spectrogram_extractor.stft.conv_real.weight": kernels[:bins],
        "spectrogram_extractor.stft.conv_imag.weight": kernels[bins:],
        "logmel_extractor.melW": frontend.filterbank.detach().cpu().T,  # (bins, n_mels)
    }
