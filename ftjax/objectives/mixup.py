"""Mixup of sentence representations (`mixup`; Zhang et al. 2018, applied to the pooled
representation of text classifiers as in Sun et al. 2020, "Mixup-Transformer").

Each row i of the micro-batch is paired with a random row j; their pooled representations
(the head's own pooling of the step's shared forward pass) are mixed,
h = lam * h_i + (1 - lam) * h_j with lam ~ Beta(alpha, alpha) per row, the head classifies h,
and the term is lam * CE(y_i) + (1 - lam) * CE(y_j). Gradients reach the backbone through both
representations. Rows paired with a filler row weigh nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ftjax.models.heads import pool
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import ConfigError, setting

POOLINGS = ("cls", "mean", "last")


@dataclasses.dataclass(frozen=True)
class MixupConfig(TermConfig):
    alpha: float = setting(0.4, "lam ~ Beta(alpha, alpha) per row (small: lam near 0 or 1)")

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha}")


def _head(module, hidden_BTD, mask_BT, deterministic):
    """The model's classification head alone, on given representations."""
    return module.head(hidden_BTD, mask_BT, None, deterministic)


class Mixup(LossTerm):
    Config = MixupConfig

    def constants(self, setup: TermSetup) -> Any:
        model = setup.model
        if model is None:
            return None
        head = model.head_config
        if model.task_heads or model.adapter_slots is not None or head.kind != "sequence":
            raise ConfigError(f"loss term {self.name!r} (mixup) mixes the pooled "
                              f"representations of one sequence classification head")
        if head.pooling not in POOLINGS:
            raise ConfigError(f"loss term {self.name!r} (mixup): pooling {head.pooling!r} "
                              f"happens inside the backbone; use one of {POOLINGS}")
        return None

    def __call__(self, ctx: TermContext) -> TermValue:
        batch, hidden = ctx.batch, ctx.output.hidden
        mask = batch["attention_mask"]
        pooled = pool(hidden, mask, ctx.model.head_config.pooling).astype(jnp.float32)
        rows = pooled.shape[0]
        k_lam, k_pair, k_drop = jax.random.split(ctx.rng, 3)
        lam = jax.random.beta(k_lam, self.config.alpha, self.config.alpha, (rows,))
        partner = jax.random.permutation(k_pair, rows)
        mixed = lam[:, None] * pooled + (1 - lam[:, None]) * pooled[partner]
        rngs = {} if ctx.deterministic else {"dropout": k_drop}
        logits = ctx.model.apply({"params": ctx.params}, mixed[:, None, :].astype(hidden.dtype),
                                 jnp.ones((rows, 1), mask.dtype), ctx.deterministic,
                                 method=_head, rngs=rngs).astype(jnp.float32)
        labels = batch["labels"]
        ce = optax.softmax_cross_entropy_with_integer_labels
        weight = batch["example_mask"] * batch["example_mask"][partner]
        per_row = (lam * ce(logits, labels) + (1 - lam) * ce(logits, labels[partner])) * weight
        return TermValue(total=jnp.sum(per_row), per_row=per_row)
