"""Settings blocks: frozen dataclasses built strictly from a config block."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any


def from_config(cls: type, cfg: Any, what: str):
    """A settings dataclass `cls` from a ConfigDict / mapping / instance / None (defaults).

    Unknown keys are an error naming the closest known one: a typo must never fall back to a
    default silently.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise KeyError(f"unknown {what} setting {key!r}{hint}")
    return cls(**values)
