"""The PEFT fields of a backbone config, read and written generically.

Every method owns one optional settings field on the backbone config (`lora`, and one per
further method; DESIGN.md 1). Code that must carry "whatever methods this model has" (the
adapter-only file, the base fingerprint) goes through these functions instead of naming each
method, so a new method needs no change here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def _field_classes(config) -> dict[str, type]:
    """name -> settings dataclass, for every field typed `SomeConfig | None`."""
    hints = typing.get_type_hints(type(config))
    classes = {}
    for field in dataclasses.fields(config):
        hint = hints.get(field.name)
        if typing.get_origin(hint) not in (typing.Union, types.UnionType):
            continue
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1 and dataclasses.is_dataclass(members[0]):
            classes[field.name] = members[0]
    return classes


def peft_fields(config) -> dict[str, Any]:
    """The methods a config has switched on: field name -> its settings (non-None only)."""
    return {name: getattr(config, name) for name in _field_classes(config)
            if getattr(config, name) is not None}


def without_peft(config):
    """The same backbone config with every PEFT method switched off: the bare base model."""
    return dataclasses.replace(config, **{name: None for name in _field_classes(config)})


def peft_to_dict(config) -> dict[str, dict]:
    """JSON-ready settings of the methods switched on (tuples become lists)."""
    return {name: dataclasses.asdict(value) for name, value in peft_fields(config).items()}


def with_peft(config, settings: dict[str, dict], *, where: str):
    """`config` with the methods in `settings` (as written by peft_to_dict) switched on."""
    classes = _field_classes(config)
    changes = {}
    for name, values in settings.items():
        if name not in classes:
            raise ValueError(f"{where}: unknown PEFT method field {name!r}; this version knows "
                             f"{sorted(classes)}")
        changes[name] = settings_from_dict(classes[name], values, where=f"{where}: {name}")
    return dataclasses.replace(config, **changes)


def settings_from_dict(cls: type, values: dict, *, where: str):
    """A frozen settings dataclass back from its JSON dict; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{where}: {unknown} are not fields of {cls.__name__}")
    # JSON turns tuples into lists; give tuple-typed fields their tuples back.
    return cls(**{k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple
                  else v for k, v in values.items()})
