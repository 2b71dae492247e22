"""BERT encoder: learned positions and token types, post-LayerNorm blocks, GELU MLP, pooler.

Parameter paths follow Hugging Face's BertModel closely (`embeddings/word_embeddings`,
`layers_N/attention/query`, ..., `pooler/dense`) so checkpoint import is a renaming.

PEFT hooks (ftjax.peft) as in the Llama decoder: LoRA and (IA)^3 in the Dense layers, adapters
after the attention output / MLP output dropout and before the residual add and its LayerNorm,
prefixes inside the attention, the soft prompt before the word embeddings (positions and token
types are added to it as to any token).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models.config import BertConfig
from ftjax.nn.adapters import maybe_adapt
from ftjax.nn.layers import (
    Dense,
    Embed,
    LayerNorm,
    activation,
    attention_mask,
    attention_probs,
    dot_product_attention,
)
from ftjax.nn.prefix import PrefixEncoder, layer_prefix, prepend_prefix
from ftjax.nn.prompt import extend_inputs, prepend_embeddings, soft_prompt_param
from ftjax.nn.remat import remat_policy
from ftjax.nn.scan import INTERMEDIATES, attach_layer_scans, run_layers


def _dense(cfg: BertConfig, features, axes, name):
    return Dense(
        features, axes, use_bias=True, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        lora=cfg.lora, ia3=cfg.ia3, methods=cfg.dense_methods, name=name,
    )


def _norm(cfg: BertConfig, name):
    return LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
                     name=name)


class BertEmbeddings(nn.Module):
    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, axes: Embed(  # noqa: E731
            n, cfg.hidden_size, axes, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype
        )
        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(cfg.max_position_embeddings, ("positions", "embed"))
        self.token_type_embeddings = embed(cfg.type_vocab_size, ("types", "embed"))
        self.norm = LayerNorm(cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                              param_dtype=cfg.weight_dtype)
        self.dropout = nn.Dropout(
            cfg.hidden_dropout if cfg.embedding_dropout is None else cfg.embedding_dropout
        )

    def __call__(self, input_ids, token_type_ids, positions, deterministic, prompt_PD=None,
                 delta_BTD=None):
        """positions / token_type_ids cover [prompt; tokens] when a soft prompt is given;
        delta_BTD is added to the tokens' word embeddings (an adversarial perturbation)."""
        x = self.word_embeddings(input_ids)
        if delta_BTD is not None:
            x = x + delta_BTD.astype(x.dtype)
        if prompt_PD is not None:
            x = prepend_embeddings(prompt_PD, x)
        x = x + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x), deterministic=deterministic)

    def attend(self, x_BTD):
        return self.word_embeddings.attend(x_BTD)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, mask_B1TS, deterministic, prefix_kv=None):
        cfg = self.config
        B, T, D = x_BTD.shape
        N, H = cfg.num_heads, cfg.head_size
        q = _dense(cfg, D, ("embed", "heads"), "query")(x_BTD, deterministic).reshape(B, T, N, H)
        k = _dense(cfg, D, ("embed", "heads"), "key")(x_BTD, deterministic).reshape(B, T, N, H)
        v = _dense(cfg, D, ("embed", "heads"), "value")(x_BTD, deterministic).reshape(B, T, N, H)
        if self.is_mutable_collection(INTERMEDIATES):  # MiniLM's value relation, for a reader
            self.sow(INTERMEDIATES, "value_relation", attention_probs(v, v, mask_B1TS))
        if cfg.prefix is not None:
            prefix_k, prefix_v = layer_prefix(self, cfg.prefix, D, "heads", prefix_kv,
                                              cfg.weight_dtype)
            k, v, mask_B1TS = prepend_prefix(k, v, mask_B1TS, prefix_k, prefix_v)
        rate = 0.0 if deterministic else cfg.attention_dropout
        if self.is_mutable_collection(INTERMEDIATES):  # a caller reads the distributions
            self.sow(INTERMEDIATES, "attention", attention_probs(q, k, mask_B1TS))
        out = dot_product_attention(
            q, k, v, mask_B1TS, implementation=cfg.attention_impl, dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate else None,
        )
        return _dense(cfg, D, ("heads", "embed"), "output")(out.reshape(B, T, D), deterministic)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, mask_B1TS, deterministic, prefix_kv=None):
        cfg = self.config
        dropout = lambda y: nn.Dropout(cfg.hidden_dropout)(  # noqa: E731
            y, deterministic=deterministic
        )
        adapt = lambda place, y: maybe_adapt(  # noqa: E731
            cfg.adapter, place, y, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype
        )
        attn = BertAttention(cfg, name="attention")(x_BTD, mask_B1TS, deterministic, prefix_kv)
        x_BTD = _norm(cfg, "attention_norm")(x_BTD + adapt("attn", dropout(attn)))
        h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BTD,
                                                                                  deterministic)
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(activation(cfg.hidden_act)(h),
                                                                     deterministic)
        out = _norm(cfg, "output_norm")(x_BTD + adapt("mlp", dropout(h)))
        self.sow(INTERMEDIATES, "hidden", out)  # kept only when the caller asks (mutable)
        return out


