"""Errors meant for the user: the CLI prints their message and exits non-zero, without a traceback."""


class Kp2dError(Exception):
    """A user-facing error (bad input file, bad option, corrupt checkpoint, ...)."""


class ConfigError(Kp2dError, ValueError):
    """A configuration is invalid (unknown key, wrong type, unknown preset)."""


class CheckpointError(Kp2dError):
    """A file is not a usable KeyPointNet checkpoint."""


class DataError(Kp2dError):
    """An input image or dataset is missing, unreadable or malformed."""
