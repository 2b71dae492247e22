"""Prompt tuning (Lester et al., 2021): P trainable embeddings prepended to the input tokens.

    x = [soft_prompt (P, D); embed(input_ids) (T, D)]  ->  backbone  ->  hidden[:, P:]

The virtual tokens take positions 0..P-1 and the real tokens P, P+1, ... (token type 0 in
BERT, whose position and type embeddings are added to both), as if P real tokens with these
embeddings preceded the input. The backbone strips the P virtual positions from its output, so
CLS pooling, token heads and LM logits line up with `input_ids` exactly as without a prompt.

Decoder: the prompt precedes the real tokens causally and is visible to every packed segment.
With a KV cache, the call that starts a sequence (generation's prefill: `with_prompt=True`)
writes the prompt's P slots first; later calls see them in the cache (ftjax.generate makes the
cache P slots longer).

Leaf: `backbone/soft_prompt` (P, D), axes ("prefix", "embed"). Init (`add_peft`, which sees the
pretrained embedding table): the embeddings of P vocabulary tokens, either a seeded uniform
sample of the vocabulary ("vocab", Lester et al.'s sampled-vocabulary init) or the tokens of
`init_text` repeated to fill P ("text"), or Gaussian noise at the scale of the table ("random").
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from ftjax.nn.prefix import PREFIX_AXIS
from ftjax.settings import from_config, setting

PROMPT_LEAVES = r"backbone/soft_prompt"
PromptInit = Literal["vocab", "text", "random"]


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """Prompt-tuning settings (the `prompt` config block)."""

    num_tokens: int = setting(20, "P, the soft prompt's length")
    init: PromptInit = setting(
        "vocab", "vocab (embeddings of P tokens sampled from the vocabulary with the run's "
        "seed) | text (the tokens of init_text, repeated or cut to P) | random")
    init_text: str | None = setting(None, "the text for init='text', e.g. a task description")

    def __post_init__(self):
        if self.num_tokens < 1:
            raise ValueError(f"prompt num_tokens must be >= 1, got {self.num_tokens}")
        if self.init not in PromptInit.__args__:
            raise ValueError(f"unknown prompt init {self.init!r}; expected one of "
                             f"{PromptInit.__args__}")
        if (self.init == "text") != bool(self.init_text):
            raise ValueError("prompt init='text' needs init_text, and init_text needs "
                             f"init='text' (got init={self.init!r}, init_text={self.init_text!r})")

    @classmethod
    def from_config(cls, cfg: Any) -> "PromptConfig":
        """From a ConfigDict / mapping / PromptConfig / None; unknown keys are an error."""

        return from_config(cls, cfg, "prompt")


def soft_prompt_param(module: nn.Module, config: PromptConfig, hidden_size: int, param_dtype):
    """The backbone's `soft_prompt` leaf (P, D); random here, set from the vocabulary by
    `initial_prompt` when attached to a pretrained model."""
    return module.param(
        "soft_prompt",
        nn.with_logical_partitioning(nn.initializers.normal(0.02), (PREFIX_AXIS, "embed")),
        (config.num_tokens, hidden_size), param_dtype,
    )


def extend_inputs(num_tokens: int, attention_mask_BT, positions_BT):
    """(attention mask, positions) of [prompt; tokens]: the prompt always valid at positions
    0..P-1, the real tokens' positions shifted by P."""
    B, P = attention_mask_BT.shape[0], num_tokens
    positions = jnp.concatenate([
        jnp.broadcast_to(jnp.arange(P, dtype=positions_BT.dtype), (B, P)), positions_BT + P,
    ], axis=1)
    mask = jnp.concatenate([jnp.ones((B, P), attention_mask_BT.dtype), attention_mask_BT], axis=1)
    return mask, positions


def prepend_embeddings(prompt_PD, x_BTD):
    """[prompt; x] along the sequence axis, the prompt shared by every row."""
    B, _, D = x_BTD.shape
    prompt = jnp.broadcast_to(prompt_PD.astype(x_BTD.dtype)[None], (B, prompt_PD.shape[0], D))
    return jnp.concatenate([prompt, x_BTD], axis=1)


def initial_prompt(config: PromptConfig, table_VD, rng: jax.Array, tokenizer=None):
    """The soft prompt's starting value (P, D) from the pretrained embedding table."""
    P, V = config.num_tokens, table_VD.shape[0]
    if config.init == "random":
        # At the table's own scale: a virtual token starts as large as a real one.
        return jax.random.normal(rng, (P, table_VD.shape[1]), table_VD.dtype) * jnp.std(table_VD)
    if config.init == "vocab":
        ids = jax.random.randint(rng, (P,), 0, V)
    else:
        if tokenizer is None:
            raise ValueError("prompt init='text' needs the tokenizer to encode init_text")
        text_ids = tokenizer.encode(config.init_text, add_special_tokens=False)
        if not text_ids:
            raise ValueError(f"prompt init_text {config.init_text!r} encodes to no tokens")
        ids = jnp.asarray((text_ids * math.ceil(P / len(text_ids)))[:P], jnp.int32)
        if int(ids.max()) >= V:
            raise ValueError(f"prompt init_text encodes to ids beyond the model's vocabulary ({V})")
    return jnp.take(table_VD, ids, axis=0)
