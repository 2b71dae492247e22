"""Prefix tuning (Li & Liang, 2021): trainable keys and values of P virtual tokens in every layer.

Every attention layer attends to P extra key/value pairs placed before the real ones. They are
always attended (no padding, causal or segment mask hides them: every packed document sees
them) and take no rotary embedding: they are stored as post-rotation keys, as HF PEFT's
past_key_values are. Real tokens keep their own positions shifted by P (positions P, P+1, ...),
again as with HF PEFT, where the prefix is a KV cache of P tokens: so a prefix built from the
cached keys/values of P real tokens reproduces the model run on those tokens followed by the
input (tested).

Leaves, per attention layer (so `scan_layers` stacks them on the layer axis):
  Llama: `backbone/layers_N/self_attn/prefix_{k,v}` (P, K*H), axes ("prefix", "kv_heads")
  BERT:  `backbone/layers_N/attention/prefix_{k,v}` (P, D),   axes ("prefix", "heads")
so a prefix shards like the key/value projection output it extends.

Reparameterization (`projection=True`): as in the paper (and HF's prefix_projection), the
prefixes of all layers come from an MLP over a (P, D) embedding, which trains more stably:
  `backbone/prefix_encoder/{embedding, in_kernel, in_bias, out_k, out_k_bias, out_v, out_v_bias}`
It is a training device only: `ftjax.peft.fold_prefix` computes the prefixes once and returns the model
with plain per-layer leaves and no MLP, computing the same function (ftjax.generate folds
before decoding, so the MLP never runs per token).

The KV cache of generation holds only real tokens; the prefix joins the keys at every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ftjax.settings import from_config, setting

PREFIX_LEAVES = r".*/prefix_(?:k|v)|backbone/prefix_encoder/.*"
PREFIX_AXIS = "prefix"  # virtual tokens (prefix and prompt tuning)
HIDDEN_AXIS = "prefix_hidden"  # the reparameterization MLP's hidden layer


@dataclasses.dataclass(frozen=True)
class PrefixConfig:
    """Prefix-tuning settings (the `prefix` config block)."""

    num_tokens: int = setting(20, "P, the virtual tokens each attention layer attends to")
    projection: bool = setting(
        False, "train the prefixes through an MLP over a (P, D) embedding (the paper's "
        "reparameterization); ftjax.peft.fold_prefix removes it after training")
    projection_hidden: int = setting(512, "the reparameterization MLP's hidden width")
    init_scale: float = setting(0.02, "std of the prefixes at init (through the MLP: its output "
                                "layer is scaled to give about that std)")

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"prefix num_tokens must be >= 1, got {self.num_tokens}")
        if self.projection_hidden < 1:
            raise ValueError(f"prefix projection_hidden must be >= 1, got "
                             f"{self.projection_hidden}")
        if self.init_scale < 0:
            raise ValueError(f"prefix init_scale must be >= 0, got {self.init_scale}")

    @classmethod
    def from_config(cls, cfg: Any) -> "PrefixConfig":
        """From a ConfigDict / mapping / PrefixConfig / None; unknown keys are an error."""

        return from_config(cls, cfg, "prefix")


class PrefixEncoder(nn.Module):
    """The reparameterization: every layer's prefix keys and values, each (L, P, F)."""

    config: PrefixConfig
    num_layers: int
    hidden_size: int
    kv_features: int
    kv_axis: str
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self):
        cfg = self.config
        P, D, Hd, L, F = (cfg.num_tokens, self.hidden_size, cfg.projection_hidden,
                          self.num_layers, self.kv_features)

        def param(name, init, axes, shape):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape,
                              self.param_dtype).astype(self.dtype)

        normal, zeros = nn.initializers.normal, nn.initializers.zeros_init()
        embedding = param("embedding", normal(1.0), (PREFIX_AXIS, "embed"), (P, D))
        # Pre-activations of about unit scale, then an output layer whose std makes the
        # prefixes start at about init_scale (tanh's output has rms below one).
        w_in = param("in_kernel", normal(D ** -0.5), ("embed", HIDDEN_AXIS), (D, Hd))
        h = jnp.tanh(embedding @ w_in + param("in_bias", zeros, (HIDDEN_AXIS,), (Hd,)))
        out = {}
        for kv in ("k", "v"):
            w = param(f"out_{kv}", normal(cfg.init_scale * Hd ** -0.5),
                      (HIDDEN_AXIS, "layers", self.kv_axis), (Hd, L, F))
            b = param(f"out_{kv}_bias", zeros, ("layers", self.kv_axis), (L, F))
            out[kv] = jnp.einsum("ph,hlf->lpf", h, w) + b[:, None, :]
        return out["k"], out["v"]


def layer_prefix(module: nn.Module, config: PrefixConfig, kv_features: int, kv_axis: str,
                 given, param_dtype):
    """(k, v), each (P, kv_features): `given` (this layer's slice of the reparameterization's
    output), else the attention module's own `prefix_k` / `prefix_v` leaves."""
    if given is not None:
        return given
    if config.projection:
        raise ValueError("prefix projection=True: the prefixes come from backbone/prefix_encoder, "
                         "which the backbone passes to each layer; none reached this one")
    init = nn.initializers.normal(config.init_scale)
    shape = (config.num_tokens, kv_features)
    return tuple(
        module.param(f"prefix_{kv}", nn.with_logical_partitioning(init, (PREFIX_AXIS, kv_axis)),
                     shape, param_dtype)
        for kv in ("k", "v")
    )


def prepend_prefix(k_BSKH, v_BSKH, mask_B1TS, prefix_k_PF, prefix_v_PF):
    """Keys, values and mask with the P prefix slots in front; the prefix is always visible."""
    B, S, K, H = k_BSKH.shape
    P = prefix_k_PF.shape[0]
    T = mask_B1TS.shape[2]

    def expand(x_PF):
        return jnp.broadcast_to(x_PF.reshape(P, K, H).astype(k_BSKH.dtype), (B, P, K, H))

    mask = jnp.broadcast_to(mask_B1TS, (B, 1, T, S))
    mask = jnp.concatenate([jnp.ones((B, 1, T, P), bool), mask], axis=-1)
    return (jnp.concatenate([expand(prefix_k_PF), k_BSKH], axis=1),
            jnp.concatenate([expand(prefix_v_PF), v_BSKH], axis=1), mask)
