"""Errors raised for bad input data; each message says what is wrong and where.

All derive from ``DataError`` (a ``ValueError``) so a caller can catch every data problem at
once, and from the matching builtin where there is one (``FileNotFoundError``) so generic
handlers keep working.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent with the task."""


class MissingFileError(DataError, FileNotFoundError):
    """A data file or directory does not exist."""


class MissingColumnError(DataError):
    """A record lacks a column (key) the task or source needs."""


class LabelOutOfRangeError(DataError):
    """A classification label is not an integer in ``[0, num_labels)``."""


class EmptySplitError(DataError):
    """A split or file holds no records."""


class TokenizerError(DataError):
    """The tokenizer lacks something the task needs (an EOS or [MASK] token, ...)."""
