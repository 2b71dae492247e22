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
`LayerSplit` that `combine` stacks back in layer order. The train step does not restack: it cuts
the scan where trained and frozen layers meet (ftjax.train.step.scan_split_view), and so that it
need not slice (copy) frozen layers either, a LayerSplit keeps them in runs cut at those points,
and beside a partly trained stack every wholly frozen stacked leaf is kept that way too.

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
from ftjax.utils.paths import is_stacked, layer_runs, path_str

__all__ = [
    "FROZEN", "NEVER", "TRAIN", "LayerSplit", "ResolvedRule", "Rule", "Spec", "StackedRule",
    "TrainedLayers", "UnmatchedParamsError", "combine", "format_report", "is_rule",
    "layer_flags", "layer_runs", "leaf_mask", "match_rule", "partition", "report", "resolve",
    "scan_breaks", "state_bytes", "trainable_half", "trainable_mask",
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


def scan_breaks(entries: Any) -> tuple[int, ...]:
    """The layers where some partly trained stack turns from frozen to trained or back (the
    TrainedLayers among `entries`, e.g. a mask's leaves): cut there, every stacked leaf is wholly
    frozen or wholly trained between two cuts. () when no stack is partly trained."""
    breaks: set[int] = set()
    for m in entries:
        if isinstance(m, TrainedLayers):
            trains = np.isin(np.arange(m.num_layers), m.indices)
            breaks.update(int(b) for b in np.flatnonzero(trains[1:] != trains[:-1]) + 1)
    return tuple(sorted(breaks))


@flax.struct.dataclass
class LayerSplit:
    """The frozen half of a stacked leaf when some stack of the model partly trains: its frozen
    layers (for a wholly frozen leaf, all of them) as runs of consecutive layers, cut where the
    train step cuts its scan (`scan_breaks`), so each run feeds its scan as it is; slicing one
    stacked array there would copy it on every step."""

    runs: tuple  # arrays (or shapes, shardings), one per entry of `bounds`
    layers: TrainedLayers = flax.struct.field(pytree_node=False)  # the leaf's trained layers
    bounds: tuple[tuple[int, int], ...] = flax.struct.field(pytree_node=False)

    @classmethod
    def of(cls, x: Any, layers: TrainedLayers, breaks: tuple[int, ...]) -> "LayerSplit":
        bounds = tuple(layer_runs(layers.frozen_indices, breaks))
        return cls(tuple(take_layers(x, tuple(range(a, b))) for a, b in bounds), layers, bounds)

    def run(self, start: int, stop: int) -> Any:
        """The frozen run of layers [start, stop) (one the split was cut to)."""
        return self.runs[self.bounds.index((start, stop))]

    def assemble(self, trained: jax.Array | None) -> jax.Array:
        """The whole stack in layer order, in the trained layers' dtype (frozen layers may be
        stored narrower, see ftjax.train.step.cast_frozen)."""
        pieces = list(zip(self.bounds, self.runs))
        if trained is not None:
            pieces = [(b, x.astype(trained.dtype)) for b, x in pieces]
            at = 0
            for a, b in layer_runs(self.layers.indices, ()):
                pieces.append(((a, b), trained[at:at + b - a]))
                at += b - a
        return jnp.concatenate([x for _, x in sorted(pieces, key=lambda e: e[0])], axis=0)


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
    a partly trained stacked leaf is split along its layers (see the module docstring), and
    beside one, every stacked leaf keeps its frozen layers in runs (LayerSplit).

    params may hold arrays, ShapeDtypeStructs or Shardings (a plan's parameter shardings)."""
    breaks = scan_breaks(jax.tree.leaves(mask))
    num_layers = next((m.num_layers for m in jax.tree.leaves(mask)
                       if isinstance(m, TrainedLayers)), 0)

    def frozen(key_path, p, m):
        if isinstance(m, TrainedLayers):
            return LayerSplit.of(p, m, breaks)
        if not m and breaks and is_stacked(path_str(key_path)):
            return LayerSplit.of(p, TrainedLayers((), num_layers), breaks)
        return None if m else p

    return trainable_half(params, mask), jax.tree_util.tree_map_with_path(frozen, params, mask)


def trainable_half(params: Any, mask: Any) -> Any:
    """`partition(params, mask)[0]` without building the frozen half (e.g. for an anchor)."""
    def trained(p, m):
        if isinstance(m, TrainedLayers):
            return take_layers(p, m.indices)
        return p if m else None

    return jax.tree.map(trained, params, mask)


def _combine_leaf(t: Any, f: Any) -> Any:
    if isinstance(f, LayerSplit):
        return f.assemble(t)
    return f if t is None else t


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`: every leaf from whichever half holds it, split stacks restacked."""
    return jax.tree.map(_combine_leaf, trainable, frozen, is_leaf=lambda x: x is None)
