"""Learning-rate schedules as pure functions of the (traced) optimizer step."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from ftjax.optim.config import OptimizerConfig

Schedule = Callable[[jax.Array | int], jax.Array]


def learning_rate_fn(opt_cfg: OptimizerConfig, total_steps: int) -> Schedule:
    """step -> learning rate (float32), warmup then the configured decay.

    Warmup rises linearly from 0 at step 0 to the peak at `warmup_steps` (the HF / optax
    convention). Decay schedules count from the end of warmup, except `step`, whose boundaries
    are absolute optimizer steps. Usable inside jit (traced step) and on the host (int step).
    """
    cfg = OptimizerConfig.from_config(opt_cfg)
    peak, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
    decay_steps = cfg.decay_steps or max(int(total_steps) - warmup, 1)
    end = peak * cfg.end_factor
    timescale = max(warmup, 1)

    def decayed(step: jax.Array) -> jax.Array:
        frac = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if cfg.schedule == "constant":
            return jnp.full_like(step, peak)
        if cfg.schedule == "linear":
            return peak + (end - peak) * frac
        if cfg.schedule == "cosine":
            return end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        if cfg.schedule == "inverse_sqrt":
            # sqrt(w / step) after warmup: continuous at the warmup end, as fairseq / T5.
            return peak * jnp.sqrt(timescale / jnp.maximum(step, timescale))
        # step: one factor per boundary passed.
        passed = sum((step >= b).astype(jnp.float32) for b in cfg.step_boundaries)
        return peak * jnp.power(cfg.step_factor, passed)

    def schedule(step: jax.Array | int) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        lr = decayed(step)
        if warmup:
            lr = jnp.where(step < warmup, peak * step / warmup, lr)
        return lr.astype(jnp.float32)

    # Jitted: a host-side call (the logged learning rates) runs one compiled program instead of
    # compiling each of its operations on first use; inside the train step it is inlined.
    return jax.jit(schedule)
