"""The decoder's KV cache: its layout, and where each entry keeps its batch rows.

A dict
  k, v:  keys / values of every layer: a tuple of L arrays (B, S, K, H), one per layer, for a
         model with per-layer modules; one stacked array (L, B, S, K, H) for scanned layers
         (config.scan_layers), whose scan takes the layers' caches as one array
  mask:  (B, S) int32, 1 where a slot holds a real token
  end:   int32 scalar, the number of slots written so far (the same for every row: prompts are
         left-padded so that rows stay aligned)
S is the cache length. A call with a cache writes its T new tokens at slots [end, end + T).

Why a buffer per layer: each layer then writes its new keys into its own buffer, which a
jitted decode loop updates in place. One stacked array would be sliced for every layer's
read and stacked again after the step: a copy of the whole cache per generated token, which
on a CPU cost as much as the model's own matmuls (SmolLM2-135M, 8 rows, 640 slots).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ftjax.models.config import LlamaConfig


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype=None) -> dict:
    """An empty KV cache for `batch_size` rows of up to `max_length` tokens, in the layout of
    the config's layers (per layer, or stacked for scanned layers)."""
    dtype = dtype or config.compute_dtype
    shape = (batch_size, max_length, config.num_kv_heads, config.head_size)
    if config.scan_layers:
        k = jnp.zeros((config.num_layers, *shape), dtype)
        v = jnp.zeros((config.num_layers, *shape), dtype)
    else:
        k = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return {"k": k, "v": v, "mask": jnp.zeros((batch_size, max_length), jnp.int32),
            "end": jnp.zeros((), jnp.int32)}


def is_stacked(cache: dict) -> bool:
    return not isinstance(cache["k"], (tuple, list))


def cache_batch_axes(cache: dict) -> dict:
    """Each entry's batch axis (None: shared by every row), a prefix of the cache's tree (for
    jax.vmap's in_axes): k / v 1 when stacked, 0 per layer."""
    layers = 1 if is_stacked(cache) else 0
    axes = {"k": layers, "v": layers, "mask": 0, "end": None}
    return {name: axes[name] for name in cache}


def map_rows(fn, cache: dict) -> dict:
    """`fn(array, batch_axis)` on every array of the cache that has rows; `end` kept."""
    axes = cache_batch_axes(cache)
    return {name: entry if axes[name] is None
            else jax.tree.map(lambda a, axis=axes[name]: fn(a, axis), entry)
            for name, entry in cache.items()}


def take_rows(cache: dict, rows: Any) -> dict:
    """The cache with its batch rows gathered by `rows` (beam search's reordering)."""
    return map_rows(lambda a, axis: jnp.take(a, rows, axis=axis), cache)


def stacked_kv(cache: dict) -> tuple[jax.Array, jax.Array]:
    """(k, v) as (L, B, S, K, H) arrays whatever the layout (for reading, e.g. in tests)."""
    if is_stacked(cache):
        return cache["k"], cache["v"]
    return jnp.stack(cache["k"]), jnp.stack(cache["v"])
