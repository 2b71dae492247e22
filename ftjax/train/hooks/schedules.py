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
    """Evaluations every `every` steps and at the last one; with `at_start`, also before the
    first step of a fresh run (step 0: the model as set up, which selection may then keep)."""

    request = Request(eval=True)

    def __init__(self, every: int, steps: int, at_start: bool = False):
        super().__init__(every, steps)
        self.at_start = at_start

    def on_start(self, trainer):
        return self.request if self.at_start and trainer.start_step == 0 else None


class CheckpointEvery(Every):
    request = Request(checkpoint=True)
