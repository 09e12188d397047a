"""Model families. Importing this package registers every family with the registry."""

from urbansound.models import (
    cnn,  # noqa: F401  (registers "cnn")
    crnn,  # noqa: F401  (registers "crnn")
    resnet,  # noqa: F401  (registers "resnet", "resnet18")
    sbcnn,  # noqa: F401  (registers "sbcnn")
)
from urbansound.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
