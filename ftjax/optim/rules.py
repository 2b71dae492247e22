"""Trainability rules and their resolution to one rule per parameter leaf (DESIGN.md decision 2).

A spec is an ordered list of `(regex, Rule)`. Every leaf's "/"-joined path is tested with
`re.fullmatch` (the whole path must match: `.*bias` matches `.../query/bias`, `bias` alone does
not) against the patterns in order; the first match wins. Every leaf must match some pattern.

Paths are the canonical per-layer ones (`backbone/layers_3/...`). A leaf stacked for `scan`
(`backbone/layers/block/...`, layer axis 0) is resolved slice by slice under the per-layer path of
each slice, giving a `StackedRule` with one `Rule` per layer; so a spec means the same thing in
both layouts, and per-layer multipliers of a stacked leaf act along its axis 0.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Sequence

import jax
import numpy as np

from ftjax.settings import ConfigError
from ftjax.utils.paths import canonical_layer_paths, is_stacked, path_str

# A layer that never trains starts at this step: far beyond any run, and still an int32.
NEVER = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True)
class Rule:
    """What happens to the leaves a pattern matches.

    frozen: never trains (no gradient, no optimizer state, bit-identical after training).
    lr, wd: multipliers of the optimizer's learning rate and weight decay for these leaves.
    unfreeze_at: the optimizer step at which a leaf starts training (gradual unfreezing); before
      it the leaf's update is exactly zero and its optimizer moments do not move. None: from the
      start. Such a leaf is trainable (it has gradients and optimizer state from step 0).
    """

    frozen: bool = False
    lr: float = 1.0
    wd: float = 1.0
    unfreeze_at: int | None = None

    def __post_init__(self):
        if self.lr < 0 or self.wd < 0:
            raise ValueError(f"multipliers must be >= 0, got {self}")
        if self.frozen and self.unfreeze_at is not None:
            raise ValueError(
                f"{self} is both frozen (never trains) and unfrozen at a step; drop one"
            )
        if self.unfreeze_at is not None and not 0 <= self.unfreeze_at < NEVER:
            raise ValueError(f"unfreeze_at must be a step >= 0, got {self.unfreeze_at}")

    @property
    def trains(self) -> bool:
        """True when the leaf trains at some step."""
        return not self.frozen

    @property
    def start_step(self) -> int:
        if self.frozen:
            return int(NEVER)
        return self.unfreeze_at or 0

    def describe(self) -> str:
        if self.frozen:
            return "frozen"
        parts = [f"lr x{self.lr:g}"]
        if self.wd != 1.0:
            parts.append(f"wd x{self.wd:g}")
        if self.unfreeze_at:
            parts.append(f"from step {self.unfreeze_at}")
        return ", ".join(parts)


FROZEN = Rule(frozen=True)
TRAIN = Rule()

Spec = list[tuple[str, Rule]]


@dataclasses.dataclass(frozen=True)
class StackedRule:
    """The rules of a leaf stacked on a leading layer axis: `layers[i]` governs slice i."""

    layers: tuple[Rule, ...]

    @property
    def trains(self) -> bool:
        return any(r.trains for r in self.layers)


ResolvedRule = Rule | StackedRule


class UnmatchedParamsError(ValueError):
    """Some parameter paths matched no rule of a spec; `.paths` lists all of them."""

    def __init__(self, paths: list[str], num_rules: int):
        self.paths = paths
        shown = ", ".join(paths)
        super().__init__(
            f"{len(paths)} parameter path(s) match none of the {num_rules} trainability rule(s) "
            f"(patterns use re.fullmatch, first match wins): {shown}. Add a rule for them, or "
            f"end the spec with a catch-all: ('.*', 'frozen') to freeze the rest, or "
            f"('.*', 'train') to train it")


def _compile(spec: Sequence[tuple[str, Rule]]) -> list[tuple[re.Pattern, Rule]]:
    compiled = []
    for i, entry in enumerate(spec):
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Rule)):
            raise TypeError(f"spec entry {i} must be (regex, Rule), got {entry!r}")
        pattern, rule = entry
        try:
            compiled.append((re.compile(pattern), rule))
        except re.error as e:
            raise ValueError(f"spec entry {i}: invalid regex {pattern!r}: {e}") from None
    return compiled


# Config files write a rule as a word or as a mapping of Rule's fields.
RULE_WORDS = {"frozen": FROZEN, "train": TRAIN}
FIELDS = tuple(f.name for f in dataclasses.fields(Rule))


def parse_rule(value: Any, where: str) -> Rule:
    """A Rule from a config value: "frozen", "train" or a mapping such as {"lr": 0.1, "wd": 0}
    (fields of Rule; the rest keep their defaults)."""
    if isinstance(value, Rule):
        return value
    if isinstance(value, str):
        if value not in RULE_WORDS:
            raise ValueError(f"{where}: unknown rule {value!r}; write one of {tuple(RULE_WORDS)} "
                             f"or a mapping of {FIELDS}")
        return RULE_WORDS[value]
    if hasattr(value, "items"):
        values = dict(value.items())
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown rule field(s) {unknown}; a rule has {FIELDS}")
        try:
            return Rule(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
    raise ValueError(f"{where}: a rule is {tuple(RULE_WORDS)} or a mapping of {FIELDS}, "
                     f"got {value!r}")


def parse_spec(entries: Sequence[Any], where: str = "rules") -> Spec:
    """A spec from a config's list of (regex, rule) pairs (lists too: JSON has no tuples), each
    rule as `parse_rule` reads it; errors name the entry (`rules[2]: ...`)."""
    spec = []
    for i, entry in enumerate(entries):
        here = f"{where}[{i}]"
        if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or len(entry) != 2:
            raise ValueError(f"{here}: expected a (regex, rule) pair, got {entry!r}")
        pattern, rule = entry
        if not isinstance(pattern, str):
            raise ValueError(f"{here}: the pattern must be a string, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{here}: invalid regex {pattern!r}: {err}") from None
        spec.append((pattern, parse_rule(rule, here)))
    return spec


def _layer_paths(path: str, leaf: Any) -> list[str] | None:
    """The canonical per-layer paths of a stacked leaf's slices; None for any other leaf."""
    if is_stacked(path) and len(getattr(leaf, "shape", ())) >= 1:
        return canonical_layer_paths(path, leaf.shape[0])
    return None


