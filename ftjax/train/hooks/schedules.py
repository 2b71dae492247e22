"""Evaluations and checkpoints every N steps, and at the last step."""

from __future__ import annotations

from ftjax.train.hooks.base import Hook, Request


class Every(Hook):
    """Asks for `request` every `every` steps and at the last one (`steps`)."""

    request = Request()

    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps

    def on_step_end(self, trainer, step, metrics):
        return self.request if self.due(step) else None


class EvalEvery(Every):
    request = Request(eval=True)


class CheckpointEvery(Every):
    request = Request(checkpoint=True)
