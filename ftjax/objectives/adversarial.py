"""Adversarial training on the input embeddings: FGM, PGD, FreeLB and SMART as loss terms.

Each term perturbs the token embeddings of the micro-batch by delta (B, T, D), added where the
first block (or the embedding norm) receives them (Model's `embedding_delta`), and runs extra
forward passes inside the same jitted step. delta is zero on padding, and its norms count real
tokens only; a soft prompt or prefix is never perturbed. The ascent direction is the gradient
of the run's task loss (the same loss as the task term, label smoothing included) with respect
to delta; that gradient never reaches the parameters. Norms are per example: `l2` over the
example's tokens and width, `linf` per coordinate.

    fgm     (Miyato et al. 2017)  loss(x + eps * g / ||g||_2)       (linf: eps * sign(g))
    pgd     (Madry et al. 2018)   loss(x + delta_K), delta_{k+1} = Proj_eps(delta_k + alpha *
                                  g_k / ||g_k||)  (linf: alpha * sign(g_k)), delta_0 `init`
    freelb  (Zhu et al. 2020)     (1/K) sum_{k<K} loss(x + delta_k): the parameter gradients of
                                  every ascent step accumulate, as FreeLB's "free" steps do
    smart   (Jiang et al. 2020)   symKL(f(x), f(x + delta)) after ascent on that same
                                  divergence from delta_0 ~ N(0, init_scale^2), plus
                                  bregman_weight * symKL(f(x; theta), f(x; theta~)) with theta~
                                  a momentum average of the trained parameters (its state)

fgm and pgd add the adversarial loss beside the task term (its weight is this term's
`weight`); Madry's min-max objective alone is `losses.<task term>.weight = 0` with this
term's weight 1, and FreeLB's objective likewise (its delta_0 replaces the clean input). smart
takes the clean pass from the step's shared forward pass and, as its reference code does, no
gradient flows through the clean side of either divergence.

Dropout: every adversarial pass of a micro-batch uses one dropout draw of the term's own, so
the ascent steps see one network. Multi-task runs (several task terms) are refused.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from ftjax.objectives.cross_entropy import CrossEntropy, CrossEntropyConfig
from ftjax.objectives.task_loss import run_task_loss
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import ConfigError, setting

NORMS = ("l2", "linf")
INITS = ("zero", "uniform", "normal")
# Tasks whose outputs are one distribution per example or per token (smart's divergence).
DISTRIBUTION_TASKS = ("classification", "token_classification", "causal_lm", "chat",
                      "masked_lm")
_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class PerturbationConfig(TermConfig):
    """The perturbation's ball (every adversarial term)."""

    # Whether epsilon may be 0, meaning no bound (iterated ascent; fgm's step needs a length).
    unbounded: ClassVar[bool] = False

    norm: str = setting("l2", "the perturbation's norm: l2 (per example, over its real "
                        "tokens and the width) | linf (per coordinate)", choices=NORMS)
    epsilon: float = setting(1.0, "the radius of the norm ball (fgm: the step's length)")

    def __post_init__(self):
        super().__post_init__()
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        low_ok = self.epsilon >= 0 if self.unbounded else self.epsilon > 0
        if not (math.isfinite(self.epsilon) and low_ok):
            bound = ">= 0 (0: no bound)" if self.unbounded else "> 0"
            raise ValueError(f"epsilon must be a finite number {bound}, got {self.epsilon}")


@dataclasses.dataclass(frozen=True)
class AscentConfig(PerturbationConfig):
    """Iterated ascent (pgd, freelb, smart)."""

    unbounded: ClassVar[bool] = True

    epsilon: float = setting(1.0, "the radius of the norm ball the perturbation is projected "
                             "onto after each step; 0: no bound")
    steps: int = setting(3, "ascent steps K")
    step_size: float = setting(0.3, "alpha: the length of each ascent step in the norm "
                               "(linf: per coordinate)")
    init: str = setting("zero", "delta_0: zero | uniform (l2: in [-1, 1] per coordinate "
                        "scaled to norm about init_scale; linf: in [-init_scale, init_scale]) "
                        "| normal (N(0, init_scale^2) per coordinate)", choices=INITS)
    init_scale: float = setting(0.0, "the scale of a random delta_0")

    def __post_init__(self):
        super().__post_init__()
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {self.step_size}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not (math.isfinite(self.init_scale) and self.init_scale >= 0):
            raise ValueError(f"init_scale must be a finite number >= 0, got {self.init_scale}")
        if self.init != "zero" and self.init_scale == 0:
            raise ValueError(f"init {self.init!r} needs init_scale > 0")


