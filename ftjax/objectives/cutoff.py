"""Span cutoff (`cutoff`; Shen et al. 2020, "A Simple but Tough-to-Beat Data Augmentation
Approach for Natural Language Understanding and Generation").

Each row gets an augmented view inside the step: one contiguous span of about `rate` of its
real tokens (never the first and last, a classifier's special tokens) is erased from the
attention mask, and the task loss is taken on that view; `consistency` adds the
Jensen-Shannon divergence between the predictions on the row and on its view, as the paper's
consistency term. A span is drawn per row from the term's key of the step, so a resumed run
draws the same spans.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ftjax.objectives.cross_entropy import CrossEntropy, CrossEntropyConfig
from ftjax.objectives.task_loss import run_task_loss
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import ConfigError, setting


@dataclasses.dataclass(frozen=True)
class CutoffConfig(TermConfig):
    rate: float = setting(0.1, "the share of a row's real tokens (first and last excluded) "
                          "erased as one span, at least one token")
    consistency: float = setting(0.0, "weight of the Jensen-Shannon divergence between the "
                                 "predictions on the row and on its cut view")

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.rate) and 0 < self.rate < 1):
            raise ValueError(f"rate must lie in (0, 1), got {self.rate}")
        if not (math.isfinite(self.consistency) and self.consistency >= 0):
            raise ValueError(f"consistency must be a finite number >= 0, got "
                             f"{self.consistency}")


def cutoff_mask(attention_mask: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """The attention mask with one span of each row's inner real tokens erased (rows with
    fewer than three real tokens keep theirs)."""
    real = jnp.sum(attention_mask, axis=-1)
    inner = real - 2
    length = jnp.maximum(1, jnp.round(rate * inner)).astype(jnp.int32)
    room = jnp.maximum(inner - length + 1, 1)
    start = 1 + jnp.floor(jax.random.uniform(rng, real.shape) * room).astype(jnp.int32)
    pos = jnp.arange(attention_mask.shape[-1])
    cut = (pos >= start[:, None]) & (pos < (start + length)[:, None]) & (inner >= 1)[:, None]
    return attention_mask * (~cut).astype(attention_mask.dtype)


def jensen_shannon(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), -1)
    log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), -1)
    log_m = jnp.logaddexp(log_p, log_q) - jnp.log(2.0)
    kl = lambda a: jnp.sum(jnp.exp(a) * (a - log_m), -1)  # noqa: E731
    # >= 0; rounding can take nearly equal distributions a hair below it.
    return jnp.maximum(0.5 * (kl(log_p) + kl(log_q)), 0.0)


class Cutoff(LossTerm):
    Config = CutoffConfig

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        self.task = CrossEntropy("ce", CrossEntropyConfig())

    def constants(self, setup: TermSetup) -> Any:
        config = setup.config
        if config is not None and config.task.kind != "classification":
            raise ConfigError(f"loss term {self.name!r} (cutoff) erases tokens of classified "
                              f"rows; task {config.task.kind!r} has targets per token")
        self.task = run_task_loss(config, f"loss term {self.name!r}")
        return None

    def __call__(self, ctx: TermContext) -> TermValue:
        batch = ctx.batch
        k_span, k_drop = jax.random.split(ctx.rng)
        view = {**batch, "attention_mask": cutoff_mask(batch["attention_mask"],
                                                       self.config.rate, k_span)}
        out = ctx.forward(view, rng=k_drop)
        value = self.task(dataclasses.replace(ctx, batch=view, output=out))
        per_row, stats = value.per_row, {"view_loss": value.total}
        if self.config.consistency:
            js = jensen_shannon(ctx.output.logits, out.logits) * batch["example_mask"]
            per_row = per_row + self.config.consistency * js
            stats["consistency"] = jnp.sum(js)
        return TermValue(total=jnp.sum(per_row), per_row=per_row, stats=stats)
