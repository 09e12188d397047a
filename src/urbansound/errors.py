"""The project's exception types: bad input data, bad parameters, and a machine out of a resource."""


class UrbanSoundError(Exception):
    """Base class of every error urbansound raises on purpose; the CLI prints these without a traceback."""


class DataError(UrbanSoundError):
    """Input data (metadata, audio files, model files) is missing, malformed or inconsistent."""


class ConfigError(UrbanSoundError, ValueError):
    """A parameter or combination of parameters is invalid."""


class ResourceError(UrbanSoundError):
    """The machine ran out of something the work needs (device memory, disk space); nothing computed so far
    is lost, and the message says what to change."""