@dataclasses.dataclass(frozen=True)
class FreeLBConfig(AscentConfig):
    epsilon: float = setting(0.0, "the radius of the norm ball the perturbation is projected "
                             "onto after each step; 0: no bound (FreeLB's default)")
    step_size: float = setting(0.1, "alpha: the length of each ascent step")
    init: str = setting("uniform", "delta_0 (see pgd)", choices=INITS)
    init_scale: float = setting(0.1, "the scale of a random delta_0")


@dataclasses.dataclass(frozen=True)
class SmartConfig(AscentConfig):
    norm: str = setting("linf", "the ascent's norm (see pgd)", choices=NORMS)
    epsilon: float = setting(0.0, "the ball's radius after the ascent; 0: no bound (SMART's)")
    steps: int = setting(1, "ascent steps on the divergence")
    step_size: float = setting(1e-3, "eta: the ascent's step length")
    init: str = setting("normal", "delta_0 (see pgd)", choices=INITS)
    init_scale: float = setting(1e-5, "sigma of the starting noise")
    bregman_weight: float = setting(1.0, "mu: weight of the Bregman proximal point divergence "
                                    "(0: smoothness only)")
    momentum: float = setting(0.99, "beta: theta~ <- (1 - beta) theta + beta theta~ after "
                              "every step")

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.bregman_weight) and self.bregman_weight >= 0):
            raise ValueError(f"bregman_weight must be a finite number >= 0, got "
                             f"{self.bregman_weight}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")


# --- the perturbation's geometry -------------------------------------------------------------

def _real(batch: dict) -> jax.Array:
    """(B, T, 1) 1.0 at real tokens."""
    return batch["attention_mask"][..., None].astype(jnp.float32)


def _l2(x: jax.Array) -> jax.Array:
    """Per example L2 norm over tokens and width, (B, 1, 1)."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True))


def steepest(g: jax.Array, norm: str, length: float, real: jax.Array) -> jax.Array:
    """The step of `length` in the norm that increases the loss most to first order."""
    g = g * real
    if norm == "l2":
        return length * g / (_l2(g) + _TINY)
    return length * jnp.sign(g)


def project(delta: jax.Array, norm: str, radius: float, real: jax.Array) -> jax.Array:
    """delta onto the ball of `radius` (0: unbounded), zero on padding."""
    delta = delta * real
    if radius == 0:
        return delta
    if norm == "l2":
        return delta * jnp.minimum(1.0, radius / (_l2(delta) + _TINY))
    return jnp.clip(delta, -radius, radius)


def initial_delta(config: AscentConfig, rng: jax.Array, real: jax.Array,
                  width: int) -> jax.Array:
    """delta_0: (B, T, D) zeros, or noise as `config.init` says, zero on padding."""
    shape = real.shape[:2] + (width,)
    if config.init == "zero":
        return jnp.zeros(shape, real.dtype)
    if config.init == "normal":
        return config.init_scale * jax.random.normal(rng, shape, real.dtype) * real
    noise = jax.random.uniform(rng, shape, real.dtype, -1.0, 1.0) * real
    if config.norm == "l2":  # FreeLB's start: scaled by the real cells' count
        cells = jnp.sum(real, axis=(1, 2), keepdims=True) * width
        noise = noise * config.init_scale / jnp.sqrt(jnp.maximum(cells, 1.0))
        return project(noise, config.norm, config.epsilon, real)
    return noise * config.init_scale


def symmetric_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """KL(p || q) + KL(q || p) over the last axis, in float32."""
    log_p = jax.nn.log_softmax(p_logits.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(q_logits.astype(jnp.float32), axis=-1)
    return jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=-1)


# --- the terms -------------------------------------------------------------------------------

class _EmbeddingAdversary(LossTerm):
    """Shared machinery: the task's loss at perturbed embeddings and its gradient there."""

    Config = PerturbationConfig

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        self.task = CrossEntropy("ce", CrossEntropyConfig())  # the run's task loss, at set-up

    def constants(self, setup: TermSetup) -> Any:
        self.task = run_task_loss(setup.config, f"loss term {self.name!r}")
        return None

    def normalizer(self, batch: dict) -> jax.Array:
        return self.task.normalizer(batch)

    @staticmethod
    def width(ctx: TermContext) -> int:
        return ctx.model.config.hidden_size

    def perturbed(self, ctx: TermContext, delta: jax.Array):
        """The forward pass at embeddings + delta (the term's own dropout draw)."""
        return ctx.forward(embedding_delta=delta, rng=ctx.rng)

    def loss_at(self, ctx: TermContext, delta: jax.Array) -> TermValue:
        return self.task(dataclasses.replace(ctx, output=self.perturbed(ctx, delta)))

    def loss_and_ascent(self, ctx: TermContext, delta: jax.Array):
        """(the task loss at delta, differentiable in the parameters; its gradient in delta,
        a constant). One forward pass serves both."""
        value, grad = jax.value_and_grad(lambda d: self.loss_at(ctx, d).total)(delta)
        return value, jax.lax.stop_gradient(grad)


