"""Optimizer settings: one frozen dataclass, read strictly from `cfg.optimizer` (DESIGN.md 8)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ftjax.settings import from_config, setting

OPTIMIZERS = ("adamw", "sgd", "adafactor", "lion")
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt", "step")

# Leaves without weight decay by default (patterns fullmatch canonical paths): biases, the scale
# (and bias) of every norm, and embedding tables. Decaying them hurts fine-tuning and has no
# regularizing point (they are not weight matrices of a linear map). The same holds for the PEFT
# leaves that are scales or inputs rather than weights: (IA)^3's scales start at one, and decay
# would pull them toward zero (switching features off); a soft prompt is an embedding; prefix
# keys/values are activations.
DEFAULT_NO_DECAY = (r".*bias", r".*norm[^/]*/scale", r".*embedding", r".*/ia3_scale",
                    r"backbone/soft_prompt", r".*/prefix_(?:k|v)")

# Per-optimizer moment defaults for b1 / b2 left as None.
_DEFAULT_BETAS = {"adamw": (0.9, 0.999), "lion": (0.9, 0.99), "adafactor": (None, 0.8),
                  "sgd": (None, None)}


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Everything make_optimizer and learning_rate_fn read (the `optimizer` config block).

    Every step count here (warmup, decay, boundaries) is in optimizer steps: gradient
    accumulation (the run's `accumulation_steps`) happens inside the train step, and the
    optimizer never sees micro-batches.
    """

    name: str = setting("adamw", "adamw | sgd | adafactor | lion", choices=OPTIMIZERS)
    learning_rate: float = setting(
        5e-5, "the peak rate; full fine-tuning wants small steps, linear probes and BitFit 1e-3 "
        "or more (ftjax.peft.SUGGESTED_LEARNING_RATES)")
    b1: float | None = setting(None, "first-moment decay; None: the optimizer's usual value "
                               "(adamw 0.9, lion 0.9, adafactor: no first moment)")
    b2: float | None = setting(None, "second-moment decay; None: the optimizer's usual value "
                               "(adamw 0.999, lion 0.99, adafactor's decay exponent 0.8)")
    eps: float = setting(1e-8, "adamw / adafactor epsilon")
    momentum: float = setting(0.0, "sgd only (0 = plain SGD)")
    nesterov: bool = setting(False, "sgd only: Nesterov momentum")
    weight_decay: float = setting(
        0.01, "decoupled (AdamW-style: update -= lr * wd * param) for every optimizer; per-leaf "
        "multiplier Rule.wd; leaves matching a no_decay pattern get none")
    no_decay: tuple[str, ...] = setting(DEFAULT_NO_DECAY, "regexes (fullmatch on canonical "
                                        "paths) of leaves without weight decay")
    schedule: str = setting(
        "linear", "after warmup_steps of linear warmup from 0: constant | linear | cosine (to "
        "learning_rate * end_factor over decay_steps) | inverse_sqrt | step (x step_factor at "
        "each of step_boundaries)", choices=SCHEDULES)
    warmup_steps: int = setting(0, "steps of linear warmup from 0")
    decay_steps: int | None = setting(None, "linear / cosine decay length; None: the rest of "
                                      "the run")
    end_factor: float = setting(0.0, "linear / cosine: the final rate as a fraction of the peak")
    step_boundaries: tuple[int, ...] = setting((), "schedule='step': the optimizer steps where "
                                               "the rate is multiplied by step_factor")
    step_factor: float = setting(0.1, "schedule='step': the factor at each boundary")
    grad_clip_norm: float | None = setting(1.0, "clip the global gradient norm over trainable "
                                           "leaves; 0 or None: no clipping")

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got "
                             f"{self.learning_rate}")
        if not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got "
                             f"{self.weight_decay}")
        if self.warmup_steps < 0 or (self.decay_steps is not None and self.decay_steps < 1):
            raise ValueError("warmup_steps must be >= 0 and decay_steps >= 1")
        if self.schedule == "step" and not self.step_boundaries:
            raise ValueError("schedule='step' needs step_boundaries (optimizer steps)")
        if list(self.step_boundaries) != sorted(self.step_boundaries):
            raise ValueError(f"step_boundaries must increase, got {self.step_boundaries}")
        # Lists from configs become tuples so the config stays hashable and frozen.
        object.__setattr__(self, "no_decay", tuple(self.no_decay))
        object.__setattr__(self, "step_boundaries", tuple(int(b) for b in self.step_boundaries))

    @property
    def betas(self) -> tuple[float | None, float | None]:
        d1, d2 = _DEFAULT_BETAS[self.name]
        return (d1 if self.b1 is None else self.b1, d2 if self.b2 is None else self.b2)

    @classmethod
    def from_config(cls, cfg: Any) -> "OptimizerConfig":
        """From an ml_collections ConfigDict, a mapping or an OptimizerConfig; unknown keys fail."""
        return from_config(cls, cfg, "optimizer")
