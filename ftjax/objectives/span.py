"""The extractive-QA task loss (`span`): the mean of the start and end cross-entropies.

Span logits are (B, T, 2) (head.kind="span"): channel 0 scores each token as the answer's
start, channel 1 as its end; `batch["start_positions"]` / `["end_positions"]` are the gold
tokens (0, the first token, when the window holds no answer). Rows are weighted by
`example_mask`. Stat `accuracy`: rows whose argmax start and end are both right.
"""

from __future__ import annotations

import jax.numpy as jnp

from ftjax.objectives.cross_entropy import CrossEntropy, weighted_cross_entropy
from ftjax.objectives.term import TermContext, TermValue


class SpanCrossEntropy(CrossEntropy):
    """(CE(start) + CE(end)) / 2 per row; label_smoothing as for `ce`."""

    def __call__(self, ctx: TermContext) -> TermValue:
        batch, logits = ctx.batch, ctx.output.logits
        weights = batch["example_mask"]
        smoothing = self.config.label_smoothing
        start, start_ok = weighted_cross_entropy(logits[..., 0], batch["start_positions"],
                                                 weights, smoothing)
        end, end_ok = weighted_cross_entropy(logits[..., 1], batch["end_positions"], weights,
                                             smoothing)
        rows = 0.5 * (start + end)
        return TermValue(total=jnp.sum(rows), stats={"accuracy": jnp.sum(start_ok * end_ok)},
                         per_row=rows)
