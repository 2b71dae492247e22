"""The loss terms of a run, from its config: the task's cross-entropy, the `regularizer`
block's penalties and the `losses` block's entries (ftjax.objectives)."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from ftjax.objectives import (
    TASK_TERMS,
    CrossEntropyConfig,
    LossTerm,
    RegularizerConfig,
    TaskTerm,
    make_term,
)
from ftjax.settings import ConfigError


def terms_from_config(cfg: ml_collections.ConfigDict, run,
                      extra: Sequence[LossTerm] = ()) -> list[LossTerm]:
    """The terms in order: the task term first (its stats are the run's `accuracy`), then the
    penalties, then every other `losses` entry, then `extra` (terms passed from Python).

    `run` is the typed RunConfig of `cfg` (ftjax.train.config.typed). A `losses` entry named
    like the task term (ce / lm / mlm) or a penalty (l1 / l2 / l2_sp) configures that term; the
    same term may not also be set by `label_smoothing` or the `regularizer` block.
    """
    entries = dict(run.losses)
    if run.tasks:
        tasks = task_terms(run)
        clash = sorted({TASK_TERMS[e.task.kind] for e in run.tasks.values()} & set(entries))
        if clash:
            raise ConfigError(f"losses {clash} would configure a task term; a multi-task run's "
                              f"task losses are set per task (tasks.<name>.weight, "
                              f"label_smoothing)")
    else:
        task_name = TASK_TERMS[run.task.kind]
        if task_name in entries and run.label_smoothing:
            raise ConfigError(f"label_smoothing and losses.{task_name} both configure the "
                              f"task term; set losses.{task_name}.label_smoothing only")
        tasks = [make_term(task_name, entries.pop(task_name, None) or CrossEntropyConfig(
            label_smoothing=run.label_smoothing))]
    penalties = RegularizerConfig.from_config(cfg.regularizer).terms()
    clash = [t.name for t in penalties if t.name in entries]
    if clash:
        raise ConfigError(f"{clash} set both in the regularizer block and in losses; use one")
    terms = [*tasks, *penalties]
    terms += [make_term(name, config) for name, config in entries.items()]
    terms += list(extra)
    names = [t.name for t in terms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"loss terms named twice: {duplicates}")
    return terms


def task_terms(run) -> list[LossTerm]:
    """A multi-task run's task terms, one per task in the tasks block's order: the task kind's
    loss on that task's rows and head (TaskTerm), weighted by tasks.<name>.weight."""
    return [TaskTerm(name, make_term(TASK_TERMS[entry.task.kind], CrossEntropyConfig(
                weight=entry.weight, label_smoothing=run.label_smoothing)))
            for name, entry in run.tasks.items()]
