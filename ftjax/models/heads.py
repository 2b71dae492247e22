"""Task heads. Each maps backbone hidden states (B, T, D) to the logits a task needs.

Heads own their parameters under the top-level `head/` subtree, so "discard the pretraining head
and put a new one" is replacing that subtree (ftjax.models.model.replace_head), and trainability
rules such as "only head/ trains" (a linear probe) need no knowledge of the backbone.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ftjax.models.config import HeadConfig
from ftjax.nn.layers import Dense, LayerNorm, activation


def pool(hidden_BTD, attention_mask_BT, pooling: str, pooled_BD=None):
    """Summarize each sequence into one vector."""
    if pooling == "cls":
        return hidden_BTD[:, 0]
    if pooling == "mean":
        # Mask-weighted: padding must not dilute the mean.
        w = attention_mask_BT.astype(hidden_BTD.dtype)[..., None]
        return (hidden_BTD * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    if pooling == "last":
        # Index of the last real token; works for left and right padding alike.
        T = attention_mask_BT.shape[1]
        last = T - 1 - jnp.argmax(attention_mask_BT[:, ::-1], axis=1)
        return jnp.take_along_axis(hidden_BTD, last[:, None, None], axis=1)[:, 0]
    if pooling == "pooler":
        if pooled_BD is None:
            raise ValueError("pooling='pooler' needs a backbone with a pooler (BERT add_pooler)")
        return pooled_BD
    raise ValueError(f"unknown pooling {pooling!r}")


class SequenceClassificationHead(nn.Module):
    config: HeadConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_BTD, attention_mask_BT, pooled_BD, deterministic):
        x = pool(hidden_BTD, attention_mask_BT, self.config.pooling, pooled_BD)
        x = nn.Dropout(self.config.dropout)(x, deterministic=deterministic)
        return Dense(self.config.num_labels, ("embed", "labels"), use_bias=True, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="classifier")(x)


class TokenClassificationHead(nn.Module):
    config: HeadConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_BTD, deterministic):
        x = nn.Dropout(self.config.dropout)(hidden_BTD, deterministic=deterministic)
        return Dense(self.config.num_labels, ("embed", "labels"), use_bias=True, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="classifier")(x)


class SpanHead(nn.Module):
    """Extractive QA: start and end logits per token, (B, T, 2)."""

    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_BTD):
        return Dense(2, ("embed", "labels"), use_bias=True, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="qa_outputs")(hidden_BTD)


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense + GELU + LayerNorm, then the tied word-embedding decoder + bias."""

    hidden_act: str = "gelu"
    eps: float = 1e-12
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_BTD, attend):
        D = hidden_BTD.shape[-1]
        x = Dense(D, ("embed", "embed_out"), use_bias=True, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="transform")(hidden_BTD)
        x = LayerNorm(self.eps, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(
            activation(self.hidden_act)(x)
        )
        logits = attend(x)
        bias = self.param(
            "bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
            (logits.shape[-1],), self.param_dtype,
        )
        return logits + bias.astype(logits.dtype)



CLASSIFIER_KINDS = ("sequence", "verbalizer", "token", "span")
TASK_HEAD_KINDS = ("sequence", "token", "span")


def classifier_head(config: HeadConfig, *, dtype, param_dtype, name: str | None = None):
    """The module of a classifier head kind (CLASSIFIER_KINDS): a verbalizer is a sequence head
    whose initial values differ (ftjax.models.verbalizer_from_lm)."""
    dtypes = dict(dtype=dtype, param_dtype=param_dtype, name=name)
    if config.kind in ("sequence", "verbalizer"):
        return SequenceClassificationHead(config, **dtypes)
    if config.kind == "token":
        return TokenClassificationHead(config, **dtypes)
    if config.kind == "span":
        return SpanHead(**dtypes)
    raise ValueError(f"{config.kind!r} is not a classifier head kind {CLASSIFIER_KINDS}")


def classifier_logits(kind: str, head, hidden_BTD, attention_mask_BT, pooled_BD, deterministic):
    """A classifier head's logits: each kind reads what it needs of the backbone's outputs."""
    if kind in ("sequence", "verbalizer"):
        return head(hidden_BTD, attention_mask_BT, pooled_BD, deterministic)
    if kind == "token":
        return head(hidden_BTD, deterministic)
    return head(hidden_BTD)  # span


class TaskHeads(nn.Module):
    """One head per task over the shared backbone (multi-task fine-tuning): head `name` owns
    the subtree head/<name>/, so each task's head is a rule target of its own and the backbone
    below is shared. Returns {name: logits}, every head applied to every row; the loss terms
    weigh each row by its own task (ftjax.objectives.task_view), so a head's gradient comes
    from its task's rows only."""

    heads: tuple[tuple[str, HeadConfig], ...]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden_BTD, attention_mask_BT, pooled_BD, deterministic):
        out = {}
        for name, config in self.heads:
            if config.kind not in TASK_HEAD_KINDS:
                raise ValueError(f"task head {name!r}: kind must be one of {TASK_HEAD_KINDS}, "
                                 f"got {config.kind!r}")
            head = classifier_head(config, dtype=self.dtype, param_dtype=self.param_dtype,
                                   name=name)
            out[name] = classifier_logits(config.kind, head, hidden_BTD, attention_mask_BT,
                                          pooled_BD, deterministic)
        return out
