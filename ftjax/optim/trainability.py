"""Which leaves train: spec -> per-leaf rules -> mask -> (trainable, frozen) split.

The train step differentiates only w.r.t. the trainable half (DESIGN.md decision 3):

    resolved = resolve(spec, params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    grads = jax.grad(lambda t: loss(combine(t, frozen), batch))(trainable)

Both halves keep params' structure with `None` where the other half holds the leaf. jax treats
None as an empty subtree, so gradients, optimizer states (optax included) and `optax.apply_updates`
simply have no entry for frozen leaves: no compute, no memory, and frozen leaves come back
bit-identical because they never pass through the update.

Rules, resolution and the report live in ftjax.optim.rules / ftjax.optim.report; this module is
the one import a train loop needs.
"""

from __future__ import annotations

from typing import Any

import jax

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
    "FROZEN", "NEVER", "TRAIN", "ResolvedRule", "Rule", "Spec", "StackedRule",
    "UnmatchedParamsError", "combine", "format_report", "is_rule", "match_rule", "partition",
    "report", "resolve", "state_bytes", "trainable_mask",
]


def trainable_mask(resolved: Any) -> Any:
    """True for every leaf that trains at some step (not frozen for the whole run).

    A stacked leaf trains if any of its layers does; its frozen layers then get exactly-zero
    updates from the optimizer (they cannot be split out of the array).
    """
    return jax.tree.map(lambda r: r.trains, resolved, is_leaf=is_rule)


def partition(params: Any, mask: Any) -> tuple[Any, Any]:
    """Split params into (trainable, frozen), each with `None` where the other holds the leaf."""
    trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
    frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return trainable, frozen


def combine(trainable: Any, frozen: Any) -> Any:
    """Inverse of `partition`: every leaf from whichever half holds it."""
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None
    )
