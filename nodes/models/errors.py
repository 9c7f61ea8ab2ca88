"""Errors raised by the model-file layer."""

from __future__ import annotations


class ModelFileError(Exception):
    """A model file is missing, unreadable, of an unknown kind, or does not match what was expected.

    The message always names the file (when there is one) and what was expected.
    """


class UnknownModelError(ModelFileError):
    """The state dict does not match any supported model family."""


class UnsafeModelPath(ValueError):
    """A model name given by a client tries to leave its models folder (``..``, absolute, NUL, symlink escape)."""


class ModelNotFound(ModelFileError, FileNotFoundError):
    """No file of that name exists in any search path of the folder."""
