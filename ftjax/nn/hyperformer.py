"""HyperFormer (Karimi Mahabadi et al. 2021): one shared hypernetwork generates every task's
adapters.

For task t, layer l and adapter place p (after attention / after the MLP), a task projector
turns the concatenated embeddings [task_t; layer_l; place_p] into a source embedding

    s = W2 relu(W1 [task_t; layer_l; place_p] + b1) + b2          (projector, `embedding_dim`)

and one linear generator per adapter leaf maps s to that leaf: the down and up projections'
kernels and biases and, with `adapter.norm`, the scale and bias of a LayerNorm on the
adapter's input (the task-conditional layer norm; scale = 1 + generated). Sharing the
generators across layers and places with layer and place embeddings is the paper's
HyperFormer++, the parameter-efficient variant. The up generators start at zero, so every
generated adapter starts as the identity and the model as the pretrained function.

Only the hypernetwork, the embeddings and the task heads train; the base stays frozen. Each
task's embedding is a leaf of its own (`hyper/task_<task>/embedding`), so a new task can be
added by training only its embedding (and head) against a trained hypernetwork.

The generated adapters have exactly the leaves, shapes and layout (per layer or scanned) that
the adapter modules of ftjax.nn.adapters own; the model inserts them as one adapter per task
(ftjax.models.adapter_slots) and routes each row to its task's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.nn.adapters import PLACES, AdapterConfig
from ftjax.nn.layers import Dense
from ftjax.settings import from_config, setting

# Replicated: no sharding table names them (the hypernetwork is small).
HYPER_AXIS, HYPER_OUT_AXIS = "hyper", "hyper_out"


@dataclasses.dataclass(frozen=True)
class HyperConfig:
    """HyperFormer settings (the `hyperformer` config block); the adapters it generates take
    their width, activation and norm from the `adapter` block (adapter.norm=True: the
    task-conditional layer norms)."""

    adapter_kind: str = setting("houlsby", "where the generated adapters sit: houlsby (after "
                                "attention and the MLP) or pfeiffer (after the MLP)",
                                choices=tuple(PLACES))
    task_dim: int = setting(64, "size of the task, layer and place embeddings")
    projector_hidden: int = setting(128, "hidden width of the task projector MLP")
    embedding_dim: int = setting(64, "size of the projected source embedding the generators "
                                 "read")
    embedding_init_scale: float = setting(1.0, "std of the embeddings' Gaussian init")

    def __post_init__(self):
        for key in ("task_dim", "projector_hidden", "embedding_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"hyperformer.{key} must be >= 1, got {getattr(self, key)}")
        if not self.embedding_init_scale > 0:
            raise ValueError(f"hyperformer.embedding_init_scale must be > 0, got "
                             f"{self.embedding_init_scale}")

    @classmethod
    def from_config(cls, cfg: Any) -> "HyperConfig":
        return from_config(cls, cfg, "hyperformer")


def adapter_leaf_shapes(adapter: AdapterConfig, hidden_size: int) -> dict[str, tuple]:
    """The leaves of one adapter module (module/leaf -> shape), as ftjax.nn.adapters makes
    them."""
    D, m = hidden_size, adapter.bottleneck(hidden_size)
    shapes = {"down/kernel": (D, m), "down/bias": (m,), "up/kernel": (m, D), "up/bias": (D,)}
    if adapter.norm:
        shapes.update({"norm/scale": (D,), "norm/bias": (D,)})
    return shapes


class HyperNetwork(nn.Module):
    """Every task's adapters, generated: a tree of the adapter leaves with a leading task
    axis, in the backbone's layout (`scanned`: the stacked `layers/block`)."""

    config: HyperConfig
    adapter: AdapterConfig
    tasks: tuple[str, ...]
    num_layers: int
    hidden_size: int
    scanned: bool
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> dict:
        cfg, places = self.config, PLACES[self.adapter.kind]
        L, P, T = self.num_layers, len(places), len(self.tasks)
        embed = nn.initializers.normal(cfg.embedding_init_scale)
        task = jnp.stack([_TaskEmbedding(cfg, self.param_dtype, name=f"task_{name}")()
                          for name in self.tasks])
        layer = self.param("layer_embedding", nn.with_logical_partitioning(
            embed, (None, HYPER_AXIS)), (L, cfg.task_dim), self.param_dtype)
        place = self.param("place_embedding", nn.with_logical_partitioning(
            embed, (None, HYPER_AXIS)), (P, cfg.task_dim), self.param_dtype)
        inputs = jnp.concatenate([
            jnp.broadcast_to(task[:, None, None], (T, L, P, cfg.task_dim)),
            jnp.broadcast_to(layer[None, :, None], (T, L, P, cfg.task_dim)),
            jnp.broadcast_to(place[None, None], (T, L, P, cfg.task_dim))], axis=-1)
        dense = lambda features, init, name: Dense(  # noqa: E731
            features, (HYPER_AXIS, HYPER_OUT_AXIS), use_bias=True, kernel_init=init,
            param_dtype=self.param_dtype, name=name)
        hidden = nn.relu(dense(cfg.projector_hidden, nn.initializers.lecun_normal(),
                               "projector_hidden")(inputs))
        source = dense(cfg.embedding_dim, nn.initializers.lecun_normal(),
                       "projector_out")(hidden)  # (T, L, P, E)

        generated = {}
        for leaf, shape in adapter_leaf_shapes(self.adapter, self.hidden_size).items():
            size = math.prod(shape)
            if leaf.startswith("up/") or leaf.startswith("norm/"):
                init = nn.initializers.zeros_init()  # identity adapters at the start
            else:  # a generated down kernel of std ~ adapter.init_scale
                init = nn.initializers.normal(self.adapter.init_scale
                                              / math.sqrt(cfg.embedding_dim))
            values = dense(size, init, f"generate_{leaf.replace('/', '_')}")(source)
            values = values.reshape(T, L, P, *shape)
            if leaf == "norm/scale":
                values = 1.0 + values
            generated[leaf] = values
        return _in_layout(generated, places, L, self.scanned)


class _TaskEmbedding(nn.Module):
    """One task's embedding, a leaf of its own: a new task trains just this."""

    config: HyperConfig
    param_dtype: Any

    @nn.compact
    def __call__(self):
        return self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(self.config.embedding_init_scale), (HYPER_AXIS,)),
            (self.config.task_dim,), self.param_dtype)


def _in_layout(generated: dict, places, num_layers: int, scanned: bool) -> dict:
    """{leaf: (T, L, P, ...)} as the backbone's adapter subtree with a leading task axis
    (scanned: the stacked block's `layers/block/...`, layers on the axis after the task)."""

    def module(select) -> dict:
        tree: dict = {}
        for leaf, values in generated.items():
            name, kind = leaf.split("/")
            tree.setdefault(name, {})[kind] = select(values)
        return tree

    if scanned:
        layers = {"layers": {"block": {f"adapter_{place}": module(lambda v, p=p: v[:, :, p])
                                       for p, place in enumerate(places)}}}
    else:
        layers = {f"layers_{i}": {f"adapter_{place}": module(lambda v, i=i, p=p: v[:, i, p])
                                  for p, place in enumerate(places)}
                  for i in range(num_layers)}
    return {"backbone": layers}
