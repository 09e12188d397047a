"""Model families. Importing this package registers every family with the registry."""

from urbansound.models import (
    cnn,  # noqa: F401  (registers "cnn")
    crnn,  # noqa: F401  (registers "crnn")
    efficientat,  # noqa: F401  (registers "efficientat_mn04", "efficientat_mn10")
    huggingface,  # noqa: F401  (registers "hf_ast"; transformers is imported when one is built)
    panns,  # noqa: F401  (registers "panns_cnn14", "panns_cnn10", "panns_cnn14_16k")
    resnet,  # noqa: F401  (registers "resnet", "resnet18")
    sbcnn,  # noqa: F401  (registers "sbcnn")
)
from urbansound.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