class FGM(_EmbeddingAdversary):
    """Fast gradient method: one step of length epsilon along the loss's gradient."""

    def __call__(self, ctx: TermContext) -> TermValue:
        cfg = self.config
        real = _real(ctx.batch)
        zero = jnp.zeros(real.shape[:2] + (self.width(ctx),), jnp.float32)
        _, grad = self.loss_and_ascent(ctx, zero)
        delta = jax.lax.stop_gradient(steepest(grad, cfg.norm, cfg.epsilon, real))
        value = self.loss_at(ctx, delta)
        return TermValue(total=value.total, per_row=value.per_row,
                         stats={"delta_norm": jnp.sum(_l2(delta)[:, 0, 0]
                                                      * ctx.batch["example_mask"])})


class PGD(_EmbeddingAdversary):
    """Projected gradient ascent for K steps, then the loss at the last perturbation."""

    Config = AscentConfig

    def ascend(self, ctx: TermContext, objective) -> tuple[jax.Array, list]:
        """delta_0 .. delta_K by ascent on objective(delta) -> (value, grad); returns the last
        delta and the values at delta_0 .. delta_{K-1}."""
        cfg = self.config
        real = _real(ctx.batch)
        delta = initial_delta(cfg, jax.random.fold_in(ctx.rng, 1), real, self.width(ctx))
        values = []
        for _ in range(cfg.steps):
            value, grad = objective(delta)
            values.append(value)
            delta = project(delta + steepest(grad, cfg.norm, cfg.step_size, real), cfg.norm,
                            cfg.epsilon, real)
        return jax.lax.stop_gradient(delta), values

    def __call__(self, ctx: TermContext) -> TermValue:
        delta, _ = self.ascend(ctx, lambda d: self.loss_and_ascent(ctx, d))
        value = self.loss_at(ctx, delta)
        return TermValue(total=value.total, per_row=value.per_row,
                         stats={"delta_norm": jnp.sum(_l2(delta)[:, 0, 0]
                                                      * ctx.batch["example_mask"])})


