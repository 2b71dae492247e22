"""GAN-style adversarial fine-tuning of a language model (`gan`): a discriminator learns to tell
the generator's text from target-style text, and the generator learns to fool it, beside the
MLE loss that keeps it from collapsing (the task term, with its own weight).

Rows come from two kinds of source in one batch: rows of `real_source` are target-style text
(the discriminator's positives); every other row is a prompt / target pair whose target the
generator writes. The discriminator is a logistic head on the language model's own mean-pooled
final hidden states (the term's parameters, `terms/<name>/w` and `b`), reading them without
gradient, so it never moves the language model; the generator's loss reaches the language model
but never the head. One step updates both.

The generator's text at the target positions, teacher-forced (each position given the true
prefix, one forward pass, no decoding loop):
  gumbel     (Jang et al. 2017; Kusner & Hernandez-Lobato 2016) each target token is a
             Gumbel-softmax sample at `temperature` (`hard`: its one-hot, with the soft
             sample's gradient); the sample's embedding (the distribution times the embedding
             table) replaces the token's, through the model's embedding_delta; the generator
             minimizes -log D(fake), differentiated through the samples.
  reinforce  (Williams 1992) each target token is sampled from the generator's distribution;
             the reward log D(fake) weighs the samples' log-likelihood against a leave-one-out
             mean reward of the micro-batch's other generated rows (the baseline).
The discriminator minimizes -log D(real) - log(1 - D(fake)), weighted by `discriminator_weight`.
Sampling each target token given the true prefix, not the generator's own earlier samples, is
the teacher-forced simplification of sequence GANs; the rollout-free step costs one extra
forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ftjax.data.features import SOURCE_FEATURE
from ftjax.data.run_data import source_order
from ftjax.objectives.term import (
    TERM_PARAMS,
    LossTerm,
    TermConfig,
    TermContext,
    TermSetup,
    TermValue,
)
from ftjax.settings import ConfigError, setting

OBJECTIVES = ("gumbel", "reinforce")


@dataclasses.dataclass(frozen=True)
class GANConfig(TermConfig):
    real_source: str = setting("", "the data source of target-style text (the "
                               "discriminator's positives); the other sources' rows are "
                               "generated")
    objective: str = setting("gumbel", "the generator's objective: gumbel | reinforce",
                             choices=OBJECTIVES)
    temperature: float = setting(1.0, "gumbel: the samples' softmax temperature")
    hard: bool = setting(True, "gumbel: one-hot samples with the soft samples' gradient "
                         "(straight-through)")
    discriminator_weight: float = setting(1.0, "weight of the discriminator's loss")

    def __post_init__(self):
        super().__post_init__()
        if not self.real_source:
            raise ValueError("gan needs real_source: the source of target-style text")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got "
                             f"{self.temperature}")
        if not (math.isfinite(self.discriminator_weight) and self.discriminator_weight >= 0):
            raise ValueError(f"discriminator_weight must be a finite number >= 0, got "
                             f"{self.discriminator_weight}")


def _embedding_table(module):
    return module.backbone.embedding_table()


def mean_pool(hidden_BTD, mask_BT):
    w = mask_BT.astype(jnp.float32)[..., None]
    return jnp.sum(hidden_BTD.astype(jnp.float32) * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)


def rows_of(batch: dict) -> jax.Array:
    """(B,) 1.0 for a row holding text (language-model rows carry no example_mask)."""
    if "example_mask" in batch:
        return batch["example_mask"].astype(jnp.float32)
    return (jnp.sum(batch["attention_mask"], -1) > 0).astype(jnp.float32)


def shift_to_inputs(x):
    """Values at logit positions t (which predict token t + 1) moved to input position t + 1,
    zero at position 0; x is (B, T, ...)."""
    return jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


class GAN(LossTerm):
    Config = GANConfig

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        self.real_index = None  # the real source's index in batches, at set-up

    def _check(self, setup: TermSetup) -> None:
        cfg = setup.config
        if cfg is None:
            return
        if cfg.task.kind not in ("causal_lm", "chat") or setup.model.config.arch != "llama":
            raise ConfigError(f"loss term {self.name!r} (gan) fine-tunes a decoder on a "
                              f"causal_lm or chat task")
        sources = dict(cfg.get("sources") or {})
        order = source_order({n: bool(s.get("train", True)) for n, s in sources.items()})
        if self.config.real_source not in order:
            raise ConfigError(f"loss term {self.name!r}: real_source "
                              f"{self.config.real_source!r} is not among the run's sources "
                              f"{order}")
        if len(order) < 2:
            raise ConfigError(f"loss term {self.name!r}: besides {self.config.real_source!r} "
                              f"the run needs a source of rows to generate")
        self.real_index = order.index(self.config.real_source)

    def init_params(self, setup: TermSetup, rng: jax.Array) -> Any:
        self._check(setup)
        width = setup.model.config.hidden_size
        return {"w": jnp.zeros((width,), jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def constants(self, setup: TermSetup) -> Any:
        self._check(setup)
        return None

    def normalizer(self, batch: dict) -> jax.Array:
        return rows_of(batch)

    # -- the discriminator --------------------------------------------------------------------

    def score(self, head, hidden_BTD, mask_BT):
        """The discriminator's logit per row."""
        return mean_pool(hidden_BTD, mask_BT) @ head["w"] + head["b"]

    # -- the generator's samples ----------------------------------------------------------------

    def gumbel_inputs(self, ctx: TermContext, logits, rng):
        """The embedding_delta that puts the samples' embeddings in place of the target
        tokens' (zero elsewhere)."""
        model, batch = ctx.model, ctx.batch
        table = model.apply({"params": ctx.params}, method=_embedding_table)
        noise = jax.random.gumbel(rng, logits.shape, jnp.float32)
        soft = jax.nn.softmax((logits + noise) / self.config.temperature, axis=-1)
        if self.config.hard:
            one_hot = jax.nn.one_hot(jnp.argmax(soft, -1), soft.shape[-1], dtype=soft.dtype)
            soft = one_hot + soft - jax.lax.stop_gradient(soft)
        scale = model.config.hidden_size ** 0.5 if model.config.scale_embeddings else 1.0
        sampled = jnp.einsum("btv,vd->btd", soft, table.astype(jnp.float32)) * scale
        given = table[batch["input_ids"]].astype(jnp.float32) * scale
        at = shift_to_inputs(batch["loss_mask"])[..., None]
        return (shift_to_inputs(sampled) - given) * at

    def __call__(self, ctx: TermContext) -> TermValue:
        batch, logits = ctx.batch, ctx.output.logits.astype(jnp.float32)
        head = ctx.params[TERM_PARAMS][self.name]
        fixed_head = jax.lax.stop_gradient(head)
        rows = rows_of(batch)
        real = (batch[SOURCE_FEATURE] == self.real_index) * rows
        fake = (batch[SOURCE_FEATURE] != self.real_index) * rows
        mask = batch["attention_mask"]
        k_sample, k_drop = jax.random.split(ctx.rng)

        if self.config.objective == "gumbel":
            delta = self.gumbel_inputs(ctx, logits, k_sample)
            fake_hidden = ctx.forward(embedding_delta=delta, rng=k_drop).hidden
            fake_logit = self.score(fixed_head, fake_hidden, mask)
            generator = jax.nn.softplus(-fake_logit)  # -log D(fake)
        else:
            targets = jax.random.categorical(k_sample, logits, axis=-1)
            at = shift_to_inputs(batch["loss_mask"]) > 0
            fake_ids = jnp.where(at, shift_to_inputs(targets), batch["input_ids"])
            fake_hidden = ctx.forward({**batch, "input_ids": fake_ids}, rng=k_drop).hidden
            fake_logit = self.score(fixed_head, fake_hidden, mask)
            reward = jax.lax.stop_gradient(-jax.nn.softplus(-fake_logit))  # log D(fake)
            others = jnp.maximum(jnp.sum(fake) - fake, 1.0)
            baseline = (jnp.sum(reward * fake) - reward * fake) / others
            log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None],
                                        -1)[..., 0]
            log_p = jnp.sum(log_p * batch["loss_mask"], -1)
            generator = -(reward - baseline) * log_p
        # The discriminator reads the language model's features without moving it.
        real_logit = self.score(head, jax.lax.stop_gradient(ctx.output.hidden), mask)
        fake_d = self.score(head, jax.lax.stop_gradient(fake_hidden), mask)
        discriminator = real * jax.nn.softplus(-real_logit) + fake * jax.nn.softplus(fake_d)
        per_row = fake * generator + self.config.discriminator_weight * discriminator
        return TermValue(total=jnp.sum(per_row), per_row=per_row, stats={
            "generator": jnp.sum(fake * generator), "discriminator": jnp.sum(discriminator)})

