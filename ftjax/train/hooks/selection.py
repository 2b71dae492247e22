"""Model selection on the validation metric: keep the best checkpoint, stop early.

Both follow the first of `eval_splits` (its `metric`); a value counts as better only by more
than `min_delta`. Their state (the best value, evaluations without improvement) is saved with
every checkpoint, so a resumed run selects as the uninterrupted one would.
"""

from __future__ import annotations

from ftjax.train.hooks.base import Hook, Request


class MetricTracker:
    """The best value of one metric so far."""

    def __init__(self, metric: str, mode: str, min_delta: float = 0.0):
        self.metric, self.mode, self.min_delta = metric, mode, min_delta
        self.best: float | None = None
        self.best_step: int | None = None

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = value - self.best if self.mode == "max" else self.best - value
        return delta > self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record a value; True when it is the new best."""
        if not self.improved(value):
            return False
        self.best, self.best_step = value, step
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")


def selection_value(results: dict, split: str, metric: str) -> float:
    """The metric of the selection split (a KeyError names what is there)."""
    if metric not in results[split]:
        raise KeyError(f"best_metric {metric!r} is not among the metrics of split {split!r}: "
                       f"{sorted(results[split])}")
    return results[split][metric]


class BestCheckpoint(Hook):
    """Saves a checkpoint whenever the selection metric improves, and at the end of a finished
    or stopped run restores it as the run's final state."""

    def __init__(self, split: str, metric: str, mode: str, min_delta: float = 0.0):
        self.split = split
        self.tracker = MetricTracker(metric, mode, min_delta)

    def on_eval(self, trainer, step, results):
        if self.tracker.update(selection_value(results, self.split, self.tracker.metric), step):
            trainer.save(best=True)
        return None

    def on_end(self, trainer, outcome):
        if outcome not in ("finished", "stopped"):
            return
        trainer.checkpoints.wait()
        best_step = trainer.checkpoints.best_step()
        trainer.summary["best_step"] = best_step
        if best_step is not None and best_step != int(trainer.state.step):
            trainer.state = trainer.checkpoints.restore(trainer.state, best=True).state
            trainer.say(f"restored the best checkpoint (step {best_step}, "
                        f"{self.tracker.metric} {self.tracker.best:.4f})")

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)


class EarlyStopping(Hook):
    """Asks to stop after `patience` evaluations without improvement of the selection metric."""

    def __init__(self, split: str, metric: str, mode: str, patience: int,
                 min_delta: float = 0.0):
        self.split, self.patience = split, patience
        self.tracker = MetricTracker(metric, mode, min_delta)
        self.bad_evals = 0

    def on_eval(self, trainer, step, results):
        if self.tracker.update(selection_value(results, self.split, self.tracker.metric), step):
            self.bad_evals = 0
            return None
        self.bad_evals += 1
        if self.bad_evals < self.patience or step >= trainer.cfg.steps:
            return None
        trainer.say(f"early stopping at step {step}: {self.tracker.metric} has not improved by "
                    f"more than {self.tracker.min_delta} for {self.patience} evaluations")
        return Request(stop="early stopping")

    def state_dict(self) -> dict:
        return {**self.tracker.state_dict(), "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)
        self.bad_evals = state.get("bad_evals", 0)
