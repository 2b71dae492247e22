"""Many LoRA adapters on one frozen base: one chosen per call, or one per example in a batch.

The base parameters live once in memory; adapters are small trees (`lora_only(params)`) stacked
on a leading adapter axis. A mixed batch runs as one compiled program: `jax.vmap` over rows with
the base broadcast (never copied or batched) and each row's adapter gathered by its id, so the
base matmuls stay shared and only the rank-r LoRA products are per row.

All adapters of a stack share one LoraConfig (rank, alpha, targets): the model's Dense layers
are built for that shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ftjax.nn.lora import insert_lora


def stack_adapters(adapters: Sequence[dict]) -> dict:
    """Stack adapter trees (each `lora_only(params)`) on a new leading axis: adapter i at [i]."""
    if not adapters:
        raise ValueError("stack_adapters needs at least one adapter")
    first = jax.tree.structure(adapters[0])
    for i, adapter in enumerate(adapters[1:], start=1):
        if jax.tree.structure(adapter) != first:
            raise ValueError(f"adapter {i} targets other modules than adapter 0; every adapter "
                             f"of a stack must come from the same LoraConfig")
        shapes = jax.tree.map(lambda a, b: a.shape == b.shape, adapters[0], adapter)
        if not all(jax.tree.leaves(shapes)):
            raise ValueError(f"adapter {i} has other shapes (rank?) than adapter 0")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *adapters)


def num_adapters(stacked: dict) -> int:
    return jax.tree.leaves(stacked)[0].shape[0]


def select_adapter(stacked: dict, index: int) -> dict:
    """One adapter of a stack, as a plain adapter tree."""
    n = num_adapters(stacked)
    if not 0 <= index < n:
        raise IndexError(f"adapter {index} does not exist; the stack holds {n}")
    return jax.tree.map(lambda x: x[index], stacked)


def apply_mixed(model, base_params: dict, stacked: dict, adapter_ids, input_ids, **row_inputs):
    """`model.apply` where row b uses adapter `adapter_ids[b]`; returns the batched ModelOutput.

    model: built with the adapters' LoraConfig (`with_lora(model, cfg)`); base_params: the tree
    without LoRA leaves; row_inputs: per-row arrays (attention_mask, positions, ...), batch-major.
    Jit it as a whole (e.g. `jax.jit(partial(apply_mixed, model))`): one program serves any mix.
    """
    per_row = jax.tree.map(lambda x: x[adapter_ids], stacked)

    def one_row(adapter, ids, inputs):
        params = insert_lora(base_params, adapter)
        out = model.apply({"params": params}, ids[None], **{k: v[None] for k, v in inputs.items()})
        return jax.tree.map(lambda y: y[0], out)

    return jax.vmap(one_row)(per_row, input_ids, row_inputs)
