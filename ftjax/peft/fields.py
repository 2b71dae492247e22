"""The PEFT fields of a backbone config as JSON and back.

Every method owns one optional settings field on the backbone config (PEFT_FIELDS; DESIGN.md 1).
The adapter-only file stores "whatever methods this model has" through these functions instead
of naming each method, so a new method needs no change here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ftjax.peft.attach import PEFT_METHODS
from ftjax.settings import from_config


def _field_classes() -> dict[str, type]:
    """PEFT config field -> its settings dataclass (houlsby and pfeiffer share one field)."""
    return {field: cls for field, cls, _ in PEFT_METHODS.values()}


def peft_fields(config) -> dict[str, Any]:
    """The methods a config has switched on: field name -> its settings."""
    return {name: getattr(config, name) for name in config.peft_methods}


def peft_to_dict(config) -> dict[str, dict]:
    """JSON-ready settings of the methods switched on."""
    return {name: dataclasses.asdict(value) for name, value in peft_fields(config).items()}


def with_peft(config, settings: dict[str, dict], *, where: str):
    """`config` with the methods in `settings` (as written by peft_to_dict) switched on."""
    classes = _field_classes()
    changes = {}
    for name, values in settings.items():
        if name not in classes:
            raise ValueError(f"{where}: unknown PEFT method field {name!r}; this version knows "
                             f"{sorted(classes)}")
        changes[name] = from_config(classes[name], values, f"{where}: {name}")
    return dataclasses.replace(config, **changes)
