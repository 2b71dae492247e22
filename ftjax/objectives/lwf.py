"""Learning without Forgetting (Li & Hoiem 2017): while a continual stage trains a new task,
the outputs of the earlier tasks' heads on the new task's data are kept near those of the model
the stage started from,

    sum over rows and earlier tasks t of  T^2 KL(softmax(z_t^old / T) || softmax(z_t / T)),

the old model (the teacher: the previous stage's workdir) run without gradient in the same
jitted step. No earlier data is needed. A multi-task model names the earlier tasks (`tasks`);
a model with one shared head (a language model over domains in sequence) keeps its whole output
distribution, per target token.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ftjax.objectives.distill import (
    KDConfig,
    TeacherTerm,
    check_same_outputs,
    kd_divergence,
)
from ftjax.objectives.term import TermContext, TermValue
from ftjax.settings import ConfigError, setting


@dataclasses.dataclass(frozen=True)
class LwFConfig(KDConfig):
    teacher_required = True

    tasks: tuple[str, ...] = setting(
        (), "multi-task runs: the earlier tasks whose heads' outputs on this stage's data are "
        "kept (their heads are frozen here); a single-head model keeps its one output")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "tasks", tuple(self.tasks))


def _row_weights(batch: dict) -> jnp.ndarray:
    """1 for each row holding real tokens (every row of a train batch)."""
    return (batch["attention_mask"].sum(-1) > 0).astype(jnp.float32)


class LwF(TeacherTerm):
    """KL from the teacher's outputs of `tasks` (or its one head) to the student's."""

    Config = LwFConfig

    def check(self, teacher, student) -> None:
        if not student.task_heads:
            if self.config.tasks:
                raise ConfigError(f"losses.{self.name}.tasks: a single-head model has no "
                                  f"tasks to name")
            check_same_outputs(teacher, student, self.config.teacher)
            return
        if not self.config.tasks:
            raise ConfigError(f"losses.{self.name}.tasks: name the earlier tasks whose outputs "
                              f"are kept (the student has heads {[n for n, _ in student.task_heads]})")
        heads = {"teacher": dict(teacher.task_heads), "student": dict(student.task_heads)}
        for task in self.config.tasks:
            for who, known in heads.items():
                if task not in known:
                    raise ConfigError(f"losses.{self.name}.tasks: the {who} has no head "
                                      f"{task!r} (it has {sorted(known)})")
            if heads["teacher"][task].num_labels != heads["student"][task].num_labels:
                raise ConfigError(f"losses.{self.name}: the heads of {task!r} differ in size")

    def normalizer(self, batch: dict) -> jnp.ndarray:
        """Rows (one distribution per earlier task), or target tokens (a language model)."""
        if batch.get("labels") is not None and batch["labels"].ndim == 2:
            return batch["loss_mask"].sum(-1).astype(jnp.float32)
        return _row_weights(batch)

    def __call__(self, ctx: TermContext) -> TermValue:
        teacher, student = self.teacher_forward(ctx)[0].logits, ctx.output.logits
        temperature = self.config.temperature
        if isinstance(student, dict):
            per_row = sum(kd_divergence(student[t], teacher[t], temperature)
                          for t in self.config.tasks) * _row_weights(ctx.batch)
        elif student.ndim == 3:  # per token, where the task's loss is
            per_row = jnp.sum(kd_divergence(student, teacher, temperature)
                              * ctx.batch["loss_mask"].astype(jnp.float32), axis=-1)
        else:
            per_row = kd_divergence(student, teacher, temperature) * _row_weights(ctx.batch)
        return TermValue(total=jnp.sum(per_row), per_row=per_row)


__all__ = ["LwF", "LwFConfig"]
