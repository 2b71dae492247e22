"""Knowledge distillation terms: logits (`kd`, Hinton et al. 2015), hidden states
(`kd_hidden`, TinyBERT) and attention (`kd_attention`, MiniLM).

    kd = T^2 * KL( softmax(teacher / T) || softmax(student / T) )

per example (class logits, rows weighted by `example_mask`) or per target token (LM logits,
positions weighted by `loss_mask`: the task loss's own mask), summed like the task loss, which
it sits beside with its own (schedulable) weight. The T^2 keeps its gradient's scale
independent of T. Without a `teacher`, kd reads the teacher's outputs from the batch: a teacher
cache (ftjax.data.teacher_cache) holds all of its logits or its top k, renormalized over them.

The teacher is the term's constant: its parameters are loaded at set-up (`teacher` names a
pretrained model, an adapter directory or a finished run's workdir, through
TermSetup.load_model), placed on the run's devices, never trained, never in the optimizer and
never saved (rebuilt identically from `teacher`). Its forward pass runs inside the same jitted
step on the same batch, without gradient and without dropout, in `teacher_dtype`; terms naming
one teacher share one copy and one forward pass.

    kd_hidden = mean over pairs (s, t) of  mean over real tokens of  d(h_s W, h_t)

with h the output of student block s and teacher block t (`layers`: "s:t" pairs), W a learned
projection per pair when the widths differ (the term's own parameters; else none), d the mean
squared difference over the width or 1 - cosine; each row weighs once. `kd_attention` is the
same over KL(teacher || student) of each head's attention distribution and / or of each head's
value relation softmax(V V^T / sqrt(d)) (MiniLM's attention and value transfer). The student's
hidden states and attention come from the step's own forward pass (the term `captures`), the
teacher's from its.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from ftjax.data.features import TEACHER_FEATURES
from ftjax.models.model import layer_hidden_states, sown_per_layer
from ftjax.nn.scan import INTERMEDIATES
from ftjax.objectives.inputs import model_inputs
from ftjax.objectives.term import (
    TERM_PARAMS,
    LossTerm,
    TermConfig,
    TermContext,
    TermSetup,
    TermValue,
)
from ftjax.settings import ConfigError, setting


def kd_divergence(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) over the last axis, in float32."""
    s = student_logits.astype(jnp.float32) / temperature
    t = teacher_logits.astype(jnp.float32) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1) - jax.nn.log_softmax(s, axis=-1)),
                 axis=-1)
    return temperature ** 2 * kl


def sparse_kd_divergence(student_logits, teacher_values, teacher_ids,
                         temperature: float) -> jax.Array:
    """kd_divergence against a teacher known only at outputs `teacher_ids` (its top k, or all
    of them): the teacher's distribution renormalized over those outputs, the student's full
    one read there. With every output, exactly kd_divergence."""
    s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    t = teacher_values.astype(jnp.float32) / temperature
    p_t = jax.nn.softmax(t, axis=-1)
    kl = jnp.sum(p_t * (jax.nn.log_softmax(t, axis=-1)
                        - jnp.take_along_axis(s, teacher_ids, axis=-1)), axis=-1)
    return temperature ** 2 * kl


@dataclasses.dataclass(frozen=True)
class TeacherConfig(TermConfig):
    """Settings of every term that compares the student with a teacher."""

    teacher: str = setting("", "the teacher: a pretrained model (asset name or checkpoint "
                           "path), an ftjax adapter directory, or a finished run's workdir")
    teacher_dtype: str = setting("float32", "the teacher's parameter and compute dtype",
                                 choices=("float32", "bfloat16"))

    # False: a term that can also read the teacher's outputs from the batch (a cache)
    teacher_required: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        if not self.teacher and self.teacher_required:
            raise ValueError("a distillation term needs its teacher (losses.<name>.teacher)")


