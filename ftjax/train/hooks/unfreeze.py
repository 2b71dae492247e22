"""Gradual unfreezing made visible: a line when parameter groups start training."""

from __future__ import annotations

from ftjax.optim import effective_lrs, unfreeze_steps
from ftjax.train.hooks.base import Hook


class UnfreezeReport(Hook):
    """Says which groups train from the first step, and which start at each later step (the
    rules' `unfreeze_at`: gradual unfreezing, or a config's own rules)."""

    def __init__(self):
        self.training: set[str] = set()

    def _training_at(self, trainer, step: int) -> set[str]:
        exp = trainer.exp
        return {group for group, lr in effective_lrs(step, exp.resolved,
                                                     exp.learning_rate).items() if lr > 0}

    def on_start(self, trainer):
        self.training = self._training_at(trainer, trainer.start_step)
        self.phases = [s for s in unfreeze_steps(trainer.exp.resolved) if s > trainer.start_step]

    def on_step_end(self, trainer, step, metrics):
        if self.phases and step == self.phases[0]:
            self.phases.pop(0)
            now = self._training_at(trainer, step)
            started = sorted(now - self.training)
            self.training = now
            if started:
                trainer.say(f"step {step}: unfrozen {', '.join(started)}")
        return None
