"""Reading fields out of records, with errors that name the column and the record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ftjax.data.errors import (
    LabelOutOfRangeError,
    MalformedRowError,
    MissingColumnError,
)


def require_column(record: Mapping[str, Any], column: str, where: str) -> Any:
    """``record[column]``; ``where`` ("record 7", "row 3 of a.csv") locates it in errors."""
    try:
        return record[column]
    except KeyError:
        raise MissingColumnError(
            f"column {column!r} missing in {where}; available columns: {sorted(record)}"
        ) from None


def text_field(record: Mapping[str, Any], column: str, where: str) -> str:
    value = require_column(record, column, where)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise MalformedRowError(
            f"column {column!r} in {where} must hold text, got {type(value).__name__} {value!r:.80}"
        )
    return value


def messages_field(record: Mapping[str, Any], column: str, where: str) -> list[dict]:
    """A conversation: a list of {"role": str, "content": str} turns (more keys are kept)."""
    value = require_column(record, column, where)
    if isinstance(value, (list, tuple)) and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in value) and value:
        return [dict(m) for m in value]
    raise MalformedRowError(f"column {column!r} in {where} must hold a conversation, a list of "
                            f"{{'role', 'content'}} turns, got {value!r:.80}")


def label_field(
    record: Mapping[str, Any], column: str, where: str, num_labels: int | None
) -> int:
    return parse_label(require_column(record, column, where), f"column {column!r} of {where}",
                       num_labels)


def parse_label(raw: Any, where: str, num_labels: int | None) -> int:
    """``raw`` as an int class id, checked against ``[0, num_labels)`` when given."""
    label = as_int(raw)
    if label is None:
        raise LabelOutOfRangeError(f"label {raw!r} in {where} is not an integer")
    if num_labels is not None and not 0 <= label < num_labels:
        raise LabelOutOfRangeError(f"label {label} in {where} is out of range [0, {num_labels})")
    return label


def as_int(raw: Any) -> int | None:
    """``raw`` as an int if it is integral ("3", 3, 3.0, np.int64(3)), else None."""
    if isinstance(raw, (bool, np.bool_)):
        return None  # True/False as a class id is almost always a mistake upstream
    if isinstance(raw, (int, np.integer)):
        return int(raw)
    if isinstance(raw, np.ndarray) and raw.ndim == 0:
        return as_int(raw.item())
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else None
