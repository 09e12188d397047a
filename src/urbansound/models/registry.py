"""Model registry in the style of timm: families register a factory by name, callers build by name.

>>> model = create_model("cnn", n_classes=10, n_bands=64)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from urbansound.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(n_classes: int, n_bands: int, **kwargs) -> nn.Module`` under ``name``."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def create_model(name: str, n_classes: int, n_bands: int, **kwargs: object) -> nn.Module:
    """Build a registered model.

    The model maps normalised features ``(batch, 1, n_bands, frames)`` to logits ``(batch, n_classes)``.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    try:
        return factory(n_classes=n_classes, n_bands=n_bands, **kwargs)
    except TypeError as error:  # a misspelled option reaches the factory as an unexpected keyword
        raise ConfigError(f"bad options for model {name!r}: {error}") from None
