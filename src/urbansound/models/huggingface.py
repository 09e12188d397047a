"""Hugging Face ``transformers`` audio classifiers whose front end is Kaldi's fbank (the Audio Spectrogram
Transformer, AST): registered as ``hf_ast``; ``transformers`` is the optional extra ``transfer``.

The model's configuration (``config.json``) and the feature extractor's normalisation (mean, std and
``max_length`` of ``preprocessor_config.json``) are stored as model options, so a model file rebuilds the
network with ``AutoModelForAudioClassification.from_config`` and never needs the hub. A checkpoint is a
local ``save_pretrained`` directory, or a hub id the user names explicitly as ``hf:ORG/NAME`` (only then is
anything downloaded, into Hugging Face's own cache).

Following ``ASTFeatureExtractor``: fbank frames are zero-padded (or cut) to ``max_length`` and normalised
as ``(x - mean) / (2 std)``; both happen here, inside the backbone, so the cached features are the fbank.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from urbansound.config import FeatureConfig
from urbansound.errors import ConfigError, DataError
from urbansound.features.pretrained import KALDI_KIND
from urbansound.models.backbones import Backbone, register_backbone
from urbansound.models.registry import register_model

logger = logging.getLogger(__name__)

HUB_PREFIX = "hf:"
# ASTFeatureExtractor's defaults: AudioSet's fbank mean and std, 1024 frames (10.24 s), 16 kHz.
AST_MEAN, AST_STD, AST_MAX_LENGTH, AST_SAMPLE_RATE = -4.2677393, 4.5689974, 1024, 16_000
# Label maps name the checkpoint's classes; the new head's classes are the dataset's (in the model file).
_DROPPED_CONFIG_KEYS = ("id2label", "label2id", "num_labels", "_name_or_path", "architectures")
# ASTFeatureExtractor's fbank: 25 ms frames every 10 ms, padded to 512 points, 20 Hz .. Nyquist.
FRONT_END = FeatureConfig(
    kind=KALDI_KIND, n_fft=512, hop_length=160, n_mels=128, f_min=20.0, f_max=None, top_db=None
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "Hugging Face models need the transformers package: pip install 'urbansound[transfer]'"
        ) from None
    return transformers


class HuggingFaceAudio(nn.Module):
    """``AutoModelForAudioClassification`` built from ``config`` (a ``config.to_dict()``), fed fbank features
    ``(batch, 1, n_mels, frames)``; its state-dict keys are the Hugging Face model's under ``model.``."""

    def __init__(
        self,
        n_classes: int,
        config: dict[str, Any],
        mean: float = AST_MEAN,
        std: float = AST_STD,
        max_length: int = AST_MAX_LENGTH,
    ) -> None:
        super().__init__()
        transformers = _transformers()
        settings = {k: v for k, v in config.items() if k not in _DROPPED_CONFIG_KEYS}
        model_type = settings.pop("model_type", None)
        if model_type is None:
            raise ConfigError("the Hugging Face model options lack the config's model_type")
        hf_config = transformers.AutoConfig.for_model(model_type, **settings)
        hf_config.num_labels = n_classes
        self.model = transformers.AutoModelForAudioClassification.from_config(hf_config)
        self.mean, self.std, self.max_length = float(mean), float(std), int(max_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.squeeze(1).transpose(1, 2)  # (batch, 1, n_mels, frames) -> (batch, frames, n_mels)
        frames = x.shape[1]
        if frames < self.max_length:
            x = F.pad(x, (0, 0, 0, self.max_length - frames))  # zeros, as ASTFeatureExtractor pads
        x = x[:, : self.max_length]
        x = (x - self.mean) / (2 * self.std)
        return self.model(input_values=x).logits  # (batch, n_classes)


def local_directory(source: str) -> Path:
    """The local directory of ``source``: a folder, or ``hf:ORG/NAME`` fetched with huggingface_hub (the
    user named it: the only case in which urbansound downloads anything)."""
    if source.startswith(HUB_PREFIX):
        repo_id = source[len(HUB_PREFIX) :]
        from huggingface_hub import snapshot_download

        logger.info("downloading %s from the Hugging Face hub (named by --init-from)", repo_id)
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    path = Path(source)
    if not (path / "config.json").is_file():
        raise DataError(f"{path}: not a Hugging Face model directory (no config.json)")
    return path


def options_from_checkpoint(source: str) -> dict[str, Any]:
    """Model options (``config``, ``mean``, ``std``, ``max_length``) read from a checkpoint directory."""
    folder = local_directory(source)
    try:
        config = json.loads((folder / "config.json").read_text())
        pre = folder / "preprocessor_config.json"
        extractor = json.loads(pre.read_text()) if pre.is_file() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{folder}: unreadable Hugging Face configuration ({error})") from None
    if config.get("model_type") != "audio-spectrogram-transformer":
        raise ConfigError(
            f"{folder}: model_type {config.get('model_type')!r}; hf_ast reproduces the front end of the "
            "Audio Spectrogram Transformer (model_type 'audio-spectrogram-transformer') only"
        )
    config = {k: v for k, v in config.items() if k not in _DROPPED_CONFIG_KEYS}
    return {
        "config": config,
        "mean": extractor.get("mean", AST_MEAN),
        "std": extractor.get("std", AST_STD),
        "max_length": extractor.get("max_length", config.get("max_length", AST_MAX_LENGTH)),
        "sample_rate": extractor.get("sampling_rate", AST_SAMPLE_RATE),
    }


def front_end_from_options(options: dict[str, Any]) -> FeatureConfig:
    """AST's fbank with the checkpoint's band count."""
    return replace(FRONT_END, n_mels=int(options.get("config", {}).get("num_mel_bins", FRONT_END.n_mels)))


register_backbone(
    Backbone(
        name="hf_ast",
        architecture="Audio Spectrogram Transformer (transformers' ASTForAudioClassification)",
        sample_rate=AST_SAMPLE_RATE,
        features=FRONT_END,
        checkpoint_format="huggingface",
        head="model.classifier.dense",
        options_from=options_from_checkpoint,
        features_from=front_end_from_options,
    )
)


@register_model("hf_ast")
def hf_ast(
    n_classes: int,
    n_bands: int,
    config: dict[str, Any] | None = None,
    mean: float = AST_MEAN,
    std: float = AST_STD,
    max_length: int = AST_MAX_LENGTH,
    sample_rate: int = AST_SAMPLE_RATE,
) -> nn.Module:
    """An AST classifier; ``config`` is the checkpoint's ``config.json`` (filled in from ``--init-from``)."""
    del sample_rate  # the audio settings carry it; kept as an option so it is stored with the model
    if config is None:
        raise ConfigError(
            "hf_ast needs --init-from DIRECTORY or hf:ORG/NAME (its configuration comes from there)"
        )
    if int(config.get("num_mel_bins", n_bands)) != n_bands:
        raise ConfigError(
            f"hf_ast: the checkpoint takes {config['num_mel_bins']} mel bands, features have {n_bands}"
        )
    return HuggingFaceAudio(n_classes, config, mean, std, max_length)