def canonical_paths(params: Any) -> list[str]:
    """Every path a rule can match: per layer for stacked leaves (`resolve`'s view)."""
    paths = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = path_str(key_path)
        paths.extend(_layer_paths(path, leaf) or [path])
    return paths


def check_rules_match(spec: Spec, params: Any, where: str = "rules") -> None:
    """Raise if a rule matches no parameter at all: in a hand-written spec that is a typo (a
    misspelled module, a layer the model lacks), which would otherwise silently do nothing."""
    paths = canonical_paths(params)
    for i, (pattern, _) in enumerate(spec):
        compiled = re.compile(pattern)
        if not any(compiled.fullmatch(p) for p in paths):
            close = difflib.get_close_matches(pattern, paths, n=3, cutoff=0.0)
            raise ConfigError(
                f"{where}[{i}]: pattern {pattern!r} matches no parameter (patterns use "
                f"re.fullmatch over paths like {', '.join(repr(p) for p in close)})")


def match_rule(spec: Sequence[tuple[str, Rule]], path: str) -> Rule | None:
    """The rule that governs one canonical path (first full match), or None."""
    return _first_match(_compile(spec), path)


def _first_match(compiled: list[tuple[re.Pattern, Rule]], path: str) -> Rule | None:
    for pattern, rule in compiled:
        if pattern.fullmatch(path):
            return rule
    return None


def resolve(spec: Sequence[tuple[str, Rule]], params: Any) -> Any:
    """A tree with params' structure holding each leaf's `Rule` (or `StackedRule`).

    `params` may hold arrays or jax.ShapeDtypeStruct (e.g. from `param_shapes`): only paths and,
    for stacked leaves, the layer count are read. Raises UnmatchedParamsError naming every path
    (per layer, for stacked leaves) that no rule matches.
    """
    compiled = _compile(spec)
    unmatched: list[str] = []

    def resolve_leaf(path: str, leaf: Any) -> ResolvedRule | None:
        layer_paths = _layer_paths(path, leaf)
        if layer_paths is not None:
            rules = []
            for layer_path in layer_paths:
                rule = _first_match(compiled, layer_path)
                if rule is None:
                    unmatched.append(layer_path)
                rules.append(rule)
            # Kept per layer even when uniform: reports and per-layer logging need the layers.
            return None if None in rules else StackedRule(tuple(rules))
        rule = _first_match(compiled, path)
        if rule is None:
            unmatched.append(path)
        return rule

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    resolved = [resolve_leaf(path_str(p), leaf) for p, leaf in flat]
    if unmatched:
        raise UnmatchedParamsError(unmatched, len(compiled))
    return jax.tree.unflatten(treedef, resolved)


def rule_slices(path: str, rule: ResolvedRule) -> list[tuple[str, Rule]]:
    """(canonical path, Rule) for each layer slice of a stacked leaf, else the one leaf."""
    if isinstance(rule, StackedRule):
        return list(zip(canonical_layer_paths(path, len(rule.layers)), rule.layers))
    return [(path, rule)]


def is_rule(x: Any) -> bool:
    """For jax.tree `is_leaf`: resolved trees hold Rule / StackedRule leaves."""
    return isinstance(x, (Rule, StackedRule))


# Per-leaf numbers the optimizer bakes in as constants. A uniform rule gives a scalar; a
# StackedRule gives an (L,) vector, laid along the leaf's axis 0 by `along_layer_axis`.

def lr_multiplier(rule: ResolvedRule) -> np.ndarray:
    return _per_layer(rule, lambda r: 0.0 if r.frozen else r.lr, np.float32)


def wd_multiplier(rule: ResolvedRule) -> np.ndarray:
    return _per_layer(rule, lambda r: 0.0 if r.frozen else r.wd, np.float32)


def start_step(rule: ResolvedRule) -> np.ndarray:
    """First step at which the leaf (each layer slice) trains; NEVER for frozen slices."""
    return _per_layer(rule, lambda r: r.start_step, np.int32)


def _per_layer(rule: ResolvedRule, value, dtype) -> np.ndarray:
    if isinstance(rule, StackedRule):
        return uniform_as_scalar(np.asarray([value(r) for r in rule.layers], dtype))
    return np.asarray(value(rule), dtype)


def uniform_as_scalar(values: np.ndarray) -> np.ndarray:
    """Per-layer values (L,) as one scalar when they are all equal (the optimizer then bakes in
    a scalar rather than a vector along the layer axis); a scalar as is."""
    if values.ndim and np.all(values == values[0]):
        return values[:1].reshape(())
    return values


def along_layer_axis(values: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape per-layer values (L,) to (L, 1, ..., 1) so they broadcast over a stacked leaf."""
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (ndim - 1))
