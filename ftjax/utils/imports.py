"""Objects named in configs as 'module:Name' (a user's loss term or hook)."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(target: str, what: str) -> Any:
    """`module:attr` (a dotted attr allowed) imported; ValueError naming `what` if it fails."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {target!r}: expected 'module:Name'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {target!r}: cannot import {module_name!r}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {target!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj
