"""Exceptions raised by the maskid core library.

Every error maskid raises on purpose derives from :class:`MaskidError`::

    MaskidError
    ├── InvalidImageError     the bytes or file are not a usable image
    ├── NoFaceError           an image decoded, but no face passed the detector
    ├── ConfigurationError    a setting has an invalid value
    ├── ModelError            model weights are missing, corrupt or incompatible
    ├── DatasetError          a dataset folder or pairs file is missing or malformed
    └── StorageError          the gallery database cannot be opened or written
        └── PersonNotFoundError

Front ends (the CLI and the bot) catch ``MaskidError`` and show its message;
anything else is a bug and keeps its traceback.
"""


class MaskidError(Exception):
    """Base class of every error that maskid raises on purpose."""


class InvalidImageError(MaskidError):
    """The input is not an image maskid can decode (wrong format, truncated, too large)."""


class NoFaceError(MaskidError):
    """The image decoded, but the detector found no face in it."""


class ConfigurationError(MaskidError):
    """A setting has an invalid value."""


class ModelError(MaskidError):
    """Model weights are missing, corrupt or do not fit the network."""


class DatasetError(MaskidError):
    """A dataset folder or evaluation file is missing or malformed."""


class StorageError(MaskidError):
    """The gallery database cannot be opened, migrated or written."""


class PersonNotFoundError(StorageError):
    """No person with the requested name or id exists in the gallery."""
