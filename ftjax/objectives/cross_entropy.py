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


def _integer_forward(logits, labels):
    """(losses, correct, log-sum-exp) per position, in float32: one pass over the logits for
    the loss and the argmax test together."""
    x = logits.astype(jnp.float32)
    top = jnp.max(x, axis=-1, keepdims=True)
    # The sum of exponentials as a product with a vector of ones: on XLA CPU a matmul runs
    # about twice as fast as the row reduction over a 49k-token vocabulary (an LM's eval
    # step spent a third of its time past the forward pass in this loss); HIGHEST keeps it
    # exact on accelerators, whose default float32 matmul rounds to bf16 / tf32.
    total = jnp.dot(jnp.exp(x - top), jnp.ones(x.shape[-1], jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)
    lse = top[..., 0] + jnp.log(total)
    picked = jnp.take_along_axis(x, labels[..., None], axis=-1)[..., 0]
    # Correct as argmax is: the label holds the maximum and no earlier class ties it.
    classes = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    tied_before = jnp.any((x == top) & (classes < labels[..., None]), axis=-1)
    correct = (picked == top[..., 0]) & ~tied_before
    return lse - picked, correct.astype(jnp.float32), lse


@jax.custom_vjp
def integer_cross_entropy(logits, labels):
    """(-log softmax(logits)[label], 1.0 where argmax(logits) == label) per position.

    The gradient is written out (softmax - one-hot, one element-wise pass) rather than
    derived through the max, the matmul and the gather of the forward pass."""
    losses, correct, _ = _integer_forward(logits, labels)
    return losses, correct


def _integer_fwd(logits, labels):
    losses, correct, lse = _integer_forward(logits, labels)
    return (losses, correct), (logits, labels, lse)


def _integer_bwd(residuals, cotangents):
    logits, labels, lse = residuals
    classes = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    softmax = jnp.exp(logits.astype(jnp.float32) - lse[..., None])
    grad = (softmax - (classes == labels[..., None])) * cotangents[0][..., None]
    return grad.astype(logits.dtype), None  # labels are integers: no cotangent


integer_cross_entropy.defvjp(_integer_fwd, _integer_bwd)


def weighted_cross_entropy(logits, labels, weights, label_smoothing: float = 0.0):
    """(per-position losses x weights, correct predictions x weights), shaped like `labels`."""
    weights = weights.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                      label_smoothing)
        losses = optax.softmax_cross_entropy(logits, targets)
        correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    else:
        losses, correct = integer_cross_entropy(logits, labels)
    return losses * weights, correct * weights


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