@dataclasses.dataclass(frozen=True)
class KDConfig(TeacherConfig):
    teacher_required: ClassVar[bool] = False  # no teacher: the rows' cached outputs

    temperature: float = setting(2.0, "T: both distributions are softened by it; the KL is "
                                 "scaled by T^2")

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class TeacherTerm(LossTerm):
    """A term that compares the student with a teacher loaded at set-up (its constants)."""

    Config = TeacherConfig

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        self.teacher = None  # the teacher's Model, set with its parameters at set-up

    def _key(self) -> tuple:
        return ("teacher", self.config.teacher, self.config.teacher_dtype)

    def loaded_teacher(self, setup: TermSetup) -> tuple:
        """(model, params) of the teacher, loaded once for every term naming it in one dtype
        (setup.shared); its params are placed when the state is built (constants)."""
        if setup.load_model is None:
            raise ConfigError(f"loss term {self.name!r}: this set-up cannot load a teacher")
        if self._key() not in setup.shared:
            setup.shared[self._key()] = setup.load_model(self.config.teacher,
                                                         self.config.teacher_dtype)
        return setup.shared[self._key()]

    def constants(self, setup: TermSetup):
        """The teacher's parameters, placed on the run's devices. Terms naming one teacher (in
        one dtype) share one placed copy, and in the step one forward pass."""
        model, _ = self.loaded_teacher(setup)
        placed = ("placed",) + self._key()
        if placed not in setup.shared:
            setup.shared[placed] = setup.place_replicated(setup.shared[self._key()][1])
        if setup.model is not None:
            self.check(model, setup.model)
        self.teacher = model
        return setup.shared[placed]

    def check(self, teacher, student) -> None:
        """Refuse a teacher the term cannot compare with this student (ConfigError)."""

    def teacher_forward(self, ctx: TermContext):
        """The teacher on the micro-batch, without gradient or dropout: its ModelOutput and
        its sowed intermediates (which cost nothing where no term reads them). The first term
        of the step that asks runs it; the others naming the same teacher reuse it."""
        if self.teacher is None:
            raise ValueError(f"loss term {self.name!r} has no teacher: its constants were not "
                             f"built (create_train_state does that)")
        if self._key() not in ctx.shared:
            out = self.teacher.apply(
                {"params": jax.lax.stop_gradient(ctx.constants)}, ctx.batch["input_ids"],
                **model_inputs(ctx.batch, self.teacher), deterministic=True,
                mutable=[INTERMEDIATES])
            ctx.shared[self._key()] = jax.lax.stop_gradient(out)
        return ctx.shared[self._key()]


class LogitKD(TeacherTerm):
    """Logit KD from a teacher run in the step, or, without `teacher`, from the outputs a
    teacher cache puts in the train rows (ftjax.data.teacher_cache: all of a teacher's class
    logits, or its top k per token, renormalized over those k)."""

    Config = KDConfig

    def constants(self, setup: TermSetup):
        if self.config.teacher:
            return super().constants(setup)
        rows = setup.train_rows or {}
        found = [values for values, _ in TEACHER_FEATURES.values() if values in rows]
        if not found:
            raise ConfigError(f"loss term {self.name!r} has no teacher and the train rows "
                              f"carry no teacher outputs: name losses.{self.name}.teacher, or "
                              f"give every trained source a teacher_cache")
        width = output_width(setup.model) if setup.model is not None else None
        cached = rows[found[0]][0][-1]
        if width is not None and cached > width:
            raise ConfigError(f"loss term {self.name!r}: the teacher cache holds {cached} "
                              f"outputs per item, the student has {width}")
        return None

    def check(self, teacher, student) -> None:
        check_same_outputs(teacher, student, self.config.teacher)

    def __call__(self, ctx: TermContext) -> TermValue:
        batch, student = ctx.batch, ctx.output.logits
        if isinstance(student, dict):
            raise ValueError("kd distils one head; a multi-task student has one per task")
        if self.config.teacher:
            teacher = self.teacher_forward(ctx)[0].logits
            per_item = kd_divergence(student, teacher, self.config.temperature)
        else:
            values, ids = TEACHER_FEATURES[student.ndim == 3]
            per_item = sparse_kd_divergence(student, batch[values], batch[ids],
                                            self.config.temperature)
        weights = (batch["loss_mask"] if student.ndim == 3 else batch["example_mask"])
        per_item = per_item * weights.astype(jnp.float32)
        per_row = per_item.sum(axis=-1) if per_item.ndim == 2 else per_item
        return TermValue(total=per_row.sum(), per_row=per_row)


