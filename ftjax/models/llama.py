"""Llama-family decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU; and Gemma
3 by its config's flags (query / key norms, sandwich norms, GeGLU, scaled embeddings, local
sliding-window layers with their own RoPE base beside global ones).

Parameter paths mirror Hugging Face's LlamaModel (without its `model.` prefix), e.g.
`layers_3/self_attn/q_proj/kernel`, so import/export and PEFT key names map one-to-one. With
`scan_layers` the per-layer modules collapse into one `layers/...` subtree whose leaves carry a
leading "layers" axis (see ftjax.models.layout for converting between the two).

KV cache (decoding): ftjax.models.kv_cache (per-layer buffers, or one stacked array for scanned
layers). Calling the model with a cache writes the T new tokens at slots [end, end + T) and
returns the updated cache.

PEFT hooks (ftjax.peft; each active when its config field is set): LoRA and (IA)^3 live in the
Dense layers, bottleneck adapters after the attention / MLP outputs, prefix keys/values inside
the attention (never in the cache), the soft prompt in front of the token embeddings.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.config import LlamaConfig
from ftjax.nn.adapters import maybe_adapt
from ftjax.nn.layers import (
    Dense,
    Embed,
    RMSNorm,
    activation,
    apply_rope,
    attention_mask,
    attention_probs,
    dot_product_attention,
    rope_cos_sin,
)
from ftjax.nn.prefix import PrefixEncoder, layer_prefix, prepend_prefix
from ftjax.nn.prompt import extend_inputs, prepend_embeddings, soft_prompt_param
from ftjax.nn.remat import remat_policy
from ftjax.nn.scan import INTERMEDIATES, attach_layer_scans, run_layers


def _rms_norm(cfg: LlamaConfig, name: str | None) -> RMSNorm:
    return RMSNorm(cfg.rms_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                   name=name)


class LlamaAttention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic=True,
                 prefix_kv=None):
        cfg = self.config
        B, T, _ = x_BTD.shape
        N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_size
        dense = lambda features, axes, name: Dense(  # noqa: E731
            features, axes, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            lora=cfg.lora, ia3=cfg.ia3, methods=cfg.dense_methods, name=name,
        )
        q = dense(N * H, ("embed", "heads"), "q_proj")(x_BTD, deterministic).reshape(B, T, N, H)
        k = dense(K * H, ("embed", "kv_heads"), "k_proj")(x_BTD, deterministic).reshape(B, T, K, H)
        v = dense(K * H, ("embed", "kv_heads"), "v_proj")(x_BTD, deterministic).reshape(B, T, K, H)
        if cfg.qk_norm:  # Gemma 3: each head's queries and keys normalized, before RoPE
            q = _rms_norm(cfg, "q_norm")(q)
            k = _rms_norm(cfg, "k_norm")(k)
        if layer_cache is None and self.is_mutable_collection(INTERMEDIATES):
            # MiniLM's value relation (per kv head), causal like the attention, for a reader
            self.sow(INTERMEDIATES, "value_relation", attention_probs(v, v, mask_B1TS))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if layer_cache is not None:
            cache_k, cache_v = layer_cache
            start = (0, cache_end, 0, 0)
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
            layer_cache = (k, v)
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        if cfg.prefix is not None:  # after the cache: it holds real tokens only
            prefix_k, prefix_v = layer_prefix(self, cfg.prefix, K * H, "kv_heads", prefix_kv,
                                              cfg.weight_dtype)
            k, v, mask_B1TS = prepend_prefix(k, v, mask_B1TS, prefix_k, prefix_v)
        rate = 0.0 if deterministic else cfg.attention_dropout
        if self.is_mutable_collection(INTERMEDIATES):  # a caller reads the distributions
            self.sow(INTERMEDIATES, "attention", attention_probs(q, k, mask_B1TS))
        # As many keys as queries: the tokens themselves at the same positions (no prefix; a
        # cache as long as the input is written from slot 0), so the causal mask is the diagonal.
        out = dot_product_attention(
            q, k, v, mask_B1TS, implementation=cfg.attention_impl, dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate else None, causal=k.shape[1] == T,
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
            lora=cfg.lora, ia3=cfg.ia3, methods=cfg.dense_methods, name=name,
        )
        gate = dense(cfg.intermediate_size, ("embed", "mlp"), "gate_proj")(x_BTD, deterministic)
        up = dense(cfg.intermediate_size, ("embed", "mlp"), "up_proj")(x_BTD, deterministic)
        act = activation(cfg.hidden_act)  # SwiGLU (silu); Gemma's GeGLU (gelu_pytorch_tanh)
        return dense(cfg.hidden_size, ("mlp", "embed"), "down_proj")(act(gate) * up,
                                                                     deterministic)


class LlamaBlock(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic=True,
                 prefix_kv=None):
        cfg = self.config
        norm = lambda name: _rms_norm(cfg, name)  # noqa: E731
        drop = lambda y: nn.Dropout(cfg.hidden_dropout)(  # noqa: E731
            y, deterministic=deterministic or not cfg.hidden_dropout
        )
        # Adapters sit on each branch's output, before its residual add (ftjax.nn.adapters).
        adapt = lambda place, y: maybe_adapt(  # noqa: E731
            cfg.adapter, place, y, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype
        )
        attn, layer_cache = LlamaAttention(cfg, name="self_attn")(
            norm("input_layernorm")(x_BTD), cos, sin, mask_B1TS, layer_cache, cache_end,
            deterministic, prefix_kv,
        )
        if cfg.sandwich_norms:  # Gemma: each branch normalized on both sides (HF's names)
            attn = norm("post_attention_layernorm")(attn)
        x_BTD = x_BTD + adapt("attn", drop(attn))
        pre_mlp = "pre_feedforward_layernorm" if cfg.sandwich_norms else \
            "post_attention_layernorm"
        mlp = LlamaMLP(cfg, name="mlp")(norm(pre_mlp)(x_BTD), deterministic)
        if cfg.sandwich_norms:
            mlp = norm("post_feedforward_layernorm")(mlp)
        x_BTD = x_BTD + adapt("mlp", drop(mlp))
        self.sow(INTERMEDIATES, "hidden", x_BTD)  # kept only when the caller asks (mutable)
        return x_BTD, layer_cache


class _ScannedBlock(nn.Module):
    """LlamaBlock in lax.scan's (carry, x) -> (carry, y) form: x is the layer's (cache, prefix)
    (either may be None), y its updated cache."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x_BTD, layer_inputs, cos, sin, mask_B1TS, cache_end, deterministic):
        layer_cache, prefix_kv = layer_inputs
        return LlamaBlock(self.config, name="block")(
            x_BTD, cos, sin, mask_B1TS, layer_cache, cache_end, deterministic, prefix_kv
        )


