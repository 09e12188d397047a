"""The project's exception types: one for bad input data, one for bad parameters."""


class UrbanSoundError(Exception):
    """Base class of every error urbansound raises on purpose; the CLI prints these without a traceback."""


class DataError(UrbanSoundError):
    """Input data (metadata, audio files, model files) is missing, malformed or inconsistent."""


class ConfigError(UrbanSoundError, ValueError):
    """A parameter or combination of parameters is invalid."""
