"""Sharding by table (DESIGN.md 6): a (data, fsdp, tensor) mesh, one logical-axis rules table,
and placement of parameters, optimizer state and batches on it."""

from ftjax.parallel.hosts import agreed_max, fetch, is_primary
from ftjax.parallel.mesh import (
    AXES,
    BATCH_AXES,
    MeshConfig,
    MeshError,
    batch_shards,
    distributed_requested,
    initialize_distributed,
    make_mesh,
    mesh_from_config,
    mesh_shape,
)
from ftjax.parallel.placement import like_params, opt_state_shardings, place_batch, put
from ftjax.parallel.rules import RULES, Fallback, ShardPlan, param_shardings

__all__ = [
    "AXES", "BATCH_AXES", "RULES", "Fallback", "MeshConfig", "MeshError", "ShardPlan",
    "agreed_max", "batch_shards",
    "distributed_requested", "fetch", "initialize_distributed", "is_primary", "like_params",
    "make_mesh", "mesh_from_config", "mesh_shape", "opt_state_shardings", "param_shardings",
    "place_batch", "put",
]
