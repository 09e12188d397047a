"""The model file: one ``.safetensors`` holding weights, normalisation statistics, class names, audio and
feature settings and the model's configuration (as JSON in the safetensors header).

Loading it never executes code: safetensors stores raw tensors and strings only (no pickle), and the
model is rebuilt by name from the registry.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from urbansound import MODEL_FORMAT_VERSION, __version__
from urbansound.config import AudioConfig, FeatureConfig, ModelConfig, RejectConfig, _from_dict
from urbansound.errors import DataError
from urbansound.features.frontend import make_frontend
from urbansound.features.views import build_stages
from urbansound.io_utils import atomic_output
from urbansound.models import create_model
from urbansound.models.classifier import AudioClassifier
from urbansound.models.ensemble import SeedEnsemble

logger = logging.getLogger(__name__)

FORMAT_NAME = "urbansound-model"


@dataclass
class ModelSpec:
    """Everything besides the weights that rebuilds a classifier."""

    audio: AudioConfig
    features: FeatureConfig
    model: ModelConfig
    class_names: list[str]
    # The silence floor, shortest input and confidence floor (files written before them get the defaults).
    reject: RejectConfig = field(default_factory=RejectConfig)
    # Divides the logits before the softmax: fitted on the validation split after training (1: as trained).
    temperature: float = 1.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "audio": asdict(self.audio),
                "features": asdict(self.features),
                "model": asdict(self.model),
                "class_names": self.class_names,
                "reject": asdict(self.reject),
                "temperature": self.temperature,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        if not float(data.get("temperature", 1.0)) > 0:  # also NaN; read_model_spec reports the file
            raise ValueError(f"temperature must be positive, got {data['temperature']}")
        return cls(
            audio=_from_dict(AudioConfig, data["audio"]),
            features=_from_dict(FeatureConfig, data["features"]),
            model=_from_dict(ModelConfig, data["model"]),
            class_names=list(data["class_names"]),
            reject=_from_dict(RejectConfig, data.get("reject", {})),
            temperature=float(data.get("temperature", 1.0)),
        )


def build_classifier(spec: ModelSpec) -> AudioClassifier:
    """A fresh (untrained) classifier for ``spec``; a :class:`SeedEnsemble` of backbones when
    ``spec.model.ensemble`` > 1."""

    stages = build_stages(spec.model, spec.features, spec.audio.sample_rate)  # normaliser, channels, views
    # Extra input channels (deltas, band position) are asked of the backbone only when there are any.
    channels = {"in_channels": stages.inputs.channels} if stages.inputs.channels > 1 else {}

    def new_backbone() -> torch.nn.Module:
        return create_model(
            spec.model.name,
            n_classes=len(spec.class_names),
            n_bands=spec.features.n_mels,
            **channels,
            **spec.model.kwargs,
        )

    backbone = new_backbone()
    if spec.model.ensemble > 1:
        backbone = SeedEnsemble([backbone, *(new_backbone() for _ in range(spec.model.ensemble - 1))])
    return AudioClassifier(
        make_frontend(spec.features, spec.audio.sample_rate),
        stages.normalizer,
        backbone,
        inputs=stages.inputs,
        views=stages.views,
    )


def save_model_file(
    path: str | Path, model: AudioClassifier, spec: ModelSpec, extra: dict[str, Any] | None = None
) -> Path:
    """Write the model file atomically. ``extra`` (JSON-serialisable) is stored as ``extra`` metadata,
    e.g. the validation accuracy it was selected on.

    Raises:
        ResourceError: the disk is full (or another OS error while writing); a file already at ``path`` is
            kept.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(MODEL_FORMAT_VERSION),
        "urbansound_version": __version__,
        "spec": spec.to_json(),
        "extra": json.dumps(extra or {}),
    }
    size = sum(t.element_size() * t.nelement() for t in tensors.values()) + len(json.dumps(metadata))
    # safetensors reports a full disk as SafetensorError("... (os error 28)"), which atomic_output turns
    # into a ResourceError naming this file.
    with atomic_output(path, "the model file", expected_bytes=size) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        sort_header_metadata(tmp)
    return path


def sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors file's header with its metadata in key order, so that equal weights and
    metadata give equal bytes.

    safetensors (0.8) keeps the metadata in a Rust ``HashMap``, whose order is randomised per process and per
    map: two saves of the same model (``train --resume RUN --reevaluate`` of a finished run) otherwise
    differ in the header alone. Only the order changes, so the header keeps its length (padded with spaces
    to 8 bytes, as safetensors aligns the tensor data) and is patched in place; should its length change
    (an escaping difference), the tensor data is moved after it.
    """
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        if len(text) == length:
            handle.seek(8)
            handle.write(text)
            return
        data = handle.read()  # the tensors, moved to follow the new header
        handle.seek(0)
        handle.write(struct.pack("<Q", len(text)) + text + data)
        handle.truncate()


def read_model_spec(path: str | Path) -> tuple[ModelSpec, dict[str, Any]]:
    """The spec and extra metadata of a model file, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable urbansound model file ({error})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise DataError(f"{path}: not an urbansound model file (no '{FORMAT_NAME}' header)")
    version = metadata.get("format_version")
    if version != str(MODEL_FORMAT_VERSION):
        raise DataError(
            f"{path}: model file format version {version}, this urbansound "
            f"({__version__}) reads version {MODEL_FORMAT_VERSION}"
        )
    try:
        return ModelSpec.from_json(metadata["spec"]), json.loads(metadata.get("extra", "{}"))
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: damaged model metadata ({error})") from None


def load_model_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AudioClassifier, ModelSpec]:
    """Rebuild the classifier from a model file, in eval mode; DataError on a damaged or foreign file."""
    spec, _ = read_model_spec(path)
    model = build_classifier(spec)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{path}: damaged model weights ({error})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise DataError(f"{path}: weights do not match the model {spec.model.name!r}: {error}") from None
    return model.to(device).eval(), spec


STATE_DIFFERENCES_SHOWN = 5  # tensors named per kind of difference in an error message


def state_differences(
    file_state: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor], ignore: Sequence[str] = ()
) -> str:
    """What keeps ``file_state`` from loading strictly into ``model_state``: missing and unexpected keys
    and differing shapes (except the keys in ``ignore``, e.g. a class head about to be replaced), a few of
    each, as one line for an error message; "" when they fit."""
    shown = STATE_DIFFERENCES_SHOWN
    missing = sorted(set(model_state) - set(file_state))
    unexpected = sorted(set(file_state) - set(model_state))
    other = sorted(
        k
        for k in set(model_state) & set(file_state)
        if model_state[k].shape != file_state[k].shape and k not in ignore
    )
    details = [f"missing {missing[:shown]}"] if missing else []
    details += [f"unexpected {unexpected[:shown]}"] if unexpected else []
    shapes = [(k, tuple(file_state[k].shape), tuple(model_state[k].shape)) for k in other[:shown]]
    details += [f"{k}: file {file_shape} vs model {model_shape}" for k, file_shape, model_shape in shapes]
    return "; ".join(details)


def load_pretrained_weights(model: AudioClassifier, path: str | Path) -> list[str]:
    """Initialise ``model`` from a user-supplied model file for fine-tuning (nothing is downloaded).

    Every backbone tensor must match in name and shape, except the output layer when the class count
    differs (then it keeps its fresh initialisation). The normaliser is not copied: the new training set's
    statistics are measured as usual.

    Returns:
        names of the tensors left at their fresh initialisation (the output layer, if replaced).

    Raises:
        ConfigError: the file holds another architecture (model name, options or band count), naming the
            tensors that differ.
        DataError: the file is missing, damaged or not an urbansound model file.
    """
    from urbansound.errors import ConfigError

    spec, _ = read_model_spec(path)
    try:
        source = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(f"{path}: damaged model weights ({error})") from None
    target = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    source = {k: v for k, v in source.items() if k.startswith("backbone.")}
    mismatched = sorted(k for k in set(target) & set(source) if target[k].shape != source[k].shape)
    n_old = len(spec.class_names)
    head = [
        k
        for k in mismatched
        if source[k].shape[0] == n_old
        and target[k].shape[0] != n_old
        and target[k].shape[1:] == source[k].shape[1:]
    ]
    differences = state_differences(source, target, ignore=head)
    if differences:
        raise ConfigError(
            f"{path}: its weights do not fit this model: the file holds {spec.model.name!r} "
            f"({spec.features.n_mels} bands, options {spec.model.kwargs}); {differences}"
        )
    state = {k: v for k, v in source.items() if k not in head}
    model.load_state_dict(state, strict=False)
    if head:
        logger.info(
            "%s: %d classes -> %d; output layer re-initialised",
            path,
            n_old,
            model.state_dict()[head[0]].shape[0],
        )
    return head
