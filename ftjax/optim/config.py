"""Optimizer settings: one frozen dataclass, read strictly from `cfg.optimizer` (DESIGN.md 8)."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

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
    """Everything make_optimizer and learning_rate_fn read.

    name: adamw | sgd | adafactor | lion.
    learning_rate: the peak rate. The default is a small one suited to full fine-tuning of a
      pretrained model; linear probes and BitFit usually want 1e-3 or more.
    b1, b2: moment decays; None takes the optimizer's usual value (adamw 0.9/0.999, lion
      0.9/0.99, adafactor: no first moment, 0.8 second-moment decay exponent).
    momentum, nesterov: SGD only (0 = plain SGD).
    weight_decay: decoupled (AdamW-style: update -= lr * wd * param) for every optimizer; per-leaf
      multiplier Rule.wd; leaves matching a `no_decay` pattern get none.
    schedule: constant | linear | cosine | inverse_sqrt | step, after `warmup_steps` of linear
      warmup from 0. linear/cosine decay to learning_rate * end_factor over `decay_steps` (None:
      the rest of the run); inverse_sqrt decays as sqrt(max(warmup_steps, 1) / step); step
      multiplies by `step_factor` at each of `step_boundaries` (absolute optimizer steps).
    grad_clip_norm: clip the global norm over trainable leaves (None / 0: no clipping).
    accumulation_steps: micro-batches per optimizer step. The TRAIN STEP accumulates (a scan over
      micro-batches, normalized by the total real-token count); the optimizer never sees micro-
      batches, and every step count here (warmup, decay, unfreezing) is in optimizer steps.
    """

    name: str = "adamw"
    learning_rate: float = 2e-5
    b1: float | None = None
    b2: float | None = None
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.01
    no_decay: tuple[str, ...] = DEFAULT_NO_DECAY
    schedule: str = "linear"
    warmup_steps: int = 0
    decay_steps: int | None = None
    end_factor: float = 0.0
    step_boundaries: tuple[int, ...] = ()
    step_factor: float = 0.1
    grad_clip_norm: float | None = 1.0
    accumulation_steps: int = 1

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected one of {SCHEDULES}")
        if self.learning_rate < 0 or self.weight_decay < 0:
            raise ValueError("learning_rate and weight_decay must be >= 0")
        if self.warmup_steps < 0 or (self.decay_steps is not None and self.decay_steps < 1):
            raise ValueError("warmup_steps must be >= 0 and decay_steps >= 1")
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {self.accumulation_steps}")
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


def from_config(cls: type, cfg: Any, what: str):
    """A settings dataclass `cls` from a ConfigDict / mapping / instance / None (defaults).

    Unknown keys are an error naming the closest known one: a typo must never fall back to a
    default silently.
    """
    if cfg is None:
        return cls()
    if isinstance(cfg, cls):
        return cfg
    values = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise KeyError(f"unknown {what} setting {key!r}{hint}")
    return cls(**values)
