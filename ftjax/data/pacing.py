"""Pacing functions of curriculum learning: the competence c(t), the share of the data (sorted
by difficulty) a learner may see at step t.

Every function starts at c(0) = ``start`` (c0, in (0, 1]), never decreases, reaches 1 at step
``full_at_step`` (T) and stays there:

  linear     c0 + (1 - c0) t / T
  root       (t (1 - c0^p) / T + c0^p)^(1/p)   (Platanios et al. 2019, "Competence-based
             Curriculum Learning for Neural Machine Translation"; p = ``root_power``, 2 there)
  step       c0 until T / stages, then ``stages`` equal jumps, the last reaching 1 at T
  geometric  c0^(1 - t / T): the share grows by the same factor every step
  constant   1 from the first step (plain training order; the control arm)

The functions take arrays of steps and an array module (numpy by default, jax.numpy inside a
jitted step: the self-paced loss term reads the same schedule), so a curriculum's whole
block of positions is paced in one call and the step never recompiles as t changes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

PACINGS = ("linear", "root", "step", "geometric", "constant")


class Pacing(NamedTuple):
    """A pacing function and its settings (see the module doc)."""

    name: str = "linear"
    start: float = 0.1
    full_at_step: int = 1000
    root_power: float = 2.0
    stages: int = 4

    def check(self) -> None:
        """ValueError naming the bad setting."""
        check_pacing(self.name, self.start, self.full_at_step, self.root_power, self.stages)

    def __call__(self, steps: Any, xp: Any = np) -> Any:
        return competence(self, steps, xp)


def check_pacing(name: str, start: float, full_at_step: int, root_power: float,
                 stages: int) -> None:
    """The settings of a pacing function, each refused by its key (ValueError)."""
    if name not in PACINGS:
        raise ValueError(f"pacing must be one of {PACINGS}, got {name!r}")
    if not (math.isfinite(start) and 0 < start <= 1):
        raise ValueError(f"start (the share at step 0) must lie in (0, 1], got {start}")
    if full_at_step < 1:
        raise ValueError(f"full_at_step (the step where the share reaches 1) must be >= 1, "
                         f"got {full_at_step}")
    if not (math.isfinite(root_power) and root_power > 0):
        raise ValueError(f"root_power must be > 0, got {root_power}")
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")


def competence(pacing: Pacing, steps: Any, xp: Any = np) -> Any:
    """c(t) of ``pacing`` at each of ``steps`` (float64 with numpy, float32 with jax)."""
    dtype = xp.float64 if xp is np else xp.float32
    t = xp.asarray(steps).astype(dtype)
    c0, total = pacing.start, float(pacing.full_at_step)
    progress = xp.clip(t / total, 0.0, 1.0)
    if pacing.name == "constant":
        share = xp.ones_like(t)
    elif pacing.name == "linear":
        share = c0 + (1.0 - c0) * progress
    elif pacing.name == "root":
        p = pacing.root_power
        share = (progress * (1.0 - c0 ** p) + c0 ** p) ** (1.0 / p)
    elif pacing.name == "geometric":
        share = c0 ** (1.0 - progress)
    else:  # step: jumps at T/stages, 2T/stages, ..., T
        done = xp.floor(progress * pacing.stages) / pacing.stages
        share = c0 + (1.0 - c0) * done
    # Exactly 1 from T on (rounding in the formulas could leave 1 - 1e-16), never above.
    return xp.where(t >= total, xp.ones_like(share), xp.minimum(share, 1.0))


__all__ = ["PACINGS", "Pacing", "check_pacing", "competence"]
