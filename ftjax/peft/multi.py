"""Many adapters on one frozen base, of any method: one per task, or many served at once.

The model side is ftjax.models.adapter_slots: a model with `AdapterSlots` holds the leaves a
method adds (or trains, as BitFit's biases) once per slot, stacked on a leading axis, and runs
each row of a batch with its own slot in one compiled program. This module moves between that
form and single adapters:

    with_slots(model, params, names, leaves)     every name starts as the adapter `params` holds
    from_adapters(model, base, {name: adapter})  trained adapters side by side on one base
    single_adapter(model, params, name)          one slot back as an ordinary one-adapter model
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from ftjax.models.adapter_slots import (
    AdapterSlots,
    exact_paths,
    slot_of,
    split_slots,
    stack_slots,
)
from ftjax.models.model import materialize_adapters
from ftjax.utils.tree import insert_leaves, split_leaves


def with_slots(model, params: dict, names: Sequence[str], leaves: str) -> tuple:
    """(model with one slot per name, params whose `leaves` are repeated once per slot).

    Each slot starts as the adapter in `params`, so the adapters of a multi-adapter run start
    where single-adapter runs with the same seed start."""
    if model.adapter_slots is not None:
        raise ValueError(f"the model already holds adapters {list(model.adapter_slots.names)}")
    slots = AdapterSlots(tuple(names), leaves)
    base, single = split_leaves(params, leaves)
    if not jax.tree.leaves(single):
        raise ValueError(f"adapter leaves {leaves!r} select no parameter of the model")
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x[None], (slots.size, *x.shape)), single)
    return dataclasses.replace(model, adapter_slots=slots), insert_leaves(base, stacked)


def from_adapters(model, base_params: dict, adapters: Mapping[str, dict], leaves: str) -> tuple:
    """(model with a slot per adapter, the base with the adapters stacked in), in the order of
    `adapters`. model: the single-adapter model they were trained with; each adapter: the
    tree of its `leaves` (split_leaves(params, leaves)[1])."""
    if model.adapter_slots is not None:
        raise ValueError("from_adapters takes the single-adapter model")
    try:
        stacked = stack_slots(list(adapters.values()))
    except ValueError as err:
        names = list(adapters)
        raise ValueError(f"adapters {names}: {err}") from None
    slots = AdapterSlots(tuple(adapters), leaves)
    base, present = split_leaves(base_params, leaves)
    if jax.tree.leaves(present):
        raise ValueError("base_params already hold adapter leaves; pass the bare base")
    return (dataclasses.replace(model, adapter_slots=slots),
            insert_leaves(base, stacked, new_branches=True))


def single_adapter(model, params: dict, name: str) -> tuple:
    """(the one-adapter model, params with slot `name`'s leaves): what a single-adapter run of
    the same method would hold."""
    slots = model.adapter_slots
    if slots is None:
        raise ValueError("the model holds no adapter slots")
    model, params = materialize_adapters(model, params)  # generated ones become leaves
    base, stacked = split_slots(params, slots)
    return (dataclasses.replace(model, adapter_slots=None),
            insert_leaves(base, slot_of(stacked, slots.index(name))))


def task_model(model, params: dict, task: str, mask: dict | None = None) -> tuple:
    """(model, params, mask) of one task of a multi-task model as a single-task model: its
    task head as the model's head and, with adapter slots named by task, its own adapter.
    mask (optional): the trainable mask, cut the same way (None stays None)."""
    heads = dict(model.task_heads)
    if task not in heads:
        raise KeyError(f"no task {task!r}; the model's tasks: {list(heads)}")
    if model.adapter_slots is not None:
        generated = model.hypernetwork is not None
        leaves = model.adapter_slots.leaves
        # The mask is one flag per leaf, with no slot axis to cut.
        model, params = single_adapter(model, params, task)
        if generated and mask is not None:  # the task's trained part is its generated adapter
            mask = insert_leaves({k: v for k, v in mask.items() if k != "hyper"}, jax.tree.map(
                lambda _: True, split_leaves(params, leaves)[1]))
    one = dataclasses.replace(model, head_config=heads[task], task_heads=(), adapter_slots=None)

    def own_head(tree):
        return {**{k: v for k, v in tree.items() if k != "head"}, "head": tree["head"][task]}

    return one, own_head(params), None if mask is None else own_head(mask)


__all__ = ["AdapterSlots", "exact_paths", "from_adapters", "single_adapter", "stack_slots",
           "task_model", "with_slots"]
