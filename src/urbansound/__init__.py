"""urbansound: train, evaluate and apply deep-learning classifiers of environmental sound."""

__version__ = "0.1.0"

# Bumped whenever the model file layout changes in a way older readers cannot follow.
MODEL_FORMAT_VERSION = 1

__all__ = ["Classifier", "Prediction", "__version__"]


def __getattr__(name: str) -> object:
    """``urbansound.Classifier`` and ``urbansound.Prediction``, imported on first use: the command line
    imports this package too, and most commands need neither torch's model code nor a model."""
    if name in ("Classifier", "Prediction"):
        from urbansound import api

        return getattr(api, name)
    raise AttributeError(f"module 'urbansound' has no attribute {name!r}")
