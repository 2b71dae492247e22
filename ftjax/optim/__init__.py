"""Trainability and optimization: which leaves train, how (optax chain), and what it costs.

    spec = [("head/.*", TRAIN), ("backbone/layers_(?:4|5)/.*", Rule(lr=0.5)), (".*", FROZEN)]
    resolved = resolve(spec, params)
    trainable, frozen = partition(params, trainable_mask(resolved))
    tx = make_optimizer(cfg.optimizer, resolved, trainable, total_steps)
"""

from ftjax.optim.config import DEFAULT_NO_DECAY, OptimizerConfig
from ftjax.optim.optimizer import (
    effective_lrs,
    make_optimizer,
    optimizer_step,
    unfreeze_steps,
)
from ftjax.optim.schedules import learning_rate_fn
from ftjax.optim.trainability import (
    FROZEN,
    TRAIN,
    Rule,
    Spec,
    StackedRule,
    UnmatchedParamsError,
    combine,
    format_report,
    partition,
    report,
    resolve,
    trainable_mask,
)

__all__ = [
    "DEFAULT_NO_DECAY", "FROZEN", "OptimizerConfig", "Rule", "Spec", "StackedRule", "TRAIN",
    "UnmatchedParamsError", "combine", "effective_lrs", "format_report",
    "learning_rate_fn", "make_optimizer", "optimizer_step",
    "partition", "report", "resolve", "trainable_mask", "unfreeze_steps",
]