class _ScannedLayer(nn.Module):
    """BertLayer in lax.scan's (carry, x) -> (carry, y) form; x is the layer's prefix or None."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, prefix_kv, mask_B1TS, deterministic):
        return BertLayer(self.config, name="block")(x_BTD, mask_B1TS, deterministic,
                                                    prefix_kv), None


class BertModel(nn.Module):
    """Embeddings, encoder layers and (optionally) the pooler.

    Returns (hidden states (B, T, D), pooled (B, D) or None).
    """

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        if cfg.prompt is not None:
            self.soft_prompt = soft_prompt_param(self, cfg.prompt, cfg.hidden_size,
                                                 cfg.weight_dtype)
        if cfg.prefix is not None and cfg.prefix.projection:
            self.prefix_encoder = PrefixEncoder(
                cfg.prefix, cfg.num_layers, cfg.hidden_size, cfg.hidden_size, "heads",
                dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
            )
        policy = remat_policy(cfg.remat)
        if cfg.scan_layers:
            layer = _ScannedLayer
            if policy is not None:
                # argnums count self: (self, x, _, mask, deterministic)
                layer = nn.remat(layer, policy=policy, prevent_cse=False, static_argnums=(4,))
            attach_layer_scans(self, layer, cfg, in_axes=(0, nn.broadcast, nn.broadcast))
        else:
            layer = BertLayer
            if policy is not None:
                layer = nn.remat(layer, policy=policy, static_argnums=(3,))
            self.blocks = [layer(cfg, name=f"layers_{i}") for i in range(cfg.num_layers)]
        if cfg.add_pooler:
            self.pooler = _dense(cfg, cfg.hidden_size, ("embed", "embed_out"), None)

    def attend(self, x_BTD):
        """Logits against the word-embedding table (the tied masked-LM decoder)."""
        return self.embeddings.attend(x_BTD)

    def embedding_table(self):
        """The word embedding table (V, D), as stored."""
        return self.embeddings.word_embeddings.embedding

    def __call__(
        self, input_ids, *, positions, attention_mask_BT, token_type_ids=None, deterministic=True,
        embedding_delta=None,
    ):
        cfg = self.config
        B, T = input_ids.shape
        virtual = cfg.prompt.num_tokens if cfg.prompt is not None else 0
        prefix = cfg.prefix.num_tokens if cfg.prefix is not None else 0
        if virtual + prefix + T > cfg.max_position_embeddings:
            peft = f" plus {virtual + prefix} prompt/prefix virtual tokens" if virtual + prefix \
                else ""
            raise ValueError(
                f"sequence length {T}{peft} exceeds max_position_embeddings="
                f"{cfg.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        prompt = None
        if virtual:
            prompt = self.soft_prompt
            attention_mask_BT, positions = extend_inputs(virtual, attention_mask_BT, positions)
            token_type_ids = jnp.concatenate(
                [jnp.zeros((B, virtual), token_type_ids.dtype), token_type_ids], axis=1)
        positions = positions + prefix  # the prefix occupies positions 0..P-1 (ftjax.nn.prefix)
        x = self.embeddings(input_ids, token_type_ids, positions, deterministic, prompt,
                            embedding_delta)
        mask = attention_mask(k_valid_BS=attention_mask_BT, q_len=T + virtual, k_len=T + virtual)
        # Reparameterized prefixes: every layer's (k, v), each (L, P, D), computed once per call.
        prefixes = self.prefix_encoder() if cfg.prefix is not None and cfg.prefix.projection \
            else None
        if cfg.scan_layers:
            x, _ = run_layers(self, x, prefixes, mask, deterministic)
        else:
            for i, block in enumerate(self.blocks):
                prefix_kv = None if prefixes is None else (prefixes[0][i], prefixes[1][i])
                x = block(x, mask, deterministic, prefix_kv)
        x = x[:, virtual:]  # the heads and the pooler see the real positions only
        pooled = jnp.tanh(self.pooler(x[:, 0], deterministic)) if cfg.add_pooler else None
        return x, pooled