@dataclasses.dataclass(frozen=True)
class LayerPairsConfig(TeacherConfig):
    """A teacher and the student:teacher block pairs a term compares."""

    layers: tuple[str, ...] = setting(
        ("-1:-1",), "student:teacher block pairs compared (indices from 0, negative from the "
        "end), e.g. ('0:1', '1:3', '2:5')")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "layers", tuple(self.layers))
        self.pairs()

    def pairs(self) -> list[tuple[int, int]]:
        out = []
        for pair in self.layers:
            student, sep, teacher = str(pair).partition(":")
            try:
                out.append((int(student), int(teacher)))
            except ValueError:
                raise ValueError(f"layers entry {pair!r}: expected STUDENT:TEACHER block "
                                 f"indices") from None
            if not sep:
                raise ValueError(f"layers entry {pair!r}: expected STUDENT:TEACHER")
        if not out:
            raise ValueError("at least one student:teacher pair is needed in layers")
        return out


@dataclasses.dataclass(frozen=True)
class HiddenKDConfig(LayerPairsConfig):
    loss: str = setting("mse", "mse (mean squared difference over the width) or cosine "
                        "(1 - cosine similarity), per token", choices=("mse", "cosine"))


class _LayerPairsTerm(TeacherTerm):
    """Compares what chosen blocks of the student and the teacher sowed, token by token;
    every row weighs once."""

    Config = LayerPairsConfig
    captures = True

    def normalizer(self, batch: dict) -> jax.Array:
        """Each row with a real token counts once (an example's rows: its example_mask)."""
        if "example_mask" in batch:
            return batch["example_mask"].astype(jnp.float32)
        return (batch["attention_mask"].sum(-1) > 0).astype(jnp.float32)


class HiddenKD(_LayerPairsTerm):
    """Hidden-state transfer: the student's block outputs pulled toward the teacher's, per
    real token (attention_mask), each row the mean over its tokens and the chosen pairs. When
    the widths differ the student's side goes through a learned projection per pair
    (TinyBERT's W_h: the term's own parameters, trained with the student, never exported)."""

    Config = HiddenKDConfig

    def init_params(self, setup: TermSetup, rng: jax.Array):
        """One (student width, teacher width) projection per pair when the widths differ."""
        if setup.model is None:
            return None
        teacher, _ = self.loaded_teacher(setup)
        d_s, d_t = setup.model.config.hidden_size, teacher.config.hidden_size
        if d_s == d_t:
            return None
        init = jax.nn.initializers.lecun_normal()
        return {_pair_name(s, t): {"kernel": init(jax.random.fold_in(rng, i), (d_s, d_t),
                                                  jnp.float32)}
                for i, (s, t) in enumerate(self.config.pairs())}

    def check(self, teacher, student) -> None:
        _check_token_aligned(teacher, student, self.config)

    def __call__(self, ctx: TermContext) -> TermValue:
        student = layer_hidden_states(ctx.intermediates)
        _, sown = self.teacher_forward(ctx)
        teacher = layer_hidden_states(sown)
        own = ctx.params.get(TERM_PARAMS, {}).get(self.name)
        mask = ctx.batch["attention_mask"].astype(jnp.float32)
        per_row = jnp.zeros(mask.shape[:1], jnp.float32)
        pairs = self.config.pairs()
        for s, t in pairs:
            a, b = student[s].astype(jnp.float32), teacher[t].astype(jnp.float32)
            if own is not None:
                a = a @ own[_pair_name(s, t)]["kernel"].astype(jnp.float32)
            if self.config.loss == "mse":
                per_token = jnp.mean(jnp.square(a - b), axis=-1)
            else:
                cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1)
                                            * jnp.linalg.norm(b, axis=-1) + 1e-8)
                per_token = 1.0 - cos
            per_row += (per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
        per_row = per_row / len(pairs) * self.normalizer(ctx.batch)
        return TermValue(total=per_row.sum(), per_row=per_row)


@dataclasses.dataclass(frozen=True)
class AttentionKDConfig(LayerPairsConfig):
    relations: tuple[str, ...] = setting(
        ("attention",), "what is transferred: attention (each head's distribution over the "
        "keys, softmax(QK^T / sqrt(d))) and / or value (MiniLM's value relation, "
        "softmax(VV^T / sqrt(d)))")

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "relations", tuple(self.relations))
        unknown = sorted(set(self.relations) - set(_RELATIONS))
        if unknown or not self.relations:
            raise ValueError(f"relations must be some of {sorted(_RELATIONS)}, got "
                             f"{list(self.relations)}")