class FreeLB(PGD):
    """FreeLB: the mean of the losses at every ascent step's perturbation."""

    Config = FreeLBConfig

    def __call__(self, ctx: TermContext) -> TermValue:
        rows = []

        def loss(d):
            value = self.loss_at(ctx, d)
            return value.total, value.per_row

        def objective(d):
            # The loss at d, differentiable in the parameters (its rows kept for the
            # per-source figures), and the ascent direction.
            (total, per_row), grad = jax.value_and_grad(loss, has_aux=True)(d)
            rows.append(per_row)
            return total, jax.lax.stop_gradient(grad)

        delta, values = self.ascend(ctx, objective)
        k = len(values)
        per_row = None if rows[0] is None else sum(rows) / k
        return TermValue(total=sum(values) / k, per_row=per_row,
                         stats={"delta_norm": jnp.sum(_l2(delta)[:, 0, 0]
                                                      * ctx.batch["example_mask"])})


class SMART(PGD):
    """SMART: smoothness-inducing adversarial regularization with a momentum Bregman
    proximal point term (the state holds theta~)."""

    Config = SmartConfig

    def constants(self, setup: TermSetup) -> Any:
        super().constants(setup)
        kind = _task_kind(setup.config)
        if kind is not None and kind not in DISTRIBUTION_TASKS:
            raise ConfigError(f"loss term {self.name!r} (smart) compares output distributions; "
                              f"task {kind!r} has none (one of {DISTRIBUTION_TASKS})")
        return None

    def init_state(self, setup: TermSetup) -> Any:
        if self.config.bregman_weight == 0:
            return None
        # Its own buffers: the state is donated to the step apart from the trainable half.
        return {"average": setup.place_like_trainable(jax.tree.map(
            lambda x: None if x is None else jnp.array(x, copy=True), setup.trainable,
            is_leaf=lambda x: x is None))}

    def update_state(self, state, constants, trainable, step):
        if state is None:
            return state
        beta = self.config.momentum
        return {"average": jax.tree.map(
            lambda a, w: None if a is None else (1 - beta) * w + beta * a,
            state["average"], trainable, is_leaf=lambda x: x is None)}

    @staticmethod
    def _weights(batch: dict, logits: jax.Array) -> jax.Array:
        return (batch["loss_mask"] if logits.ndim == 3 else batch["example_mask"]).astype(
            jnp.float32)

    def _divergence_rows(self, batch, clean, other) -> jax.Array:
        """(B,) sums of symKL(clean, other) over the rows' weighted positions."""
        per_item = symmetric_kl(clean, other) * self._weights(batch, clean)
        return per_item.sum(axis=-1) if per_item.ndim == 2 else per_item

    def __call__(self, ctx: TermContext) -> TermValue:
        batch = ctx.batch
        clean = jax.lax.stop_gradient(ctx.output.logits)
        if isinstance(clean, dict) or clean.ndim not in (2, 3):
            raise ValueError("smart compares one head's class or token distributions")

        def divergence(d):
            return jnp.sum(self._divergence_rows(batch, clean, self.perturbed(ctx, d).logits))

        def objective(d):
            value, grad = jax.value_and_grad(divergence)(d)
            return value, jax.lax.stop_gradient(grad)

        delta, _ = self.ascend(ctx, objective)
        smooth = self._divergence_rows(batch, clean, self.perturbed(ctx, delta).logits)
        total, stats = jnp.sum(smooth), {"smoothness": jnp.sum(smooth)}
        per_row = smooth
        if ctx.state is not None:
            anchor = ctx.forward(params=ctx.params_of(ctx.state["average"]), rng=ctx.rng)
            # The clean pass carries the gradient here; theta~ is a constant.
            bregman = self._divergence_rows(batch, ctx.output.logits,
                                            jax.lax.stop_gradient(anchor.logits))
            stats["bregman"] = jnp.sum(bregman)
            per_row = smooth + self.config.bregman_weight * bregman
            total = jnp.sum(per_row)
        return TermValue(total=total, per_row=per_row, stats=stats)


def _task_kind(config) -> str | None:
    return None if config is None else config.task.kind


__all__ = ["FGM", "PGD", "FreeLB", "SMART", "AscentConfig", "FreeLBConfig",
           "PerturbationConfig", "SmartConfig", "initial_delta", "project", "steepest",
           "symmetric_kl"]
