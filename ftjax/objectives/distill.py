"""Logit knowledge distillation (Hinton et al. 2015): the `kd` term.

    kd = T^2 * KL( softmax(teacher / T) || softmax(student / T) )

per example (class logits, rows weighted by `example_mask`) or per target token (LM logits,
positions weighted by `loss_mask`: the task loss's own mask), summed like the task loss, which
it sits beside with its own (schedulable) weight. The T^2 keeps its gradient's scale
independent of T.

The teacher is the term's constant: its parameters are loaded at set-up (`teacher` names a
pretrained model, an adapter directory or a finished run's workdir, through
TermSetup.load_model), placed on the run's devices, never trained, never in the optimizer and
never saved (rebuilt identically from `teacher`). Its forward pass runs inside the same jitted
step on the same batch, without gradient and without dropout, in `teacher_dtype`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ftjax.objectives.inputs import model_inputs
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import ConfigError, setting


def kd_divergence(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) over the last axis, in float32."""
    s = student_logits.astype(jnp.float32) / temperature
    t = teacher_logits.astype(jnp.float32) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)),
                 axis=-1)
    return temperature ** 2 * kl


@dataclasses.dataclass(frozen=True)
class KDConfig(TermConfig):
    teacher: str = setting("", "the teacher: a pretrained model (asset name or checkpoint "
                           "path), an ftjax adapter directory, or a finished run's workdir")
    temperature: float = setting(2.0, "T: both distributions are softened by it; the KL is "
                                 "scaled by T^2")
    teacher_dtype: str = setting("float32", "the teacher's parameter and compute dtype",
                                 choices=("float32", "bfloat16"))

    def __post_init__(self):
        super().__post_init__()
        if not self.teacher:
            raise ValueError("a kd term needs its teacher (losses.<name>.teacher)")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class LogitKD(LossTerm):
    Config = KDConfig

    def __init__(self, name: str, config: KDConfig | None = None):
        super().__init__(name, config)
        self.teacher = None  # the teacher's Model, set with its parameters at set-up

    def constants(self, setup: TermSetup):
        if setup.load_model is None:
            raise ConfigError(f"loss term {self.name!r}: this set-up cannot load a teacher")
        model, params = setup.load_model(self.config.teacher, self.config.teacher_dtype)
        student = setup.model
        if student is not None:
            _check_same_outputs(model, student, self.config.teacher)
        self.teacher = model
        return setup.place_replicated(params)

    def __call__(self, ctx: TermContext) -> TermValue:
        if self.teacher is None:
            raise ValueError(f"loss term {self.name!r} has no teacher: its constants were not "
                             f"built (create_train_state does that)")
        batch, student = ctx.batch, ctx.output.logits
        if isinstance(student, dict):
            raise ValueError("kd distils one head; a multi-task student has one per task")
        teacher = self.teacher.apply(
            {"params": jax.lax.stop_gradient(ctx.constants)}, batch["input_ids"],
            **model_inputs(batch, self.teacher), deterministic=True).logits
        per_item = kd_divergence(student, jax.lax.stop_gradient(teacher),
                                 self.config.temperature)
        weights = (batch["loss_mask"] if student.ndim == 3 else batch["example_mask"])
        per_item = per_item * weights.astype(jnp.float32)
        per_row = per_item.sum(axis=-1) if per_item.ndim == 2 else per_item
        return TermValue(total=per_row.sum(), per_row=per_row)


def _check_same_outputs(teacher, student, where: str) -> None:
    """Logit KD compares distributions over one label or vocabulary space."""
    def width(model):
        head = model.head_config
        return model.config.vocab_size if head.kind in ("lm", "mlm") else head.num_labels

    if teacher.head_config.kind != student.head_config.kind or width(teacher) != width(student):
        raise ConfigError(
            f"teacher {where}: a {teacher.head_config.kind!r} head over {width(teacher)} "
            f"outputs, the student a {student.head_config.kind!r} head over {width(student)}; "
            f"logit KD needs one output space (sequence-level KD works across vocabularies)")
