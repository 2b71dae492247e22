"""A non-finite loss or gradient: the step already skipped the update; say so, or stop.

With "stop" the run saves a checkpoint (it holds the last finite parameters: the bad update was
skipped) and raises NonFiniteLossError. Checked at the log's cadence (`every` steps), when the
metrics are fetched anyway.
"""

from __future__ import annotations

from ftjax.train.hooks.base import Gathering


class NonFiniteLossError(RuntimeError):
    """Raised with nonfinite="stop" when a step's loss or gradient is not finite."""


class NonFinite(Gathering):
    def __init__(self, mode: str, every: int, steps: int):
        if mode not in ("skip", "stop"):
            raise ValueError(f"nonfinite mode must be skip or stop, got {mode!r}")
        super().__init__(every, steps)
        self.mode = mode

    def handle(self, trainer) -> None:
        for step, row in zip(*self.take()):
            if not row["nonfinite"]:
                continue
            message = f"non-finite loss or gradient at step {step} (update skipped)"
            if self.mode == "stop":
                trainer.save()
                trainer.checkpoints.wait()
                raise NonFiniteLossError(
                    f"{message}; stopping as nonfinite='stop'. The checkpoint at step "
                    f"{int(trainer.state.step)} in {trainer.workdir} holds the last finite "
                    f"parameters.")
            trainer.say(message)

    def on_end(self, trainer, outcome):
        if outcome != "failed":
            self.handle(trainer)
