"""Attach HyperFormer (ftjax.nn.hyperformer) to a loaded model, and add tasks to it.

    add_hyperformer(model, params, tasks, hyper, adapter, rng)  one generated adapter per task
    add_hyper_task(model, params, name, rng)                    one more task: a fresh
                                                                embedding, nothing else new

Both initialize only the new leaves (hyper/...), reusing every loaded one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from ftjax.models.adapter_slots import AdapterSlots
from ftjax.models.model import init_selected
from ftjax.nn.adapters import ADAPTER_LEAVES, AdapterConfig
from ftjax.nn.hyperformer import HyperConfig
from ftjax.peft.attach import with_peft
from ftjax.utils.tree import insert_leaves, leaf_paths, split_leaves

HYPER_LEAVES = r"hyper/.*"


def add_hyperformer(model, params: dict, tasks: Sequence[str], hyper: HyperConfig,
                    adapter: AdapterConfig, rng: jax.Array) -> tuple:
    """(model whose adapters, one per task, a hypernetwork generates; params with the
    hypernetwork's fresh leaves). Rows then name their task by `adapter_ids`."""
    if model.adapter_slots is not None or model.config.adapter is not None:
        raise ValueError("the model already holds adapters; HyperFormer generates its own")
    if leaf_paths(split_leaves(params, HYPER_LEAVES)[1]):
        raise ValueError("params already hold a hypernetwork (hyper/...)")
    new_model = dataclasses.replace(
        with_peft(model, adapter=adapter),
        adapter_slots=AdapterSlots(tuple(tasks), ADAPTER_LEAVES), hypernetwork=hyper)
    fresh = init_selected(new_model, rng, lambda p: {"hyper": p["hyper"]})
    return new_model, insert_leaves(params, fresh)


def add_hyper_task(model, params: dict, name: str, rng: jax.Array) -> tuple:
    """(model with task `name` after its others, params with its fresh embedding): the
    hypernetwork, the other tasks' embeddings and everything else are kept as they are."""
    if model.hypernetwork is None:
        raise ValueError("add_hyper_task needs a HyperFormer model (add_hyperformer)")
    slots = model.adapter_slots
    if name in slots.names:
        raise ValueError(f"the model already has task {name!r}")
    new_model = dataclasses.replace(
        model, adapter_slots=dataclasses.replace(slots, names=(*slots.names, name)))
    key = f"task_{name}"
    fresh = init_selected(new_model, rng, lambda p: {"hyper": {key: p["hyper"][key]}})
    return new_model, insert_leaves(params, fresh)
