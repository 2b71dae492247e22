"""optax transformations with per-leaf constants and per-leaf start steps.

They run on the TRAINABLE tree, whose frozen positions hold `None` (optax and jax.tree treat None
as an empty subtree: no state, no update). The per-leaf constants (`starts`, multipliers) are
numpy trees with the same None positions, baked into the compiled step: a scalar for a uniform
leaf, or an (L,) vector along axis 0 of a stacked (scan layout) leaf.

Everything that changes over training is a function of the step counter in each state, so a
phase change (a layer unfreezing, LLRD, warmup) is data, never a new compile (DESIGN.md 4).

Gradual unfreezing and optimizer moments: a leaf that starts at step s keeps its moments at zero
until s, and Adam's bias correction counts from s (t = step - s + 1), so its first update after
unfreezing is a normal first Adam step. Counting from the run's start instead would leave the
correction ~1 while the second moment is still near zero, inflating the first updates of a newly
unfrozen layer by up to 1/sqrt(1 - b2) (~30x for b2 = 0.999).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.optim.rules import along_layer_axis


def map_trainable(f: Callable, updates: Any, *rest: Any) -> Any:
    """f(leaf, *matching entries of rest) for every non-None leaf of `updates`; None stays None."""
    return jax.tree.map(
        lambda u, *r: None if u is None else f(u, *r), updates, *rest, is_leaf=lambda x: x is None
    )


def is_always_active(start: np.ndarray) -> bool:
    return bool(np.all(np.asarray(start) == 0))


def active_mask(count: jax.Array, start: np.ndarray, ndim: int) -> jax.Array:
    """Whether each layer slice trains at optimizer step `count`; broadcasts over the leaf."""
    return count >= along_layer_axis(np.asarray(start, np.int32), ndim)


class StepCountState(NamedTuple):
    count: jax.Array  # int32 scalar: optimizer steps taken


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def zero_inactive_grads(starts: Any) -> optax.GradientTransformation:
    """Zero the gradient of every slice not yet training, so clipping and moments ignore it."""

    def update(updates, state, params=None):
        del params

        def gate(g, start):
            if is_always_active(start):
                return g
            return jnp.where(active_mask(state.count, start, g.ndim), g, jnp.zeros_like(g))

        return map_trainable(gate, updates, starts), StepCountState(
            optax.safe_increment(state.count)
        )

    return optax.GradientTransformation(lambda params: StepCountState(_zero_count()), update)


def scale_by_adam_from(
    starts: Any, b1: float, b2: float, eps: float, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """optax.scale_by_adam, except each slice's moments and bias correction start at its step.

    With every start at 0 it computes exactly what optax.scale_by_adam computes.
    """

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(count=_zero_count(), mu=zeros, nu=zeros)

    def update(updates, state, params=None):
        del params
        count_inc = optax.safe_increment(state.count)

        def new_mu(g, m, start):
            m_new = (1 - b1) * (g**1) + b1 * m
            if is_always_active(start):
                return m_new
            return jnp.where(active_mask(state.count, start, g.ndim), m_new, m)

        def new_nu(g, v, start):
            v_new = (1 - b2) * (g**2) + b2 * v
            if is_always_active(start):
                return v_new
            return jnp.where(active_mask(state.count, start, g.ndim), v_new, v)

        mu = map_trainable(new_mu, updates, state.mu, starts)
        nu = map_trainable(new_nu, updates, state.nu, starts)

        def direction(m, v, start):
            if is_always_active(start):
                t = count_inc
            else:
                # Steps this slice has trained, including this one (>= 1 where active).
                start_b = along_layer_axis(np.asarray(start, np.int32), m.ndim)
                t = jnp.maximum(count_inc - start_b, 1)
            m_hat = m / (1 - b1**t).astype(m.dtype)
            v_hat = v / (1 - b2**t).astype(v.dtype)
            u = m_hat / (jnp.sqrt(v_hat + eps_root) + eps)
            if is_always_active(start):
                return u
            return jnp.where(active_mask(state.count, start, m.ndim), u, jnp.zeros_like(u))

        updates = map_trainable(direction, mu, nu, starts)
        return updates, optax.ScaleByAdamState(count=count_inc, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def scale_by_lion_from(starts: Any, b1: float, b2: float) -> optax.GradientTransformation:
    """optax.scale_by_lion (hard sign), with each slice's momentum frozen until its start."""

    def init(params):
        return optax.ScaleByLionState(count=_zero_count(), mu=optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params

        def direction(g, m, start):
            u = jnp.sign((1.0 - b1) * g + b1 * m)
            if is_always_active(start):
                return u
            return jnp.where(active_mask(state.count, start, g.ndim), u, jnp.zeros_like(u))

        def new_mu(g, m, start):
            m_new = (1 - b2) * (g**1) + b2 * m
            if is_always_active(start):
                return m_new
            return jnp.where(active_mask(state.count, start, g.ndim), m_new, m)

        out = map_trainable(direction, updates, state.mu, starts)
        mu = map_trainable(new_mu, updates, state.mu, starts)
        return out, optax.ScaleByLionState(count=optax.safe_increment(state.count), mu=mu)

    return optax.GradientTransformation(init, update)


class MomentumState(NamedTuple):
    count: jax.Array
    trace: Any


def momentum_from(starts: Any, decay: float, nesterov: bool) -> optax.GradientTransformation:
    """optax.trace (heavy-ball / Nesterov momentum), frozen per slice until its start."""

    def init(params):
        return MomentumState(_zero_count(), optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params

        def new_trace(g, t, start):
            t_new = g + decay * t
            if is_always_active(start):
                return t_new
            return jnp.where(active_mask(state.count, start, g.ndim), t_new, t)

        trace = map_trainable(new_trace, updates, state.trace, starts)
        out = map_trainable(lambda g, t: g + decay * t, updates, trace) if nesterov else trace
        return out, MomentumState(optax.safe_increment(state.count), trace)

    return optax.GradientTransformation(init, update)


def add_decayed_weights_per_leaf(coefficients: Any) -> optax.GradientTransformation:
    """updates + c * params with a per-leaf (per-layer) coefficient c; c == 0 adds nothing."""

    def update(updates, state, params=None):
        def decay(u, c, p):
            c = np.asarray(c, np.float32)
            if not np.any(c):
                return u
            if p is None:
                raise ValueError("weight decay needs params: call tx.update(grads, state, params)")
            return u + along_layer_axis(c, u.ndim).astype(u.dtype) * p

        if params is None:
            params = jax.tree.map(lambda _: None, updates)
        return map_trainable(decay, updates, coefficients, params), state

    return optax.GradientTransformation(optax.init_empty_state, update)


class LearningRateState(NamedTuple):
    """The optimizer step as the learning-rate schedule sees it (see `optimizer_step`)."""

    count: jax.Array


def scale_by_learning_rate_per_leaf(
    schedule: Callable[[jax.Array], jax.Array], multipliers: Any, starts: Any
) -> optax.GradientTransformation:
    """updates * -schedule(step) * multiplier, and an exact no-op for slices not yet training.

    The no-op update is -0.0, not 0.0: p + (-0.0) == p bit for bit for every p (0.0 would turn
    a -0.0 parameter into +0.0), and jnp.where also drops any NaN in an inactive slice.
    """

    def update(updates, state, params=None):
        del params
        lr = schedule(state.count)

        def scale(u, mult, start):
            mult = along_layer_axis(np.asarray(mult, np.float32), u.ndim)
            scaled = (-lr * mult).astype(u.dtype) * u
            if is_always_active(start):
                return scaled
            return jnp.where(active_mask(state.count, start, u.ndim), scaled,
                             jnp.full_like(u, -0.0))

        out = map_trainable(scale, updates, multipliers, starts)
        return out, LearningRateState(optax.safe_increment(state.count))

    return optax.GradientTransformation(lambda params: LearningRateState(_zero_count()), update)
