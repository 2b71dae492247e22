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
from ftjax.train.evaluation import evaluate_splits
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
    `state` (the current TrainState), `start_step`, `primary` (this process writes the run's
    files), `log` (metrics.jsonl / TensorBoard), `checkpoints`, `summary` (what the run reports
    at the end: hooks fill it), and the methods `say`, `evaluate`, `save`."""

    def __init__(self, experiment: Experiment, workdir, *, hooks: Sequence[Hook] = (),
                 quiet: bool = False, defaults: bool = True):
        self.exp, self.cfg = experiment, experiment.cfg
        self.workdir = Path(workdir)
        self.hooks = [*(default_hooks(self.cfg) if defaults else ()),
                      *hooks_from_config(self.cfg), *hooks]
        self.quiet = quiet
        self.state = experiment.state
        self.primary = parallel.is_primary()
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------
    # What hooks call

    def say(self, text: str, *, every_process: bool = False) -> None:
        self.progress.write(text, every_process=every_process)

    def evaluate(self, splits: Sequence[str] | None = None) -> dict:
        """{split: metrics} of the current parameters (cfg.eval_splits by default; with
        several sources also {split/source: metrics}, the split's own entry their average)."""
        return evaluate_splits(self.exp, self.eval_step, self.state,
                               splits or self.cfg.eval_splits)

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
            self._dispatch("on_start")
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
            batch = self.exp.place_train_batch(next(self.data))
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
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoints = Checkpointer(self.workdir, keep=self.cfg.keep_checkpoints)
        self.data = self.exp.train_iterator()
        restored = self.checkpoints.restore(self.state, iterator=self.data)
        if restored is not None:
            if restored.meta.get("base_hash") not in (None, self.exp.base_hash):
                raise IncompatibleCheckpointError(
                    f"{self.workdir}: the checkpoint was trained on a different base model "
                    f"({restored.meta.get('model')}); use a fresh --workdir")
            self.state = restored.state
            self._load_hook_states(restored.meta.get("hooks", {}))
        self.start_step = int(self.state.step)
        self.step = self.exp.jit_train_step()
        self.eval_step = self.exp.jit_eval_step()
        report = trainability.report(self.state.param_shapes(), self.exp.resolved,
                                     self.state.opt_state)
        self.summary["params"] = {"trainable": report["trainable"], "total": report["total"]}
        if self.primary:  # with several processes, process 0 alone writes the run's files
            write_json(self.workdir / "params_report.json", report)
            write_json(self.workdir / "config.json", self.cfg.to_dict())
            write_json(self.workdir / DATA_FACTS, self.exp.data_facts())
            write_json(self.workdir / "sharding.json", self.exp.plan.describe())
        self.log = MetricsWriter(self.workdir, resume_step=self.start_step) if self.primary \
            else NoMetrics()
        self.progress = Progress(self.cfg.steps, self.start_step, quiet=self.quiet,
                                 process=jax.process_index() if jax.process_count() > 1
                                 else None)
        if restored is None:
            self.say(trainability.format_report(report))
            return
        self.say(f"resumed from step {self.start_step} in {self.workdir}", every_process=True)
        if not restored.iterator_restored:
            self.say("the checkpoint holds no data position for this process (saved by "
                     "another number of processes?): the input stream starts afresh",
                     every_process=True)

    def _hook_states(self) -> dict:
        return {type(h).__name__: h.state_dict() for h in self.hooks if hasattr(h, "state_dict")}

    def _load_hook_states(self, states: dict) -> None:
        for hook in self.hooks:
            if hasattr(hook, "load_state_dict") and type(hook).__name__ in states:
                hook.load_state_dict(states[type(hook).__name__])

    def _close(self) -> None:
        self.checkpoints.wait()
        self.checkpoints.close()
        self.progress.close()
        self.log.close()

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
