"""Many adapters on one base: each row of a batch runs with its own adapter (its slot).

A model with `AdapterSlots` keeps one copy per slot of the leaves `slots.leaves` selects (a
PEFT method's leaves, BitFit's biases, whatever a task trains) stacked on a new leading axis,
and the base leaves once. A call gives each row a slot (`adapter_ids`); the batch runs as one
program, `jax.vmap` over rows with the base broadcast (never copied or batched) and each
row's slot gathered by its id. So the base's matmuls stay shared, only the slot leaves are per
row, and a gradient reaches a slot only through the rows that used it.

Any method works the same way, since the single-slot model runs unchanged on each row: the
slot axis never reaches the layers.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ftjax.models.kv_cache import cache_batch_axes, map_rows
from ftjax.utils.tree import insert_leaves, split_leaves


@dataclasses.dataclass(frozen=True)
class AdapterSlots:
    """names: one slot per name (slot i is names[i]); leaves: a regex over parameter paths
    selecting the leaves every slot has its own copy of."""

    names: tuple[str, ...]
    leaves: str

    def __post_init__(self):
        if not self.names:
            raise ValueError("AdapterSlots needs at least one name")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"adapter names repeat: {list(self.names)}")
        re.compile(self.leaves)

    @property
    def size(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        if name not in self.names:
            raise KeyError(f"no adapter {name!r}; this model holds {list(self.names)}")
        return self.names.index(name)


def exact_paths(paths: Sequence[str]) -> str:
    """The regex that selects exactly these parameter paths."""
    if not paths:
        raise ValueError("no leaves selected: an adapter slot needs at least one leaf")
    return "|".join(re.escape(p) for p in sorted(paths))


def split_slots(params: dict, slots: AdapterSlots) -> tuple[dict, dict]:
    """(base, stacked): the shared leaves and the slot leaves (leading axis: the slot)."""
    return split_leaves(params, slots.leaves)


def slot_of(stacked: dict, index: int) -> dict:
    """One slot's leaves, as a single adapter's tree."""
    return jax.tree.map(lambda x: x[index], stacked)


def stack_slots(adapters: Sequence[dict]) -> dict:
    """Adapter trees of one structure and shape, stacked on a new leading (slot) axis."""
    if not adapters:
        raise ValueError("no adapters to stack")
    first = jax.tree.structure(adapters[0])
    for i, adapter in enumerate(adapters[1:], start=1):
        if jax.tree.structure(adapter) != first:
            raise ValueError(f"adapter {i} has other leaves than adapter 0; every adapter on "
                             f"one base must come from the same method and settings")
        same = jax.tree.map(lambda a, b: a.shape == b.shape, adapters[0], adapter)
        if not all(jax.tree.leaves(same)):
            raise ValueError(f"adapter {i} has other shapes (rank, size?) than adapter 0")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *adapters)


def _expand_cache(cache: dict) -> dict:
    return map_rows(jnp.expand_dims, cache)


def _squeeze_cache(cache: dict) -> dict:
    return map_rows(jnp.squeeze, cache)


def apply_per_row(apply_single: Callable, params: dict, slots: AdapterSlots, adapter_ids,
                  input_ids, *, row_inputs: dict, cache: dict | None = None,
                  rng: jax.Array | None = None):
    """Row b through `apply_single` with slot `adapter_ids[b]`, as one vmapped program.

    apply_single(params, input_ids (1, T), cache, rng, **row_inputs) -> (logits, hidden,
    cache) of one row. row_inputs: batch-major arrays (masks, positions, ...); cache: a KV
    cache (its rows where kv_cache.cache_batch_axes says); rng: a key for dropout, folded per row.
    Returns the batched (logits, hidden, cache)."""
    base, stacked = split_slots(params, slots)
    adapter_ids = jnp.asarray(adapter_ids, jnp.int32)
    if adapter_ids.shape != input_ids.shape[:1]:
        raise ValueError(f"adapter_ids {adapter_ids.shape} must give one slot per row of "
                         f"input_ids {input_ids.shape}")
    per_row = jax.tree.map(lambda x: x[adapter_ids], stacked)
    rows = jnp.arange(input_ids.shape[0])
    cache_axes = None if cache is None else cache_batch_axes(cache)

    def one_row(adapter, ids, inputs, row_cache, row):
        row_rng = None if rng is None else jax.random.fold_in(rng, row)
        logits, hidden, new_cache = apply_single(
            insert_leaves(base, adapter), ids[None],
            None if row_cache is None else _expand_cache(row_cache), row_rng,
            **{k: v[None] for k, v in inputs.items()})
        return (jax.tree.map(lambda y: y[0], logits), hidden[0],
                None if new_cache is None else _squeeze_cache(new_cache))

    return jax.vmap(one_row, in_axes=(0, 0, 0, cache_axes, 0), out_axes=(0, 0, cache_axes))(
        per_row, input_ids, row_inputs, cache, rows)
