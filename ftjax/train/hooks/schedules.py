"""Evaluations and checkpoints every N steps, and at the last step."""

from __future__ import annotations

from ftjax.train.hooks.base import Hook, Request


class EvalEvery(Hook):
    """Asks for an evaluation every `every` steps and at the last one (`steps`)."""

    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps

    def on_step_end(self, trainer, step, metrics):
        if step % self.every == 0 or step == self.steps:
            return Request(eval=True)
        return None


class CheckpointEvery(Hook):
    """Asks for a checkpoint every `every` steps and at the last one (`steps`)."""

    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps

    def on_step_end(self, trainer, step, metrics):
        if step % self.every == 0 or step == self.steps:
            return Request(checkpoint=True)
        return None
