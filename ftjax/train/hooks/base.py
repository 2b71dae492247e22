"""The hook protocol of the Trainer (ftjax.train.trainer).

A hook is an object with any of these methods (the Hook base class gives no-op defaults):

    on_start(trainer)                        the state is set up (restored when resuming)
    on_step_end(trainer, step, metrics)      after every step; `step` counts finished steps
                                             (1 after the first); `metrics` is a StepMetrics
    on_eval(trainer, step, results)          after an evaluation: {split: {metric: value}}
    on_checkpoint(trainer, step, best)       after a checkpoint was saved (best: the best one)
    on_end(trainer, outcome)                 once: "finished", "stopped" (a hook asked),
                                             "interrupted" (a signal; the run resumes later)
                                             or "failed" (an exception is on its way out)

A hook can also add metrics to every evaluation (generation-based ones: BLEU of decoded
translations, exact match of generated answers) with

    extend_eval(trainer, results)            add {metric: value} to results[split] for the
                                             splits it measures, before any on_eval sees them
    eval_metric_names                        the names it adds (checked against best_metric)

so selection, early stopping, metrics.jsonl and the final report treat them like the eval
step's own.

on_start, on_step_end and on_eval may return a Request: an evaluation, a checkpoint, or a
stop (with its reason; a stop saves a checkpoint too, and `interrupt=True` marks a run to be
resumed, which gets no final evaluation); the Trainer ORs the requests of all hooks and
carries them out, in that order, after the hooks of that event ran. A hook that keeps state
across a resume (the best value so far, evaluations without improvement) gives `state_dict()`
/ `load_state_dict(d)` (JSON values); the Trainer saves them with every checkpoint.

Metrics stay on the device until a hook asks: `metrics.get()` fetches them (one host sync,
cached), so a hook that only counts steps costs nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Request:
    """What a hook asks the Trainer to do next."""

    eval: bool = False
    checkpoint: bool = False
    stop: str | None = None  # why the run stops (a stop also saves a checkpoint)
    interrupt: bool = False  # with stop: the run is to be resumed (no final evaluation)

    def __or__(self, other: "Request | None") -> "Request":
        if other is None:
            return self
        return Request(eval=self.eval or other.eval,
                       checkpoint=self.checkpoint or other.checkpoint,
                       stop=self.stop or other.stop,
                       interrupt=self.interrupt or other.interrupt)


NOTHING = Request()


class StepMetrics:
    """One step's metrics: device arrays until `get()` fetches them (once; then cached)."""

    def __init__(self, device: dict):
        self.device = device
        self._host: dict[str, float] | None = None

    def get(self) -> dict[str, float]:
        if self._host is None:
            self.fill(jax.device_get(self.device))
        return self._host

    def fill(self, fetched: dict) -> None:
        """Cache values fetched elsewhere (a hook that fetches many steps in one sync)."""
        self._host = {key: float(value) for key, value in fetched.items()}

    @property
    def fetched(self) -> bool:
        return self._host is not None


def fetch_all(pending: list[StepMetrics]) -> list[dict[str, float]]:
    """Host values of many steps' metrics in one device_get (cached on each)."""
    missing = [m for m in pending if not m.fetched]
    for metrics, fetched in zip(missing, jax.device_get([m.device for m in missing])):
        metrics.fill(fetched)
    return [m.get() for m in pending]


class Hook:
    """Base class with no-op methods; override what you need (see the module docstring)."""

    eval_metric_names: tuple[str, ...] = ()

    def extend_eval(self, trainer: Any, results: dict) -> None:
        pass

    def on_start(self, trainer: Any) -> Request | None:
        return None

    def on_step_end(self, trainer: Any, step: int, metrics: StepMetrics) -> Request | None:
        return None

    def on_eval(self, trainer: Any, step: int, results: dict) -> Request | None:
        return None

    def on_checkpoint(self, trainer: Any, step: int, best: bool) -> None:
        pass

    def on_end(self, trainer: Any, outcome: str) -> None:
        pass


class Gathering(Hook):
    """A hook that gathers each step's metrics and handles them every `every` steps and at the
    last step (`steps`), when the log fetches them anyway: `handle(trainer)` reads and clears
    `pending`, a list of (step, StepMetrics)."""

    def __init__(self, every: int, steps: int):
        self.every, self.steps = every, steps
        self.pending: list[tuple[int, StepMetrics]] = []

    def on_step_end(self, trainer, step, metrics):
        self.pending.append((step, metrics))
        if step % self.every == 0 or step == self.steps:
            self.handle(trainer)
        return None

    def take(self) -> tuple[list[int], list[dict[str, float]]]:
        """The gathered steps and their host metrics (one fetch for all); clears them."""
        steps = [s for s, _ in self.pending]
        rows = fetch_all([m for _, m in self.pending])
        self.pending.clear()
        return steps, rows

    def handle(self, trainer) -> None:
        """Override: what to do with the gathered metrics."""
