"""Putting data on the mesh: batches (multi-host aware) and trees shaped like the params.

Batches: each process holds numpy rows; `place_batch` builds one global jax.Array split over the
batch axes with `jax.make_array_from_process_local_data`. A train batch is the process's own
rows (its slice of the global batch); an eval batch is the same full batch on every process.

Optimizer state: every part of it that mirrors the parameter tree (Adam's mu and nu, momentum
traces) is sharded exactly like the parameters (found with `optax.tree_map_params`, which asks the
optimizer's own init where the parameter-shaped trees are); counters and anything of another
shape (Adafactor's factored row / column statistics) are replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

_is_none = lambda x: x is None  # noqa: E731


def place_batch(batch: dict, sharding: NamedSharding, *, per_process: bool = True) -> dict:
    """numpy batch -> global jax.Arrays with `sharding` (leading dimension split).

    per_process=True: `batch` holds this process's rows only (its share of the global batch, as
    the train iterator gives with one shard per process). False: every process holds the whole
    batch (eval batches); each device takes its rows from it.
    """
    count = jax.process_count()

    def put(x):
        x = np.asarray(x)
        rows = x.shape[0] * count if per_process else x.shape[0]
        return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))

    return jax.tree.map(put, batch)


def put(tree: Any, shardings: Any, *, donate: bool = False) -> Any:
    """jax.device_put leaf by leaf, None holes kept (a trainable / frozen half).

    donate=False copies first: device_put reuses a source buffer as one shard of the result
    (device 0's shard of a replicated array; jax 0.10.2 does so even with may_alias=False), and
    donating the result to a train step would then delete the caller's array. donate=True hands
    the source buffers over (no extra memory; the caller must not use `tree` afterwards).
    """
    def one(x, s):
        if x is None:
            return None
        if donate:
            return jax.device_put(x, s, donate=True)
        return jax.device_put(jnp.copy(x) if isinstance(x, jax.Array) else x, s)

    return jax.tree.map(one, tree, shardings, is_leaf=_is_none)


def like_params(tree: Any, params: Any, shardings: Any, fallback: NamedSharding) -> Any:
    """Shardings for `tree`, which has params' structure: a leaf of its param's shape gets that
    param's sharding; any other shape (e.g. a scalar weight or a factored statistic) `fallback`."""
    def pick(x, p, s):
        if x is None:
            return None
        return s if p is not None and tuple(x.shape) == tuple(p.shape) else fallback

    return jax.tree.map(pick, tree, params, shardings, is_leaf=_is_none)


def opt_state_shardings(tx: optax.GradientTransformation, opt_shapes: Any, params: Any,
                        shardings: Any, replicated: NamedSharding) -> Any:
    """Shardings for `tx`'s state (`opt_shapes`, e.g. from jax.eval_shape(tx.init, params)):
    parameter-shaped parts like `shardings`, everything else `replicated`."""
    return optax.tree_map_params(
        tx,
        lambda x, p, s: None if x is None else (
            s if p is not None and tuple(x.shape) == tuple(p.shape) else replicated),
        opt_shapes, params, shardings,
        transform_non_params=lambda subtree: jax.tree.map(lambda _: replicated, subtree),
        is_leaf=_is_none,
    )
