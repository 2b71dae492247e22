"""LoRA (Hu et al., 2021): a trainable low-rank update beside a frozen linear map.

    y = x @ W + (dropout(x) @ A @ B) * scale,   A: (in, r), B: (r, out), B = 0 at init

Leaves: every targeted `Dense` (ftjax.nn.layers) owns `lora_a` and `lora_b` next to its
`kernel`, e.g. `backbone/layers_3/self_attn/q_proj/lora_a`; under `scan_layers` they are stacked
like every other block leaf (`backbone/layers/block/self_attn/q_proj/lora_a`, (L, in, r)).
Their logical axes are (kernel's in-axis, "lora_rank") and ("lora_rank", kernel's out-axis), so
they shard along with the kernel they modify (DESIGN.md 6).

Targets: `LoraConfig.targets` is `re.fullmatch`ed against each Dense module's path in the
canonical per-layer layout (`backbone/layers_N/...`; a scanned model matches as layer 0, and
`ftjax.peft.add_lora` checks that every layer is targeted alike). Module names:
  Llama: backbone/layers_N/self_attn/{q,k,v,o}_proj, backbone/layers_N/mlp/{gate,up,down}_proj,
         head (an untied LM head)
  BERT:  backbone/layers_N/attention/{query,key,value,output}, backbone/layers_N/{intermediate,
         output}, backbone/pooler
Task heads (head/classifier, ...) are new and trained whole; they take no LoRA.

This module imports no model code (the models import it), so it holds the config, the layer
math and the pure tree operations; `ftjax.peft.attach` inserts fresh leaves into a model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.settings import from_config, setting
from ftjax.utils.tree import canonical_module_path, insert_leaves

# Attention query and value projections of both architectures (the LoRA paper's choice).
DEFAULT_TARGETS = r".*/(?:self_attn/(?:q_proj|v_proj)|attention/(?:query|value))"
LORA_LEAVES = ("lora_a", "lora_b")
LORA_PATTERN = r".*/lora_(?:a|b)"  # the same leaves as a path regex (ftjax.peft.presets)
# Logical name of the rank axis; replicated by any sharding table that does not name it.
RANK_AXIS = "lora_rank"

LoraInit = Literal["default", "gaussian"]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA settings (the `lora` config block)."""

    rank: int = setting(8, "r, the inner dimension of A @ B")
    alpha: float = setting(16.0, "the update is scaled by alpha / r (alpha / sqrt(r) with "
                           "rslora), so changing r barely changes the effective learning rate")
    dropout: float = setting(0.0, "dropout on the LoRA branch's input while training (the "
                             "frozen path sees x as is)")
    targets: str = setting(DEFAULT_TARGETS, "regex over module paths (ftjax.nn.lora names them); "
                           "default: attention query and value projections")
    rslora: bool = setting(False, "rank-stabilized scaling alpha / sqrt(r) (Kalajdzievski 2023)")
    init: LoraInit = setting(
        "default", "A's initializer (B starts at zero): default = uniform(+-1/sqrt(in)) as peft's "
        "kaiming-uniform; gaussian = normal with std 1/r, peft's init_lora_weights='gaussian'")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if self.init not in LoraInit.__args__:
            raise ValueError(
                f"unknown lora init {self.init!r}; expected one of {LoraInit.__args__}")
        try:
            re.compile(self.targets)
        except re.error as err:
            raise ValueError(f"lora targets {self.targets!r} is not a valid regex: {err}") from None

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def targets_module(self, module_path: str) -> bool:
        return re.fullmatch(self.targets, canonical_module_path(module_path)) is not None

    @classmethod
    def from_config(cls, cfg: Any) -> "LoraConfig":
        """From a ConfigDict / mapping / LoraConfig / None; unknown keys are an error."""

        return from_config(cls, cfg, "lora")


def a_initializer(init: LoraInit, rank: int):
    if init == "gaussian":
        return nn.initializers.normal(stddev=1.0 / rank)

    def uniform_fan_in(key, shape, dtype=jnp.float32):
        bound = 1.0 / math.sqrt(shape[-2])  # shape (..., in, r); fan_in = in
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return uniform_fan_in


