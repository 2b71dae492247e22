"""Task losses as SUMS with their weights, so any batching normalizes the same way.

Every loss returns (loss_sum, weight, stats) where weight is the number of real examples or
tokens it covers and stats are sums too (e.g. correct predictions). The train step divides by the
total weight of the whole (accumulated, global) batch once; dividing per micro-batch would weigh
tokens of short micro-batches more than others.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, dict], tuple[jax.Array, jax.Array, dict]]


def _cross_entropy(logits, labels, label_smoothing: float):
    num_classes = logits.shape[-1]
    if label_smoothing:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        return optax.softmax_cross_entropy(logits, targets)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_cross_entropy(logits, labels, weights, label_smoothing: float = 0.0):
    """(loss sum, weight sum, {"correct": sum}) over whatever positions `weights` selects."""
    weights = weights.astype(jnp.float32)
    per_item = _cross_entropy(logits, labels, label_smoothing)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return (
        jnp.sum(per_item * weights),
        jnp.sum(weights),
        {"correct": jnp.sum(correct * weights)},
    )


def classification_loss(logits_BC, batch, label_smoothing: float = 0.0):
    """One label per example; filler rows (example_mask 0) count for nothing."""
    return weighted_cross_entropy(logits_BC, batch["labels"], batch["example_mask"],
                                  label_smoothing)


def token_loss(logits_BTV, batch, label_smoothing: float = 0.0):
    """Per-token targets (causal LM already shifted, masked LM at masked positions)."""
    return weighted_cross_entropy(logits_BTV, batch["labels"], batch["loss_mask"],
                                  label_smoothing)


def loss_for_task(task_kind: str, label_smoothing: float = 0.0) -> LossFn:
    if task_kind == "classification":
        return lambda logits, batch: classification_loss(logits, batch, label_smoothing)
    if task_kind in ("causal_lm", "masked_lm"):
        return lambda logits, batch: token_loss(logits, batch, label_smoothing)
    raise ValueError(f"no loss for task kind {task_kind!r}")
