"""urbansound: train, evaluate and apply deep-learning classifiers of environmental sound."""

__version__ = "0.1.0"

# Bumped whenever the model file layout changes in a way older readers cannot follow.
MODEL_FORMAT_VERSION = 1
