"""Which leaves train: spec -> per-leaf rules -> mask -> (trainable, frozen) split.

The train step differentiates only w.r.t. the trainable half (DESIGN.md decision 3):

    resolved = resolve(spec, params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    grads = jax.grad(lambda t: loss(combine(t, frozen), batch))(trainable)

Both halves keep params' structure with `None` where the other half holds the leaf. jax treats
None as an empty subtree, so gradients, optimizer states (optax included) and `optax.apply_updates`
simply have no entry for frozen leaves: no compute, no memory, and frozen leaves come back
bit-identical because they never pass through the update.

A leaf stacked for `scan` of which only some layers ever train (top_layers on a scanned model) is
split along its layer axis: the trainable half holds just those layers, so gradients, optimizer
state and checkpoints hold nothing of the others, and the frozen half holds the rest in a
`LayerSplit` that `combine` stacks back in layer order. (The train step does not even restack
when the frozen layers are the bottom ones: see ftjax.train.step.scan_split_view.)

Rules, resolution and the report live in ftjax.optim.rules / ftjax.optim.report; this module is
the one import a train loop needs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ftjax.optim.report import format_report, report, state_bytes
from ftjax.optim.rules import (
    FROZEN,
    NEVER,
    TRAIN,
    ResolvedRule,
    Rule,
    Spec,
    StackedRule,
    UnmatchedParamsError,
    is_rule,
    match_rule,
    resolve,
)

__all__ = [
    "FROZEN", "NEVER", "TRAIN", "LayerSplit", "ResolvedRule", "Rule", "Spec", "StackedRule",
    "TrainedLayers", "UnmatchedParamsError", "combine", "format_report", "is_rule",
    "layer_flags", "leaf_mask", "match_rule", "partition", "report", "resolve", "state_bytes",
    "trainable_mask",
]


@dataclasses.dataclass(frozen=True)
class TrainedLayers:
    """The mask entry of a stacked leaf of which some layers, not all, train at some step."""

    indices: tuple[int, ...]  # the layers that train, ascending
    num_layers: int

    @property
    def frozen_indices(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.indices)


def take_layers(x: Any, indices: tuple[int, ...]) -> Any:
    """Layers `indices` of a stacked leaf along axis 0.

    Arrays (numpy or jax) are sliced (a contiguous run without a gather); ShapeDtypeStructs get
    the sliced shape; anything else (a Sharding) is returned as is: the layer axis is never
    sharded (ftjax.parallel.rules), so the whole stack's sharding fits any run of its layers.
    """
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(indices), *x.shape[1:]), x.dtype, sharding=x.sharding)
    if not hasattr(x, "shape"):
        return x
    lo, hi = indices[0], indices[-1] + 1
    return x[lo:hi] if hi - lo == len(indices) else x[np.asarray(indices)]


@flax.struct.dataclass
class LayerSplit:
    """The frozen half of a partly trained stacked leaf: its frozen layers, and which they are."""

    frozen_layers: Any
    layers: TrainedLayers = flax.struct.field(pytree_node=False)

    def assemble(self, trained: jax.Array) -> jax.Array:
        """The whole stack in layer order, in the trained layers' dtype (frozen layers may be
        stored narrower, see ftjax.train.step.cast_frozen)."""
        stacked = jnp.concatenate([self.frozen_layers.astype(trained.dtype), trained], axis=0)
        order = np.argsort(self.layers.frozen_indices + self.layers.indices)
        if np.array_equal(order, np.arange(self.layers.num_layers)):
            return stacked  # the usual case: the trained layers are the top ones
        return jnp.take(stacked, order, axis=0)


def leaf_mask(rule: ResolvedRule) -> bool | TrainedLayers:
    """One leaf's entry of `trainable_mask`."""
    if isinstance(rule, StackedRule):
        trains = [r.trains for r in rule.layers]
        if any(trains) and not all(trains):
            return TrainedLayers(tuple(i for i, t in enumerate(trains) if t), len(trains))
    return rule.trains


def trainable_mask(resolved: Any) -> Any:
    """Per leaf: True if it trains at some step (not frozen for the whole run), False if not,
    and for a stacked leaf of which only some layers train, a TrainedLayers naming them (truthy:
    the leaf trains)."""
    return jax.tree.map(leaf_mask, resolved, is_leaf=is_rule)


def layer_flags(mask: Any) -> Any:
    """The mask with each TrainedLayers entry as an (L,) bool array (True: that layer trains),
    for code that walks stacked leaves layer by layer."""
    def flags(m):
        if isinstance(m, TrainedLayers):
            return np.isin(np.arange(m.num_layers), m.indices)
        return m
    return jax.tree.map(flags, mask)


def partition(params: Any, mask: Any) -> tuple[Any, Any]:
    """Split params into (trainable, frozen), each with `None` where the other holds the leaf;
    a partly trained stacked leaf is split along its layers (see the module docstring).

    params may hold arrays, ShapeDtypeStructs or Shardings (a plan's parameter shardings)."""
    def trained(p, m):
        if isinstance(m, TrainedLayers):
            return take_layers(p, m.indices)
        return p if m else None

    def frozen(p, m):
        if isinstance(m, TrainedLayers):
            return LayerSplit(take_layers(p, m.frozen_indices), m)
        return None if m else p

    return jax.tree.map(trained, params, mask), jax.tree.map(frozen, params, mask)


def _combine_leaf(t: Any, f: Any) -> Any:
    if isinstance(f, LayerSplit):
        return f.assemble(t)
    return f if t is None else t


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`: every leaf from whichever half holds it, split stacks restacked."""
    return jax.tree.map(_combine_leaf, trainable, frozen, is_leaf=lambda x: x is None)
