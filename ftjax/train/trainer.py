"""The Trainer: it steps; everything else is a hook (ftjax.train.hooks).

    trainer = Trainer(build_experiment(cfg), "workdirs/run", hooks=[MyHook()])
    result = trainer.fit()

`fit()` resumes from the latest checkpoint in the workdir when there is one (bit-identical
losses: the data position, rng and optimizer state are in the checkpoint), then runs steps until
`cfg.steps` or until a hook asks to stop. After each step the hooks see its metrics and may ask
for an evaluation, a checkpoint or a stop; the Trainer carries out what they ask and tells them
(on_eval, on_checkpoint). Evaluation, checkpoint schedules, best-checkpoint keeping, early
stopping, logging, unfreeze reports, signal handling, non-finite handling and the final report
are the default hooks (`default_hooks(cfg)`); a config adds its own (`hooks`), Python passes
more.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import jax

from ftjax import parallel
from ftjax.io.checkpoint import Checkpointer, IncompatibleCheckpointError
from ftjax.optim import trainability
from ftjax.settings import ConfigError
from ftjax.train.evaluation import eval_metric_names, evaluate_splits
from ftjax.train.experiment import Experiment
from ftjax.train.hooks import (
    Hook,
    Request,
    StepMetrics,
    default_hooks,
    hooks_from_config,
)
from ftjax.train.logging import MetricsWriter, NoMetrics, Progress
from ftjax.train.restore import DATA_FACTS
from ftjax.train.step import compiled_memory
from ftjax.train.workdir import (
    ResumeError,
    WorkdirLock,
    check_fresh_start,
    check_resume,
)
from ftjax.utils.jsonio import write_json


@dataclasses.dataclass
class RunResult:
    workdir: Path
    final_step: int
    eval: dict  # split -> metrics, measured at the end with the kept (best or last) params
    best_step: int | None
    stopped_early: bool
    interrupted: bool
    nonfinite_steps: int
    train_tokens_per_s: float
    wall_s: float
    experiment: Experiment
    state: object  # the final TrainState (the best checkpoint's when one was restored)
    step_time_s: float | None = None  # median wall time per train step
    step_memory: dict | None = None  # compiled train step memory (train.step.compiled_memory)


class Trainer:
    """Runs an Experiment in a workdir. Attributes hooks may use: `cfg`, `exp`, `workdir`,
    `state` (the current TrainState), `host_batch` (this process's rows of the step's batch,
    numpy, as the data pipeline gave them), `start_step`, `primary` (this process writes the
    run's files), `log` (metrics.jsonl / TensorBoard), `checkpoints`, `summary` (what the run
    reports at the end: hooks fill it), and the methods `say`, `evaluate`, `save`."""

    def __init__(self, experiment: Experiment, workdir, *, hooks: Sequence[Hook] = (),
                 quiet: bool = False, defaults: bool = True, allow_config_change: bool = False,
                 allow_inexact_resume: bool = False):
        self.exp, self.cfg = experiment, experiment.cfg
        self.workdir = Path(workdir)
        self.hooks = [*(default_hooks(self.cfg) if defaults else ()),
                      *hooks_from_config(self.cfg), *hooks]
        self.quiet = quiet
        # Resuming a workdir: a config that changes what trains, or a checkpoint without this
        # process's data position, is refused unless allowed (ftjax.train.workdir).
        self.allow_config_change = allow_config_change
        self.allow_inexact_resume = allow_inexact_resume
        self.state = experiment.state
        self.host_batch: dict | None = None
        self.primary = parallel.is_primary()
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------
    # What hooks call

    def say(self, text: str, *, every_process: bool = False) -> None:
        self.progress.write(text, every_process=every_process)

    def evaluate(self, splits: Sequence[str] | None = None) -> dict:
        """{split: metrics} of the current parameters (cfg.eval_splits by default; with
        several sources also {split/source: metrics}, the split's own entry their average)."""
        results = evaluate_splits(self.exp, self.eval_step, self.state,
                                  splits or self.cfg.eval_splits)
        for hook in self.hooks:  # generation-based metrics (ftjax.train.hooks.base)
            extend = getattr(hook, "extend_eval", None)
            if extend is not None:
                extend(self, results)
        return results

    def save(self, *, best: bool = False) -> None:
        meta = {"model": self.cfg.model.name, "base_hash": self.exp.base_hash,
                "config": self.cfg.to_dict(), "hooks": self._hook_states()}
        self.checkpoints.save(self.state, iterator=self.data, meta=meta, best=best)
        self._dispatch("on_checkpoint", int(self.state.step), best)

    # ----------------------------------------------------------------------------------------
    # The loop

    def fit(self) -> RunResult:
        self.started = time.perf_counter()
        self._set_up()
        outcome = "failed"
        try:
            self._carry_out(self.start_step, self._dispatch("on_start"))
            outcome = self._loop()
            self.summary["final_step"] = int(self.state.step)
            self._dispatch("on_end", outcome)
        except BaseException:
            if outcome == "failed":  # on_end of a run that raised: hooks release what they hold
                self._dispatch("on_end", outcome)
            raise
        finally:
            self._close()
        return self._result(outcome)

    def _loop(self) -> str:
        """Steps until the last one ("finished") or a hook's stop ("stopped" / "interrupted")."""
        for step in range(self.start_step, self.cfg.steps):
            self.host_batch = next(self.data)
            batch = self.exp.place_train_batch(self.host_batch)
            if step == self.start_step:  # compiles; the first call reuses the executable
                self.summary["step_memory"] = compiled_memory(self.step, self.state, batch)
            self.state, metrics = self.step(self.state, batch)
            request = self._dispatch("on_step_end", step + 1, StepMetrics(metrics))
            request = self._carry_out(step + 1, request)
            if request.stop:
                return "interrupted" if request.interrupt else "stopped"
        return "finished"

    def _carry_out(self, step: int, request: Request) -> Request:
        """Evaluate, then checkpoint, as asked; an evaluation may add requests of its own."""
        if request.eval:
            results = self.evaluate()
            self.summary["last_eval"] = {"step": step, **results}
            request = request | self._dispatch("on_eval", step, results)
        if request.checkpoint or request.stop:
            self.save()
        return request

    def _dispatch(self, event: str, *args) -> Request:
        request = Request()
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                request = request | method(self, *args)
        return request

    # ----------------------------------------------------------------------------------------
    # Set-up and clean-up

    def _set_up(self) -> None:
        """Lock the workdir, restore its checkpoint (guarded: the same run, an exact data
        position), write the run's files and open its logs. The lock is released on failure."""
        metric = self.cfg.best_metric  # checked before anything is written
        if metric and metric not in ("loss", "accuracy", "examples"):
            known = eval_metric_names(self.exp) + [
                name for hook in self.hooks for name in getattr(hook, "eval_metric_names", ())]
            if metric not in known:
                raise ConfigError(f"best_metric {metric!r} is not a metric the evaluation "
                                  f"reports: {known}")
        if self.workdir.exists() and not self.workdir.is_dir():
            raise ConfigError(f"--workdir {self.workdir} is a file, not a directory")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # With several processes, process 0 alone writes the run's files (and holds the lock).
        self.lock = WorkdirLock(self.workdir).acquire() if self.primary else None
        try:
            notes = self._restore()
            report = self._write_run_files()
        except BaseException:
            self._release()
            raise
        self.log = MetricsWriter(self.workdir, resume_step=self.start_step) if self.primary \
            else NoMetrics()
        self.progress = Progress(self.cfg.steps, self.start_step, quiet=self.quiet,
                                 process=jax.process_index() if jax.process_count() > 1
                                 else None)
        if self.start_step == 0:
            self.say(trainability.format_report(report))
        for note in self.exp.data_notes():
            self.say(note)
        for note, every_process in notes:
            self.say(note, every_process=every_process)

    def _restore(self) -> list[tuple[str, bool]]:
        """The latest checkpoint into the state; what to say about it."""
        notes = []
        if self.lock is not None and self.lock.taken_over:
            owner = self.lock.taken_over
            notes.append((f"took over the lock of pid {owner.get('pid')} on {owner.get('host')} "
                          f"(that process is gone)", False))
        self.checkpoints = Checkpointer(self.workdir, keep=self.cfg.keep_checkpoints)
        # The saved config and base are compared before any array is restored: a run that
        # would train something else is refused by what differs, not by a leaf that no longer
        # fits.
        meta = self.checkpoints.saved_meta() or {}
        changes = check_resume(self.workdir, meta.get("config"), self.cfg.to_dict(),
                               allow=self.allow_config_change)
        if meta.get("base_hash") not in (None, self.exp.base_hash) and not changes:
            raise IncompatibleCheckpointError(
                f"{self.workdir}: the checkpoint was trained on a different base model "
                f"({meta.get('model')}); use a fresh --workdir")
        self.data = self.exp.train_iterator()
        restored = self.checkpoints.restore(self.state, iterator=self.data)
        if restored is None:
            if self.primary:
                check_fresh_start(self.workdir)
            self.start_step = 0
            return notes
        if not restored.iterator_restored and not self.allow_inexact_resume:
            raise ResumeError(
                f"{self.workdir}: checkpoint {restored.step} holds no data position for process "
                f"{jax.process_index()} (saved by another number of processes?), so the resumed "
                f"run would not see the data it would have; pass --allow-inexact-resume to "
                f"restart the input stream")
        self.state = restored.state
        self._load_hook_states(restored.meta.get("hooks", {}))
        self.start_step = int(self.state.step)
        notes.append((f"resumed from step {self.start_step} in {self.workdir}", True))
        notes += [(f"config changed since the checkpoint: {c}", False) for c in changes]
        if not restored.iterator_restored:
            notes.append(("the input stream starts afresh (--allow-inexact-resume)", True))
        return notes

    def _write_run_files(self) -> dict:
        """Compile handles, the parameter report (returned) and the run's JSON files."""
        self.step = self.exp.jit_train_step()
        self.eval_step = self.exp.jit_eval_step()
        report = trainability.report(self.state.param_shapes(), self.exp.resolved,
                                     self.state.opt_state)
        self.summary["params"] = {"trainable": report["trainable"], "total": report["total"]}
        if self.primary:
            write_json(self.workdir / "params_report.json", report)
            write_json(self.workdir / "config.json", self.cfg.to_dict())
            write_json(self.workdir / DATA_FACTS, self.exp.data_facts())
            write_json(self.workdir / "sharding.json", self.exp.plan.describe())
        return report

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def _hook_states(self) -> dict:
        return {type(h).__name__: h.state_dict() for h in self.hooks if hasattr(h, "state_dict")}

    def _load_hook_states(self, states: dict) -> None:
        for hook in self.hooks:
            if hasattr(hook, "load_state_dict") and type(hook).__name__ in states:
                hook.load_state_dict(states[type(hook).__name__])

    def _close(self) -> None:
        try:
            self.checkpoints.wait()
            self.checkpoints.close()
            self.progress.close()
            self.log.close()
        finally:
            self._release()

    def _result(self, outcome: str) -> RunResult:
        s = self.summary
        return RunResult(
            workdir=self.workdir, final_step=s.get("final_step", int(self.state.step)),
            eval=s.get("eval", {}), best_step=s.get("best_step"),
            stopped_early=outcome == "stopped", interrupted=outcome == "interrupted",
            nonfinite_steps=int(self.state.nonfinite_steps),
            train_tokens_per_s=s.get("train_tokens_per_s", 0.0),
            wall_s=s.get("wall_s", time.perf_counter() - self.started),
            experiment=self.exp, state=self.state, step_time_s=s.get("step_time_s"),
            step_memory=s.get("step_memory"))