class LlamaModel(nn.Module):
    """Embedding, decoder blocks and final norm; returns hidden states (B, T, D)."""

    config: LlamaConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype
        )
        if cfg.prompt is not None:
            self.soft_prompt = soft_prompt_param(self, cfg.prompt, cfg.hidden_size,
                                                 cfg.weight_dtype)
        if cfg.prefix is not None and cfg.prefix.projection:
            self.prefix_encoder = PrefixEncoder(
                cfg.prefix, cfg.num_layers, cfg.hidden_size, cfg.num_kv_heads * cfg.head_size,
                "kv_heads", dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            )
        block = LlamaBlock
        policy = remat_policy(cfg.remat)
        if cfg.scan_layers:
            scanned = _ScannedBlock
            if policy is not None:
                # argnums count self: (self, x, layer_inputs, cos, sin, mask, end, deterministic)
                scanned = nn.remat(scanned, policy=policy, prevent_cse=False, static_argnums=(7,))
            attach_layer_scans(
                self, scanned, cfg,
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast))
        else:
            if policy is not None:
                # argnums count self: (self, x, cos, sin, mask, cache, end, deterministic, prefix)
                block = nn.remat(block, policy=policy, static_argnums=(7,))
            self.blocks = [block(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.norm = _rms_norm(cfg, None)
        self.embedding_dropout = nn.Dropout(cfg.embedding_dropout)

    def attend(self, x_BTD):
        return self.embed_tokens.attend(x_BTD)

    def embedding_table(self):
        """The token embedding table (V, D), as stored."""
        return self.embed_tokens.embedding

    def __call__(
        self, input_ids, *, positions, attention_mask_BT, segment_ids=None, cache=None,
        deterministic=True, with_prompt=None, embedding_delta=None, prefill=False,
    ):
        """with_prompt: whether the soft prompt (config.prompt) precedes input_ids in this call;
        None: exactly when there is no cache (a whole sequence). With a cache, the call that
        starts the sequence passes True so that the prompt's slots are cached.
        embedding_delta (B, T, D): added to the tokens' embeddings as the blocks receive them
        (after Gemma's scaling): an adversarial perturbation.
        prefill (with a cache): the cache is empty, so the T tokens attend among themselves only
        (T keys, causal, where the general path would score all S slots and mask the empty
        ones; on a GPU this is also the shape cuDNN's fused kernel takes); their keys and values
        then fill slots [0, T)."""
        cfg = self.config
        x = self.embed_tokens(input_ids)
        if cfg.scale_embeddings:  # Gemma: sqrt(hidden_size), rounded to the compute dtype
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, x.dtype)
        if embedding_delta is not None:
            x = x + embedding_delta.astype(x.dtype)
        if with_prompt is None:
            with_prompt = cfg.prompt is not None and cache is None
        virtual = 0
        if with_prompt:
            if cfg.prompt is None:
                raise ValueError("with_prompt=True needs a soft prompt (config.prompt is None)")
            virtual = cfg.prompt.num_tokens
            x = prepend_embeddings(self.soft_prompt, x)
            attention_mask_BT, positions = extend_inputs(virtual, attention_mask_BT, positions)
            if segment_ids is not None:  # -1: no document's id (0 is padding); always_visible
                # below makes the prompt part of every segment
                segment_ids = jnp.concatenate(
                    [jnp.full((x.shape[0], virtual), -1, segment_ids.dtype), segment_ids], axis=1)
        if cfg.prefix is not None:  # the prefix occupies positions 0..P-1 (ftjax.nn.prefix)
            positions = positions + cfg.prefix.num_tokens
        B, T = x.shape[:2]
        x = self.embedding_dropout(x, deterministic=deterministic or not cfg.embedding_dropout)
        cos, sin = rope_cos_sin(positions, cfg.head_size, cfg.rope_theta)

        if cache is None:
            cache_end = 0
            mask_args = dict(
                k_valid_BS=attention_mask_BT, causal_offset=0,
                q_segments_BT=segment_ids, k_segments_BS=segment_ids, always_visible=virtual,
                q_len=T, k_len=T,
            )
            layer_caches = None
        else:
            if segment_ids is not None:
                raise ValueError("packed segment_ids cannot be combined with a KV cache")
            cache_end = cache["end"]
            slot_mask = jax.lax.dynamic_update_slice(
                cache["mask"], attention_mask_BT.astype(jnp.int32), (0, cache_end)
            )
            if prefill:  # the layers write into T-slot buffers, copied to the cache below
                cache_end = 0
                mask_args = dict(k_valid_BS=attention_mask_BT, causal_offset=0, q_len=T, k_len=T)
                layer_caches = jax.tree.map(lambda a: _token_slots(a, T), (cache["k"], cache["v"]))
            else:
                mask_args = dict(k_valid_BS=slot_mask, causal_offset=cache_end,
                                 q_len=T, k_len=cache["mask"].shape[1])
                layer_caches = (cache["k"], cache["v"])
        mask = attention_mask(**mask_args)
        # Local layers (Gemma 3): a window over the slots and RoPE of their own base.
        local = (attention_mask(**mask_args, window=cfg.sliding_window),
                 *rope_cos_sin(positions, cfg.head_size, cfg.rope_local_theta or cfg.rope_theta)
                 ) if cfg.sliding_window else None
        # Reparameterized prefixes: every layer's (k, v), each (L, P, F), computed once per call.
        prefixes = self.prefix_encoder() if cfg.prefix is not None and cfg.prefix.projection \
            else None

        if cfg.scan_layers:
            x, layer_caches = run_layers(self, x, (layer_caches, prefixes), cos, sin, mask,
                                         cache_end, deterministic)
        else:
            new_k, new_v = [], []
            for i, block in enumerate(self.blocks):
                layer_cache = None if layer_caches is None else (
                    layer_caches[0][i], layer_caches[1][i]
                )
                prefix_kv = None if prefixes is None else (prefixes[0][i], prefixes[1][i])
                layer_mask, layer_cos, layer_sin = local if cfg.is_local(i) else (mask, cos, sin)
                x, layer_cache = block(x, layer_cos, layer_sin, layer_mask, layer_cache,
                                       cache_end, deterministic, prefix_kv)
                if layer_cache is not None:
                    new_k.append(layer_cache[0])
                    new_v.append(layer_cache[1])
            if layer_caches is not None:  # each layer's buffer, updated in place
                layer_caches = (tuple(new_k), tuple(new_v))

        x = self.norm(x)[:, virtual:]  # the heads see the real positions only
        new_cache = None
        if cache is not None:
            if prefill:
                layer_caches = jax.tree.map(_write_from_slot_0, (cache["k"], cache["v"]),
                                            layer_caches)
            new_cache = {
                "k": layer_caches[0], "v": layer_caches[1], "mask": slot_mask,
                "end": cache["end"] + T,
            }
        return x, new_cache


def _token_slots(cache_entry, T: int):
    """Zeros shaped like a cache buffer (..., S, K, H) with T slots instead of S."""
    return jnp.zeros((*cache_entry.shape[:-3], T, *cache_entry.shape[-2:]), cache_entry.dtype)


def _write_from_slot_0(cache_entry, written):
    return jax.lax.dynamic_update_slice(cache_entry, written.astype(cache_entry.dtype),
                                        (0,) * cache_entry.ndim)
