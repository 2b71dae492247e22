"""The one logical-axis rules table: which model axis is split over which mesh axis.

Model code names the axes of every parameter (ftjax.nn.layers lists them); this table maps
them to the mesh axes of ftjax.parallel.mesh, MaxText style, and flax's logical partitioning
helpers (`nn.logical_to_mesh`) apply it. One table serves every mesh shape: an axis of size 1
splits nothing, so data / FSDP / tensor parallelism and their combinations are just mesh shapes.

What the table gives (Megatron tensor parallelism + FSDP on the model width):
  q/k/v, gate/up   (embed, heads|kv_heads|mlp)  -> (fsdp, tensor)   column parallel
  o, down          (heads|mlp, embed)          -> (tensor, fsdp)   row parallel
  embeddings       (vocab, embed)              -> (tensor, fsdp)   vocab parallel
  untied LM head   (embed, vocab)              -> (fsdp, tensor)
  biases, norms    follow their one named axis (norm scales: replicated)
  stacked layers   the leading `layers` axis stays whole (no pipeline parallelism)
LoRA's `lora_rank` and any name not in the table (a new PEFT method's "adapter", "prefix", ...)
are replicated, so `lora_a` (in-axis, lora_rank) / `lora_b` (lora_rank, out-axis) are split
exactly like the kernel they modify, along its in- and out-axis respectively.

Dimensions that do not divide: jax can only place an array whose split dimensions divide the
mesh axis size. Such a dimension (the tiny test models' prime widths, a 9-head attention over 4
tensor shards) is REPLICATED along that mesh axis instead, and reported (`ShardPlan.fallbacks`,
logged, and written to the run's sharding.json): the run stays correct and only that leaf loses
the memory saving. An error would forbid meshes that are merely suboptimal for one leaf.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ftjax.parallel.mesh import BATCH_AXES
from ftjax.utils.paths import path_str

logger = logging.getLogger(__name__)

MeshAxes = str | tuple[str, ...] | None

RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", BATCH_AXES),
    # Tensor parallelism: the per-head / per-column / per-token-id axes.
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", "tensor"),  # BERT pooler / MLM transform: (embed, embed_out), column parallel
    # FSDP: every matrix has an `embed` axis, so every matrix is sharded.
    ("embed", "fsdp"),
    # Replicated on purpose (listed so the table names every axis the models use).
    ("norm", None),
    ("positions", None),
    ("types", None),
    ("labels", None),
    ("layers", None),
    ("lora_rank", None),
)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """One parameter dimension replicated because its size does not divide its mesh axes."""

    path: str
    dim: int
    logical: str
    mesh_axes: MeshAxes
    size: int
    ways: int

    def __str__(self) -> str:
        return (f"{self.path}: dim {self.dim} ({self.logical}, size {self.size}) does not split "
                f"{self.ways} ways over mesh axis {self.mesh_axes!r}; replicated along it")


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Where everything lives on a mesh: per-parameter shardings, the batch and the scalars."""

    mesh: Mesh
    params: Any  # a NamedSharding per parameter leaf, the params tree's structure
    fallbacks: tuple[Fallback, ...] = ()

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) dimension split over `data` x `fsdp`; the rest whole."""
        return NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def describe(self) -> dict:
        """JSON-able summary: the mesh, each leaf's spec, and the divisibility fallbacks."""
        specs = {path_str(p): str(s.spec) for p, s in
                 jax.tree_util.tree_flatten_with_path(self.params)[0]}
        return {"mesh": dict(self.mesh.shape), "params": specs,
                "replicated_for_divisibility": [str(f) for f in self.fallbacks]}


def _ways(mesh: Mesh, axes: MeshAxes) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in names)


def fit_spec(path: str, logical: PartitionSpec, mesh_spec: PartitionSpec, shape, mesh: Mesh):
    """mesh_spec with every dimension that does not divide its mesh axes set to None.

    Returns (spec, [Fallback, ...]).
    """
    entries = list(mesh_spec) + [None] * (len(shape) - len(mesh_spec))
    if len(entries) != len(shape):
        raise ValueError(f"{path}: logical axes {tuple(logical)} do not match its shape "
                         f"{tuple(shape)}")
    fallbacks = []
    for dim, (axes, size) in enumerate(zip(entries, shape)):
        ways = _ways(mesh, axes)
        if ways > 1 and size % ways:
            fallbacks.append(Fallback(path, dim, str(logical[dim]), axes, int(size), ways))
            entries[dim] = None
    return PartitionSpec(*entries), fallbacks


def param_shardings(logical: Any, shapes: Any, mesh: Mesh, rules=RULES):
    """(tree of NamedSharding, fallbacks) for params with logical axes `logical`.

    logical: a tree of PartitionSpec of logical names (ftjax.models.logical_axes(model)).
    shapes: the params tree (arrays or ShapeDtypeStructs) of the same structure.
    """
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    mesh_specs = nn.logical_to_mesh(logical, rules)
    spec_leaves, spec_def = jax.tree_util.tree_flatten_with_path(mesh_specs, is_leaf=is_spec)
    logical_leaves = jax.tree.leaves(logical, is_leaf=is_spec)
    shape_leaves, shape_def = jax.tree_util.tree_flatten_with_path(shapes)
    spec_paths = [path_str(p) for p, _ in spec_leaves]
    shape_paths = [path_str(p) for p, _ in shape_leaves]
    if spec_paths != shape_paths:
        missing = sorted(set(shape_paths) - set(spec_paths))
        extra = sorted(set(spec_paths) - set(shape_paths))
        raise ValueError("params do not match the model's logical axes: "
                         f"leaves without axes {missing[:8]}, axes without leaves {extra[:8]}")
    out, fallbacks = [], []
    for (key_path, spec), names, (_, leaf) in zip(spec_leaves, logical_leaves, shape_leaves):
        fitted, fell = fit_spec(path_str(key_path), names, spec, leaf.shape, mesh)
        out.append(NamedSharding(mesh, fitted))
        fallbacks += fell
    return jax.tree.unflatten(shape_def, out), tuple(fallbacks)
