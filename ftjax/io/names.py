"""Two-way naming rules between a checkpoint format's tensor keys and our parameter paths.

A `Rule` pairs a checkpoint key template with one of our path templates; `{i}` stands for a layer
index in both. It also says how an array changes on the way in (`load`: transpose a torch Linear
weight (out, in) into our kernel (in, out), undo a permutation) and on the way out (`save`).
A `NameMap` is an ordered list of rules; `convert` runs a whole checkpoint through one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ftjax.io.loading import Conversion, Converted

ArrayFn = Callable[[np.ndarray], np.ndarray]


def identity(w: np.ndarray) -> np.ndarray:
    return w


def transpose(w: np.ndarray) -> np.ndarray:
    """torch Linear (out, in) <-> our Dense kernel (in, out); its own inverse."""
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D linear weight, got shape {w.shape}")
    return w.T


@dataclasses.dataclass(frozen=True)
class Rule:
    checkpoint: str  # e.g. "model.layers.{i}.self_attn.q_proj.weight"
    ours: str  # e.g. "backbone/layers_{i}/self_attn/q_proj/kernel"
    load: ArrayFn = identity
    save: ArrayFn | None = identity  # None: this format is read-only for this tensor
    checkpoint_re: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)
    ours_re: re.Pattern = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Compiled once per rule; frozen dataclasses set derived fields through object.
        object.__setattr__(self, "checkpoint_re", _template_re(self.checkpoint))
        object.__setattr__(self, "ours_re", _template_re(self.ours))


def _template_re(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


def _fill(template: str, match: re.Match) -> str:
    return template.replace("{i}", match.group("i")) if "{i}" in template else template


class NameMap:
    """Ordered rules; the first rule whose template matches a name wins."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)

    def to_ours(self, key: str) -> tuple[str, Rule] | None:
        for rule in self.rules:
            if m := rule.checkpoint_re.match(key):
                return _fill(rule.ours, m), rule
        return None

    def to_checkpoint(self, path: str) -> tuple[str, Rule] | None:
        for rule in self.rules:
            if m := rule.ours_re.match(path):
                return _fill(rule.checkpoint, m), rule
        return None

    def expected_key(self, path: str) -> str | None:
        found = self.to_checkpoint(path)
        return found[0] if found else None


def convert(
    tensors: Mapping[str, np.ndarray],
    names: NameMap,
    *,
    normalize_key: Callable[[str], str] = identity,
) -> Conversion:
    """Run checkpoint tensors (key -> array as stored) through `names`.

    normalize_key rewrites a stored key before matching (e.g. drops a `bert.` prefix); messages
    keep the key exactly as stored. Two keys landing on one path are reported, not overwritten.
    """
    conversion = Conversion(expected_key=names.expected_key)
    for key, array in tensors.items():
        found = names.to_ours(normalize_key(key))
        if found is None:
            conversion.unmapped[key] = tuple(array.shape)
            continue
        path, rule = found
        if path in conversion.tensors:
            conversion.problems.append(
                f"duplicate: checkpoint keys {conversion.tensors[path].source!r} and {key!r} both "
                f"fill our {path}")
            continue
        try:
            value = rule.load(array)
        except ValueError as err:  # a transform that cannot apply to this shape
            conversion.problems.append(f"shape: checkpoint key {key!r} {tuple(array.shape)} cannot "
                                       f"be converted for our {path}: {err}")
            continue
        conversion.tensors[path] = Converted(key, value, stored_shape=tuple(array.shape))
    return conversion
