"""SIGTERM / Ctrl-C: finish the current step, save a checkpoint, stop; the same command resumes.

One process: Python handlers set a flag the hook reads after every step. Several processes must
stop at one step, since the checkpoint that follows is a collective: jax.distributed's
preemption notifier catches a SIGTERM on any of them and `reached_preemption_sync_point(step)`
then turns true on all at the same step. A Python SIGTERM handler would replace jax's notifier,
so none is installed there; SIGINT keeps its default (KeyboardInterrupt, no save: the other
hosts cannot know).
"""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils

from ftjax.train.hooks.base import Hook, Request


class StopOnSignal(Hook):
    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}
        self._synced = jax.process_count() > 1

    def on_start(self, trainer):
        if self._synced:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def on_step_end(self, trainer, step, metrics):
        if self._synced and multihost_utils.reached_preemption_sync_point(step):
            self.requested = "SIGTERM (preemption notice, synced over processes)"
        if self.requested:
            return Request(stop=self.requested, interrupt=True)
        return None

    def on_end(self, trainer, outcome):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if outcome == "interrupted":
            trainer.say(f"{self.requested}: saved a checkpoint at step {int(trainer.state.step)}; "
                        f"run the same command to resume", every_process=True)