def lora_branch(module: nn.Module, x, features: int, kernel_axes: tuple[str, str],
                config: LoraConfig, deterministic: bool):
    """The LoRA term of a Dense `module` (called inside its compact __call__): creates the
    leaves on first use and returns (dropout(x) @ A @ B) * scale in the module's dtype."""
    in_features = x.shape[-1]
    a = module.param(
        "lora_a",
        nn.with_logical_partitioning(a_initializer(config.init, config.rank),
                                     (kernel_axes[0], RANK_AXIS)),
        (in_features, config.rank), module.param_dtype,
    )
    b = module.param(
        "lora_b",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (RANK_AXIS, kernel_axes[1])),
        (config.rank, features), module.param_dtype,
    )
    if config.dropout and not deterministic:
        keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - config.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - config.dropout), 0.0)
    dtype = module.dtype
    # x @ A first: (.., in) @ (in, r) is the cheap order; never form the (in, out) product here.
    h = jnp.dot(x.astype(dtype), a.astype(dtype))
    return jnp.dot(h, b.astype(dtype)) * jnp.asarray(config.scale, dtype)


# ---- pure tree operations on {backbone, head} parameter dicts ----

def _is_lora_module(tree: Any) -> bool:
    return isinstance(tree, dict) and all(k in tree for k in LORA_LEAVES)


def split_lora(params: dict) -> tuple[dict, dict]:
    """(base, lora): the tree without LoRA leaves, and a tree holding only them.

    Empty branches are dropped from `lora`, so it is the small adapter tree to save or swap.
    """
    base, lora = {}, {}
    for key, value in params.items():
        if key in LORA_LEAVES:
            lora[key] = value
        elif isinstance(value, dict):
            sub_base, sub_lora = split_lora(value)
            base[key] = sub_base
            if sub_lora:
                lora[key] = sub_lora
        else:
            base[key] = value
    return base, lora


def lora_only(params: dict) -> dict:
    return split_lora(params)[1]


def insert_lora(base: dict, lora: dict) -> dict:
    """Inverse of split_lora: the base tree with the adapter's leaves put back."""
    return insert_leaves(base, lora, new_branches=False)


def delta(lora_a, lora_b, scale: float):
    """A @ B * scale in fp32; batched over a leading layer axis when stacked."""
    return jnp.matmul(lora_a.astype(jnp.float32), lora_b.astype(jnp.float32)) * scale


def _map_lora_modules(params: dict, fn) -> dict:
    if _is_lora_module(params):
        return fn(params)
    return {k: _map_lora_modules(v, fn) if isinstance(v, dict) else v for k, v in params.items()}


def merge(params: dict, config: LoraConfig) -> dict:
    """Fold every adapter into its kernel, W' = W + A @ B * scale; returns a tree without LoRA
    leaves, for the base model (the config without `lora`)."""
    def fold(module: dict) -> dict:
        kernel = module["kernel"]
        update = delta(module["lora_a"], module["lora_b"], config.scale)
        merged = kernel.astype(jnp.float32) + update
        rest = {k: v for k, v in module.items() if k not in LORA_LEAVES}
        return {**rest, "kernel": merged.astype(kernel.dtype)}

    return _map_lora_modules(params, fold)


def unmerge(merged: dict, lora: dict, config: LoraConfig) -> dict:
    """Inverse of merge: W = W' - A @ B * scale, with the adapter's leaves put back.

    Exact up to floating-point rounding of the add and subtract (at the kernel's dtype).
    """
    def unfold(module: dict) -> dict:
        kernel = module["kernel"]
        base = kernel.astype(jnp.float32) - delta(module["lora_a"], module["lora_b"], config.scale)
        return {**module, "kernel": base.astype(kernel.dtype)}

    return _map_lora_modules(insert_lora(merged, lora), unfold)


def lora_paths(params: dict) -> list[str]:
    """'/'-joined paths of the modules that carry LoRA leaves (for messages and tests)."""
    found = []

    def walk(tree: dict, prefix: str):
        if _is_lora_module(tree):
            found.append(prefix)
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}/{key}" if prefix else key)

    walk(params, "")
    return sorted(found)
