"""Errors raised for bad input data; each message says what is wrong and where, in one line.

All derive from ``DataError`` (a ``ValueError``) so a caller can catch every data problem at
once, and from the matching builtin where there is one (``FileNotFoundError``,
``UnicodeError``) so generic handlers keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent with the task."""


class MissingFileError(DataError, FileNotFoundError):
    """A data file or directory does not exist."""


class MissingSplitError(MissingFileError):
    """A split the config names has no file (or no such split in the dataset)."""


class MissingColumnError(DataError):
    """A record lacks a column (key) the task or source needs."""


class MalformedRowError(DataError):
    """A row cannot be parsed: invalid JSON, a field count unlike the header's, a non-text
    value where text belongs."""


class LabelOutOfRangeError(DataError):
    """A classification label is not one of the task's labels: an id outside
    ``[0, num_labels)``, a name outside the label set, or no label at all."""


class EmptySplitError(DataError):
    """A split or file holds no records."""


class UndecodableFileError(DataError, UnicodeError):
    """A file's bytes are not valid in the configured encoding.

    ``suggested_encoding``: an encoding that decodes the file, as the message suggests.
    """

    def __init__(self, message: str, *, suggested_encoding: str | None = None):
        super().__init__(message)
        self.suggested_encoding = suggested_encoding


class TokenizerError(DataError):
    """The tokenizer lacks something the task needs (an EOS or [MASK] token, ...)."""
