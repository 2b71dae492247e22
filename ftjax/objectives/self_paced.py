"""Self-paced learning (`self_paced`; Kumar, Packer & Koller 2010, "Self-Paced Learning for
Latent Variable Models"): the model's own loss decides which examples are easy.

Each row's task loss l_i is read on the step's shared forward pass; the easiest share c(t) of
the micro-batch's real rows by l_i (c from the pacing functions of ftjax.data.pacing, growing
to 1 at `full_at_step`) get v_i = 1, the others v_i = 0, without gradient. The term is

    total = - sum_i (1 - v_i) l_i

so beside the task term (weight 1) the objective is sum_i v_i l_i: Kumar et al.'s hard
self-paced objective, its threshold set per micro-batch as the loss of the row at the share c
instead of a fixed 1/K. A weight w in (0, 1) down-weights the hard rows to (1 - w) l_i instead
of dropping them; weight 0 changes nothing. Rows without loss (filler rows, example_mask 0;
rows without target tokens) are never counted. Per-token tasks rank rows by their mean token
loss, so long rows are not hard for their length alone. Stat `kept`: the share of the
normalizer (examples or target tokens) the kept rows hold.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ftjax.data.pacing import PACINGS, Pacing, check_pacing
from ftjax.objectives.cross_entropy import CrossEntropy, CrossEntropyConfig
from ftjax.objectives.task_loss import run_task_loss
from ftjax.objectives.term import LossTerm, TermConfig, TermContext, TermSetup, TermValue
from ftjax.settings import setting


@dataclasses.dataclass(frozen=True)
class SelfPacedConfig(TermConfig):
    pacing: str = setting("linear", "the share of each batch's rows kept, easiest by the "
                          "model's own loss, over the steps (ftjax.data.pacing): linear | root "
                          "| step | geometric | constant", choices=PACINGS)
    start: float = setting(0.5, "the share kept at step 0, in (0, 1]")
    full_at_step: int = setting(1000, "the step from which every row is kept")
    root_power: float = setting(2.0, "pacing='root': the power p")
    stages: int = setting(4, "pacing='step': the number of equal jumps up to 1")

    def __post_init__(self):
        super().__post_init__()
        check_pacing(self.pacing, self.start, self.full_at_step, self.root_power, self.stages)
        if not (math.isfinite(self.weight) and 0 <= self.weight <= 1):
            raise ValueError(f"weight must lie in [0, 1] (1: hard rows dropped, 0: none), got "
                             f"{self.weight}")

    @property
    def pacing_function(self) -> Pacing:
        return Pacing(self.pacing, self.start, self.full_at_step, self.root_power, self.stages)


def easiest(difficulty: jax.Array, real: jax.Array, share: jax.Array) -> jax.Array:
    """1.0 for the ceil(share * real rows) real rows of least ``difficulty`` (ties: the first
    rows), else 0.0."""
    keys = jnp.where(real, difficulty, jnp.inf)
    order = jnp.argsort(keys, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))
    kept = jnp.ceil(share * jnp.sum(real.astype(jnp.float32)))
    return ((rank < kept) & real).astype(jnp.float32)


class SelfPaced(LossTerm):
    Config = SelfPacedConfig

    def __init__(self, name: str, config=None):
        super().__init__(name, config)
        self.task = CrossEntropy("ce", CrossEntropyConfig())

    def constants(self, setup: TermSetup) -> Any:
        self.task = run_task_loss(setup.config, f"loss term {self.name!r}")
        return None

    def __call__(self, ctx: TermContext) -> TermValue:
        per_row = self.task(ctx).per_row
        weights = self.normalizer(ctx.batch)  # examples or target tokens per row
        real = weights > 0
        mean = per_row / jnp.maximum(weights, 1.0)
        share = self.config.pacing_function(ctx.step, xp=jnp)
        keep = jax.lax.stop_gradient(easiest(jax.lax.stop_gradient(mean), real, share))
        dropped = -(1.0 - keep) * per_row * real
        return TermValue(total=jnp.sum(dropped), per_row=dropped,
                         stats={"kept": jnp.sum(keep * weights)})


__all__ = ["SelfPaced", "SelfPacedConfig", "easiest"]
