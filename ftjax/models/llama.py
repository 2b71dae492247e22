"""Llama-family decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Parameter paths mirror Hugging Face's LlamaModel (without its `model.` prefix), e.g.
`layers_3/self_attn/q_proj/kernel`, so import/export and PEFT key names map one-to-one. With
`scan_layers` the per-layer modules collapse into one `layers/...` subtree whose leaves carry a
leading "layers" axis (see ftjax.models.layout for converting between the two).

KV cache (decoding): a dict
  k, v:  (L, B, S, K, H) keys/values of every layer, S = cache length
  mask:  (B, S) int32, 1 where a slot holds a real token
  end:   int32 scalar, the number of slots written so far (same for every row: prompts are
         left-padded so that rows stay aligned)
Calling the model with a cache writes the T new tokens at slots [end, end + T) and returns the
updated cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.config import LlamaConfig
from ftjax.models.layers import (
    Dense,
    Embed,
    RMSNorm,
    apply_rope,
    attention_mask,
    dot_product_attention,
    rope_cos_sin,
)
from ftjax.models.remat import remat_policy


def init_cache(config: LlamaConfig, batch_size: int, max_length: int, dtype=None) -> dict:
    """An empty KV cache for `batch_size` rows of up to `max_length` tokens."""
    dtype = dtype or config.compute_dtype
    shape = (config.num_layers, batch_size, max_length, config.num_kv_heads, config.head_size)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "mask": jnp.zeros((batch_size, max_length), jnp.int32),
        "end": jnp.zeros((), jnp.int32),
    }


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic=True):
        cfg = self.config
        B, T, _ = x_BTD.shape
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
        dense = lambda features, axes, name: Dense(  # noqa: E731
            features, axes, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            lora=cfg.lora, name=name,
        )
        q = dense(N * H, ("embed", "heads"), "q_proj")(x_BTD, deterministic).reshape(B, T, N, H)
        k = dense(K * H, ("embed", "kv_heads"), "k_proj")(x_BTD, deterministic).reshape(B, T, K, H)
        v = dense(K * H, ("embed", "kv_heads"), "v_proj")(x_BTD, deterministic).reshape(B, T, K, H)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if layer_cache is not None:
            cache_k, cache_v = layer_cache
            start = (0, cache_end, 0, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            layer_cache = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        rate = 0.0 if deterministic else cfg.attention_dropout
        out = dot_product_attention(
            q, k, v, mask_B1TS, implementation=cfg.attention_impl, dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate else None,
        )
        out = dense(cfg.hidden_size, ("heads", "embed"), "o_proj")(out.reshape(B, T, N * H),
                                                                   deterministic)
        return out, layer_cache


class LlamaMLP(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, deterministic=True):
        cfg = self.config
        dense = lambda features, axes, name: Dense(  # noqa: E731
            features, axes, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            lora=cfg.lora, name=name,
        )
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x_BTD, deterministic)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x_BTD, deterministic)
        return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(jax.nn.silu(gate) * up,
                                                                     deterministic)


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic=True):
        cfg = self.config
        norm = lambda name: RMSNorm(  # noqa: E731
            cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, name=name
        )
        drop = lambda y: nn.Dropout(cfg.hidden_dropout)(  # noqa: E731
            y, deterministic=deterministic or not cfg.hidden_dropout
        )
        attn, layer_cache = LlamaAttention(cfg, name="self_attn")(
            norm("input_layernorm")(x_BTD), cos, sin, mask_B1TS, layer_cache, cache_end,
            deterministic,
        )
        x_BTD = x_BTD + drop(attn)
        x_BTD = x_BTD + drop(LlamaMLP(cfg, name="mlp")(norm("post_attention_layernorm")(x_BTD),
                                                    deterministic))
        return x_BTD, layer_cache


class _ScannedBlock(nn.Module):
    """LlamaBlock in lax.scan's (carry, x) -> (carry, y) form; the per-layer cache is x / y."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, layer_cache, cos, sin, mask_B1TS, cache_end, deterministic):
        return LlamaBlock(self.config, name="block")(
            x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic
        )


class LlamaModel(nn.Module):
    """Embedding, decoder blocks and final norm; returns hidden states (B, T, D)."""

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype
        )
        block = LlamaBlock
        policy = remat_policy(cfg.remat)
        if cfg.scan_layers:
            scanned = _ScannedBlock
            if policy is not None:
                # argnums count self: (self, x, cache, cos, sin, mask, end, deterministic)
                scanned = nn.remat(scanned, policy=policy, prevent_cse=False, static_argnums=(7,))
            self.layers = nn.scan(
                scanned,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg)
        else:
            if policy is not None:
                # argnums count self: (self, x, cos, sin, mask, cache, end, deterministic)
                block = nn.remat(block, policy=policy, static_argnums=(7,))
            self.blocks = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)

    def attend(self, x_BTD):
        return self.embed_tokens.attend(x_BTD)

    def __call__(
        self, input_ids, *, positions, attention_mask_BT, segment_ids=None, cache=None,
        deterministic=True,
    ):
        cfg = self.config
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)
        x = self.embedding_dropout(x, deterministic=deterministic or not cfg.embedding_dropout)
        cos, sin = rope_cos_sin(positions, cfg.head_size, cfg.rope_theta)

        if cache is None:
            cache_end = 0
            mask = attention_mask(
                k_valid_BS=attention_mask_BT, causal_offset=0,
                q_segments_BT=segment_ids, k_segments_BS=segment_ids, q_len=T, k_len=T,
            )
            layer_caches = None
        else:
            if segment_ids is not None:
                raise ValueError("packed segment_ids cannot be combined with a KV cache")
            cache_end = cache["end"]
            slot_mask = jax.lax.dynamic_update_slice(
                cache["mask"], attention_mask_BT.astype(jnp.int32), (0, cache_end)
            )
            mask = attention_mask(
                k_valid_BS=slot_mask, causal_offset=cache_end,
                q_len=T, k_len=cache["mask"].shape[1],
            )
            layer_caches = (cache["k"], cache["v"])

        if cfg.scan_layers:
            x, layer_caches = self.layers(x, layer_caches, cos, sin, mask, cache_end, deterministic)
        else:
            new_k, new_v = [], []
            for i, block in enumerate(self.blocks):
                layer_cache = None if layer_caches is None else (
                    layer_caches[0][i], layer_caches[1][i]
                )
                x, layer_cache = block(x, cos, sin, mask, layer_cache, cache_end, deterministic)
                if layer_cache is not None:
                    new_k.append(layer_cache[0])
                    new_v.append(layer_cache[1])
            if layer_caches is not None:
                layer_caches = (jnp.stack(new_k), jnp.stack(new_v))

        x = self.norm(x)
        new_cache = None
        if cache is not None:
            new_cache = {
                "k": layer_caches[0], "v": layer_caches[1], "mask": slot_mask, "end": cache_end + T,
            }
        return x, new_cache
