"""Pretrained backbones: the front end each was trained with and the checkpoint format it loads from.

A registered model that starts from someone else's pretrained weights declares here, once, what its
weights need: the sample rate and features (``FeatureConfig``) of its own front end, the checkpoint
format users download (``panns``: a ``.pth`` dict with ``"model"``; ``efficientat``: a ``.pt`` state dict;
``huggingface``: a ``save_pretrained`` directory), and which module is the class head that is replaced for
the dataset's classes. The recipe ``finetune`` and ``--init-from`` read it from here.

Backbones bring their own input normalisation. EfficientAT's and AST's are fixed constants, so the
classifier's band normaliser is left as the identity for them; PANNs' ``bn0`` takes the band normaliser's
statistics into its running statistics (``absorb_input_statistics``), which computes the same function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from urbansound.config import FeatureConfig

CHECKPOINT_FORMATS = {
    "panns": "a PANNs release .pth (a dict whose 'model' holds the network's state dict)",
    "efficientat": "an EfficientAT .pt state dict",
    "huggingface": "a Hugging Face model directory (save_pretrained) or hf:ORG/NAME",
}


@dataclass(frozen=True)
class Backbone:
    """What a pretrained backbone needs of its input and its checkpoint."""

    name: str  # the registered model name
    architecture: str  # the reference project's name for it, for messages (e.g. "PANNs Cnn14")
    sample_rate: int  # Hz the network was trained at
    features: FeatureConfig  # its front end exactly
    checkpoint_format: str  # a key of CHECKPOINT_FORMATS
    head: str  # the output layer's module path in the backbone, replaced when the class count differs
    # Checkpoint keys that are not the backbone's (a fixed front end saved with it): checked, then dropped.
    front_end_keys: tuple[str, ...] = ()
    # Model options (``--model-option``) derived from a checkpoint before the model is built (Hugging Face).
    options_from: Callable[[str], dict[str, Any]] | None = field(default=None, compare=False)
    # The front end for given model options, when they change it (a Hugging Face config's band count).
    features_from: Callable[[dict[str, Any]], FeatureConfig] | None = field(default=None, compare=False)

    def front_end(self, options: dict[str, Any]) -> FeatureConfig:
        """The features this backbone takes with model options ``options``."""
        return self.features_from(options) if self.features_from is not None else self.features

    @property
    def expected(self) -> str:
        """The checkpoint this backbone loads, in words."""
        return f"{CHECKPOINT_FORMATS[self.checkpoint_format]} of {self.architecture}"


_BACKBONES: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Declare a registered model as a pretrained backbone (see the module docstring)."""
    _BACKBONES[backbone.name] = backbone
    return backbone


def find_backbone(model_name: str) -> Backbone | None:
    """The pretrained backbone registered as ``model_name``, or None for a model trained from scratch."""
    import urbansound.models  # noqa: F401  (registers every family)

    return _BACKBONES.get(model_name)


def list_backbones() -> list[str]:
    import urbansound.models  # noqa: F401

    return sorted(_BACKBONES)
