"""The task term of a task kind, and of a run config (its kind and label smoothing).

Terms that evaluate the task's own loss on another forward pass (adversarial inputs) build it
here, as the run builds its task term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ftjax.objectives.cross_entropy import TASK_TERMS, CrossEntropy, CrossEntropyConfig
from ftjax.objectives.span import SpanCrossEntropy
from ftjax.objectives.term import LossTerm
from ftjax.settings import ConfigError

# The class of each task term, by its name (TASK_TERMS' values).
TASK_TERM_CLASSES: Mapping[str, type[LossTerm]] = {
    "ce": CrossEntropy, "lm": CrossEntropy, "mlm": CrossEntropy, "span": SpanCrossEntropy}


def loss_for_task(task_kind: str, label_smoothing: float = 0.0) -> LossTerm:
    """The task term of a task kind ("classification", "causal_lm", "masked_lm",
    "extractive_qa"), named as TASK_TERMS says."""
    if task_kind not in TASK_TERMS:
        raise ValueError(f"no loss for task kind {task_kind!r}; expected one of "
                         f"{tuple(TASK_TERMS)}")
    name = TASK_TERMS[task_kind]
    return TASK_TERM_CLASSES[name](name, CrossEntropyConfig(label_smoothing=label_smoothing))


def run_task_loss(config: Any, who: str) -> LossTerm:
    """The task term a single-task run config makes (weight 1), with its label smoothing
    (`label_smoothing`, or a `losses` entry configuring the task term); without a config, the
    cross-entropy of labels per example or per token. `who` names the asking term in errors."""
    if config is None:
        return CrossEntropy("ce", CrossEntropyConfig())
    if config.get("tasks"):
        raise ConfigError(f"{who} needs one task's loss; a multi-task run has one per task "
                          f"(not supported)")
    kind = config.task.kind
    entry = (config.get("losses") or {}).get(TASK_TERMS.get(kind, ""))
    smoothing = entry.get("label_smoothing") if entry is not None else None
    return loss_for_task(kind, config.get("label_smoothing", 0.0) if smoothing is None
                         else smoothing)
