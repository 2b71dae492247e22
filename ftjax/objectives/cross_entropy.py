"""The task losses: cross-entropy on class labels (`ce`), next tokens (`lm`) or masked tokens
(`mlm`), with optional label smoothing.

Each returns the SUM over the examples or target tokens its mask selects; the step divides by
the mask's total over the whole global batch (ftjax.objectives.term), so micro-batches of
different sizes weigh every token the same. Stats: `accuracy` (the count of correct argmax
predictions, normalized like the loss).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermValue
from ftjax.settings import setting


def _cross_entropy(logits, labels, label_smoothing: float):
    num_classes = logits.shape[-1]
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_cross_entropy(logits, labels, weights, label_smoothing: float = 0.0):
    """(per-position losses x weights, correct predictions x weights), shaped like `labels`."""
    weights = weights.astype(jnp.float32)
    per_item = _cross_entropy(logits, labels, label_smoothing) * weights
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights
    return per_item, correct


@dataclasses.dataclass(frozen=True)
class CrossEntropyConfig(TermConfig):
    label_smoothing: float = setting(0.0, "mix the one-hot targets with the uniform "
                                     "distribution by this much")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")


class CrossEntropy(LossTerm):
    """Cross-entropy of the shared forward pass's logits against `batch["labels"]`.

    One label per example (logits (B, C), rows weighted by `example_mask`) or per token
    (logits (B, T, V), positions weighted by `loss_mask`: causal LM targets already shifted,
    masked LM only at masked positions).
    """

    Config = CrossEntropyConfig
    evaluated = True

    def __call__(self, ctx: TermContext) -> TermValue:
        batch, logits = ctx.batch, ctx.output.logits
        per_token = batch["labels"].ndim == 2
        weights = batch["loss_mask"] if per_token else batch["example_mask"]
        losses, correct = weighted_cross_entropy(logits, batch["labels"], weights,
                                                 self.config.label_smoothing)
        rows = jnp.sum(losses, axis=-1) if per_token else losses
        return TermValue(total=jnp.sum(losses), stats={"accuracy": jnp.sum(correct)},
                         per_row=rows)


# The task term of each task kind, by the name its metrics carry (loss/ce, loss/lm, loss/mlm).
TASK_TERMS = {"classification": "ce", "causal_lm": "lm", "masked_lm": "mlm", "chat": "lm",
              "extractive_qa": "span", "token_classification": "ce"}

