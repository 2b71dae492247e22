"""BERT encoder: learned positions and token types, post-LayerNorm blocks, GELU MLP, pooler.

Parameter paths follow Hugging Face's BertModel closely (`embeddings/word_embeddings`,
`layers_N/attention/query`, ..., `pooler/dense`) so checkpoint import is a renaming.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.models.config import BertConfig
from ftjax.models.layers import Dense, Embed, LayerNorm, activation, attention_mask
from ftjax.models.layers import dot_product_attention
from ftjax.models.remat import remat_policy


def _dense(cfg: BertConfig, features, axes, name):
    return Dense(
        features, axes, use_bias=True, dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype,
        lora=cfg.lora, name=name,
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

    def __call__(self, input_ids, token_type_ids, positions, deterministic):
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings(positions)
        x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x), deterministic=deterministic)

    def attend(self, x_BTD):
        return self.word_embeddings.attend(x_BTD)


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, mask_B1TS, deterministic):
        cfg = self.config
        B, T, D = x_BTD.shape
        N, H = cfg.num_heads, cfg.head_size
        q = _dense(cfg, D, ("embed", "heads"), "query")(x_BTD, deterministic).reshape(B, T, N, H)
        k = _dense(cfg, D, ("embed", "heads"), "key")(x_BTD, deterministic).reshape(B, T, N, H)
        v = _dense(cfg, D, ("embed", "heads"), "value")(x_BTD, deterministic).reshape(B, T, N, H)
        rate = 0.0 if deterministic else cfg.attention_dropout
        out = dot_product_attention(
            q, k, v, mask_B1TS, implementation=cfg.attention_impl, dropout_rate=rate,
            dropout_rng=self.make_rng("dropout") if rate else None,
        )
        return _dense(cfg, D, ("heads", "embed"), "output")(out.reshape(B, T, D), deterministic)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, mask_B1TS, deterministic):
        cfg = self.config
        dropout = lambda y: nn.Dropout(cfg.hidden_dropout)(  # noqa: E731
            y, deterministic=deterministic
        )
        attn = BertAttention(cfg, name="attention")(x_BTD, mask_B1TS, deterministic)
        x_BTD = _norm(cfg, "attention_norm")(x_BTD + dropout(attn))
        h = _dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "intermediate")(x_BTD,
                                                                                  deterministic)
        h = _dense(cfg, cfg.hidden_size, ("mlp", "embed"), "output")(activation(cfg.hidden_act)(h),
                                                                     deterministic)
        return _norm(cfg, "output_norm")(x_BTD + dropout(h))


class _ScannedLayer(nn.Module):
    """BertLayer in lax.scan's (carry, x) -> (carry, y) form."""

    config: BertConfig

    @nn.compact
    def __call__(self, x_BTD, _, mask_B1TS, deterministic):
        return BertLayer(self.config, name="block")(x_BTD, mask_B1TS, deterministic), None


class BertModel(nn.Module):
    """Embeddings, encoder layers and (optionally) the pooler.

    Returns (hidden states (B, T, D), pooled (B, D) or None).
    """

    config: BertConfig

    def setup(self):
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        policy = remat_policy(cfg.remat)
        if cfg.scan_layers:
            layer = _ScannedLayer
            if policy is not None:
                # argnums count self: (self, x, _, mask, deterministic)
                layer = nn.remat(layer, policy=policy, prevent_cse=False, static_argnums=(4,))
            self.layers = nn.scan(
                layer,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg)
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

    def __call__(
        self, input_ids, *, positions, attention_mask_BT, token_type_ids=None, deterministic=True,
    ):
        cfg = self.config
        B, T = input_ids.shape
        if T > cfg.max_position_embeddings:
            raise ValueError(
                f"sequence length {T} exceeds max_position_embeddings={cfg.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, positions, deterministic)
        mask = attention_mask(k_valid_BS=attention_mask_BT, q_len=T, k_len=T)
        if cfg.scan_layers:
            x, _ = self.layers(x, None, mask, deterministic)
        else:
            for block in self.blocks:
                x = block(x, mask, deterministic)
        pooled = jnp.tanh(self.pooler(x[:, 0], deterministic)) if cfg.add_pooler else None
        return x, pooled
