"""Model families. Importing this package registers every family with the registry."""

from urbansound.models import cnn  # noqa: F401  (registers "cnn")
from urbansound.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