# relation -> (the name the attention modules sow it under, the heads it has)
_RELATIONS = {"attention": ("attention", "num_heads"),
              "value": ("value_relation", "num_kv_heads")}


class AttentionKD(_LayerPairsTerm):
    """Attention transfer (MiniLM, Wang et al. 2020): KL(teacher || student) of each head's
    attention distribution over the keys, and / or of its value relation, per real query
    token, for the chosen block pairs; each row the mean over heads, tokens, relations and
    pairs. The head counts must agree (the kv heads' for the value relation)."""

    Config = AttentionKDConfig

    def check(self, teacher, student) -> None:
        for relation in self.config.relations:
            heads = _RELATIONS[relation][1]
            t, s = (getattr(m.config, heads, m.config.num_heads) for m in (teacher, student))
            if t != s:
                raise ConfigError(f"teacher {self.config.teacher}: {t} {relation} heads, the "
                                  f"student {s}; {relation} transfer compares head by head")
        _check_token_aligned(teacher, student, self.config)

    def __call__(self, ctx: TermContext) -> TermValue:
        _, sown = self.teacher_forward(ctx)
        mask = ctx.batch["attention_mask"].astype(jnp.float32)  # (B, T): real queries
        per_row = jnp.zeros(mask.shape[:1], jnp.float32)
        pairs = self.config.pairs()
        for relation in self.config.relations:
            name = _RELATIONS[relation][0]
            student, teacher = (sown_per_layer(tree, name) for tree in (ctx.intermediates, sown))
            for s, t in pairs:
                p, q = teacher[t], student[s]  # (B, N, T, S), fp32, masked keys at 0
                kl = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, 1e-30))
                                                   - jnp.log(jnp.maximum(q, 1e-30))), 0.0), -1)
                per_query = kl.mean(axis=1)  # over heads: (B, T)
                per_row += (per_query * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
        per_row = per_row / (len(pairs) * len(self.config.relations)) * \
            self.normalizer(ctx.batch)
        return TermValue(total=per_row.sum(), per_row=per_row)


def _pair_name(s: int, t: int) -> str:
    return f"student{s}_teacher{t}".replace("-", "m")


def _check_token_aligned(teacher, student, config: LayerPairsConfig) -> None:
    """Per-token comparisons need one tokenization, and the pairs' blocks must exist."""
    if teacher.config.vocab_size != student.config.vocab_size:
        raise ConfigError(f"teacher {config.teacher}: another vocabulary "
                          f"({teacher.config.vocab_size} tokens, the student "
                          f"{student.config.vocab_size}); the term compares token by token")
    for s, t in config.pairs():
        for index, model, who in ((s, student, "student"), (t, teacher, "teacher")):
            if not -model.config.num_layers <= index < model.config.num_layers:
                raise ConfigError(f"layers {s}:{t}: the {who} has {model.config.num_layers} "
                                  f"blocks, no block {index}")


def output_width(model) -> int:
    """The outputs of a model's head: its labels, or its vocabulary."""
    head = model.head_config
    return model.config.vocab_size if head.kind in ("lm", "mlm") else head.num_labels


def check_same_outputs(teacher, student, where: str) -> None:
    """Logit KD compares distributions over one label or vocabulary space."""
    t_width, s_width = output_width(teacher), output_width(student)
    if teacher.head_config.kind != student.head_config.kind or t_width != s_width:
        raise ConfigError(
            f"teacher {where}: a {teacher.head_config.kind!r} head over {t_width} outputs, the "
            f"student a {student.head_config.kind!r} head over {s_width}; logit KD needs one "
            f"output space (sequence-level KD works across vocabularies)")
