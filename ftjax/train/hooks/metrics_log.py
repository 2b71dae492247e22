"""Train metrics to WORKDIR/metrics.jsonl, TensorBoard and the progress bar, and eval results.

Metrics are fetched from the device every `log_every` steps (one host sync for all of them), so
the host never waits on the device in between. A train row holds the last step's metrics, the
tokens/s since the previous row, the skipped-step count of the interval and each parameter
group's effective learning rate at that step (LLRD and unfreezing phases made visible).
"""

from __future__ import annotations

import time

import numpy as np

from ftjax.optim import effective_lrs
from ftjax.train.hooks.base import Gathering


class StepClock:
    """Wall time per train step, read at the host syncs the log makes anyway.

    Each interval between two syncs is divided by its steps, so the time includes the input
    pipeline but not evaluations or checkpoint saves (the clock restarts after them). The first
    interval after a (re)start holds the compilation and is left out; with log_every=1 that is
    just the first step.
    """

    def __init__(self):
        self.per_step: list[float] = []
        self._first = True
        self._mark = time.perf_counter()

    def restart(self) -> None:
        self._mark = time.perf_counter()

    def lap(self, steps: int) -> None:
        now = time.perf_counter()
        if steps and not self._first:
            self.per_step.extend([(now - self._mark) / steps] * steps)
        self._first = self._first and not steps
        self._mark = now

    def median(self) -> float | None:
        return float(np.median(self.per_step)) if self.per_step else None


class MetricsLog(Gathering):
    def __init__(self, log_every: int, steps: int):
        super().__init__(log_every, steps)
        self.clock = StepClock()
        self.tokens_seen = self.token_time = 0.0

    def on_start(self, trainer):
        self.clock.restart()

    def handle(self, trainer) -> None:
        if not self.pending:
            return
        steps, rows = self.take()
        self.clock.lap(len(rows))
        last = rows[-1]
        tokens = float(sum(r["tokens"] for r in rows))
        rate = trainer.progress.update(len(rows), tokens, last["loss"])
        self.tokens_seen += tokens
        self.token_time += tokens / max(rate, 1e-9)
        row = {"step": steps[-1], **last, "tokens_per_s": rate,
               "nonfinite_total": int(sum(r["nonfinite"] for r in rows))}
        exp = trainer.exp
        lrs = effective_lrs(steps[-1] - 1, exp.resolved, exp.learning_rate)
        row.update({f"lr/{group}": lr for group, lr in lrs.items()})
        trainer.log.write(row)

    def on_eval(self, trainer, step, results):
        self.handle(trainer)
        for split, metrics in results.items():
            trainer.log.write({"step": step, "split": split, **metrics}, prefix=f"eval_{split}")
        summary = "  ".join(f"{split}: loss {r['loss']:.4f} acc {r.get('accuracy', float('nan')):.4f}"
                            for split, r in results.items())
        trainer.say(f"step {step}: {summary}")
        self.clock.restart()
        return None

    def on_checkpoint(self, trainer, step, best):
        self.clock.restart()

    def on_end(self, trainer, outcome):
        self.handle(trainer)
        trainer.summary["train_tokens_per_s"] = (self.tokens_seen / self.token_time
                                                 if self.token_time else 0.0)
        trainer.summary["step_time_s"] = self.clock.median()
