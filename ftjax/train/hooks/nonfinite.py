"""A non-finite loss or gradient: the step already skipped the update; say so, or stop.

With "stop" the run saves a checkpoint (it holds the last finite parameters: the bad update was
skipped) and raises NonFiniteLossError. Checked at the log's cadence (`every` steps), when the
metrics are fetched anyway.
"""

from __future__ import annotations

from ftjax.train.hooks.base import Hook, StepMetrics, fetch_all


class NonFiniteLossError(RuntimeError):
    """Raised with nonfinite="stop" when a step's loss or gradient is not finite."""


class NonFinite(Hook):
    def __init__(self, mode: str, every: int, steps: int):
        if mode not in ("skip", "stop"):
            raise ValueError(f"nonfinite mode must be skip or stop, got {mode!r}")
        self.mode, self.every, self.steps = mode, every, steps
        self.pending: list[tuple[int, StepMetrics]] = []

    def on_step_end(self, trainer, step, metrics):
        self.pending.append((step, metrics))
        if step % self.every == 0 or step == self.steps:
            self.check(trainer)
        return None

    def check(self, trainer) -> None:
        steps = [s for s, _ in self.pending]
        rows = fetch_all([m for _, m in self.pending])
        self.pending.clear()
        for step, row in zip(steps, rows):
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
            self.check(trainer)
