"""A task's loss in a multi-task run: any per-example term restricted to one task.

A multi-task batch holds rows of several tasks, each task's own features under
"<feature>@<task>" and a head per task (ftjax.data.multitask, ftjax.models.TaskHeads).
`TaskTerm(task, inner)` shows `inner` the batch as that task sees it (`task_view`: its labels
and masks under their plain names, zero on other tasks' rows) and its own head's logits, so
the term, its normalizer (this task's examples or target tokens in the global batch) and its
stats are the single-task ones. Each task's loss is thus the mean over its own rows, and the
step minimizes the weighted sum over tasks; a task's head gets no gradient from other tasks'
rows, whose masks are zero.
"""

from __future__ import annotations

import dataclasses

import jax

from ftjax.data.multitask import task_view
from ftjax.objectives.term import LossTerm, TermContext, TermValue


class TaskTerm(LossTerm):
    """`inner` on task `task`'s rows and head; named after the task (loss/<task>)."""

    per_example = True

    def __init__(self, task: str, inner: LossTerm):
        if not inner.per_example:
            raise ValueError(f"TaskTerm restricts a per-example term to a task's rows; "
                             f"{inner.name!r} is a per-step term")
        super().__init__(task, inner.config)
        self.task, self.inner = task, inner
        self.Config = inner.Config
        self.evaluated = inner.evaluated

    def __repr__(self) -> str:
        return f"TaskTerm({self.task!r}, {self.inner!r})"

    def normalizer(self, batch: dict) -> jax.Array:
        return self.inner.normalizer(task_view(batch, self.task))

    def __call__(self, ctx: TermContext) -> TermValue:
        output = ctx.output.replace(logits=ctx.output.logits[self.task])
        return self.inner(dataclasses.replace(ctx, batch=task_view(ctx.batch, self.task),
                                              output=output))


__all__ = ["TaskTerm"]
