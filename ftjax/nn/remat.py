"""Rematerialization (activation checkpointing) policies selectable by name from a config."""

from __future__ import annotations

import jax

_POLICIES = {
    "none": None,
    # Recompute everything in the backward pass: least memory, ~1/3 more compute.
    "full": jax.checkpoint_policies.nothing_saveable,
    # Keep matmul outputs, recompute elementwise work: the usual sweet spot for transformers.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
    """The jax.checkpoint policy for `name`; None means no rematerialization at all."""
    if name not in _POLICIES:
        raise ValueError(f"unknown remat policy {name!r}; expected one of {sorted(_POLICIES)}")
    return _POLICIES[name]
