"""A model's ShardPlan: its logical axes through the rules table of ftjax.parallel."""

from __future__ import annotations

import logging
from typing import Any

from jax.sharding import Mesh

from ftjax.models.model import logical_axes
from ftjax.parallel.rules import RULES, ShardPlan, param_shardings

logger = logging.getLogger(__name__)


def plan_for_model(model, shapes: Any, mesh: Mesh, rules=RULES) -> ShardPlan:
    """The ShardPlan of `model`'s params (`shapes`: its params tree, arrays or shapes)."""
    shardings, fallbacks = param_shardings(logical_axes(model), shapes, mesh, rules)
    if fallbacks:
        logger.warning("%d parameter dimension(s) replicated (size not divisible by the mesh):"
                       "\n  %s", len(fallbacks), "\n  ".join(map(str, fallbacks)))
    return ShardPlan(mesh=mesh, params=shardings, fallbacks=fallbacks)
