"""The training loop: steps, logging, evaluation, checkpoints, early stopping, clean exits.

`train(cfg, workdir)` resumes from the latest checkpoint in `workdir` when there is one: the same
command continues a killed run, with bit-identical losses (the data iterator state, rng and
optimizer state are all in the checkpoint). SIGTERM / Ctrl-C finish the current step, save a
checkpoint and return. Metrics are fetched from the device only every `log_every` steps, so the
host never waits on the device in between.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from ftjax import parallel
from ftjax.io.adapter import AdapterInfo, save_adapter
from ftjax.io.checkpoint import Checkpointer
from ftjax.optim import effective_lrs, trainability
from ftjax.train.experiment import Experiment, build_experiment, evaluate
from ftjax.train.logging import MetricsWriter, NoMetrics, Progress
from ftjax.train.step import compiled_memory


class NonFiniteLossError(RuntimeError):
    """Raised with nonfinite="stop" when a step's loss or gradient is not finite."""


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
    step_time_s: float | None = None  # median wall time per train step (see _StepClock)
    step_memory: dict | None = None  # compiled train step memory (train.step.compiled_memory)


class _StopSignals:
    """Turn SIGTERM / SIGINT into a stop the loop takes between steps (`stop_at`).

    One process: Python handlers set a flag. Several processes must stop at one step, since the
    checkpoint that follows is a collective: jax.distributed's preemption notifier catches a
    SIGTERM on any of them and `reached_preemption_sync_point(step)` then turns true on all at
    the same step. A Python SIGTERM handler would replace jax's notifier, so none is installed
    there; SIGINT keeps its default (KeyboardInterrupt, no save: the other hosts cannot know).
    """

    def __init__(self):
        self.requested = None
        self._previous = {}
        self._synced = jax.process_count() > 1

    def __enter__(self):
        if self._synced:
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def stop_at(self, step: int) -> str | None:
        """What asks the run to stop after `step` (every process calls this at every step)."""
        if self._synced and multihost_utils.reached_preemption_sync_point(step):
            self.requested = "SIGTERM (preemption notice, synced over processes)"
        return self.requested

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _EarlyStopping:
    def __init__(self, mode: str, patience: int, min_delta: float):
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best = None
        self.best_step = None
        self.bad_evals = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = value - self.best if self.mode == "max" else self.best - value
        return delta > self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record an eval; True when the run should stop."""
        if self.improved(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
            return False
        self.bad_evals += 1
        return bool(self.patience) and self.bad_evals >= self.patience

    def state(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.bad_evals = state.get("bad_evals", 0)


class _StepClock:
    """Wall time per train step, read at the host syncs the loop makes anyway (flush).

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


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)  # atomic: a reader never sees half a file


def _save_adapter(cfg, exp: Experiment, state, out: Path) -> AdapterInfo | None:
    """The kept parameters' trainable delta as an adapter-only checkpoint (ftjax.io.adapter).

    Skipped when everything trains (full fine-tuning, llrd, gradual unfreezing): that delta is
    the whole model, which the training checkpoint and `ftjax export` (HF format) already hold.
    """
    mask = trainability.trainable_mask(exp.resolved)
    if not cfg.save_adapter or all(bool(np.all(m)) for m in jax.tree.leaves(mask)):
        return None
    # The run owns WORKDIR/adapter: resuming or re-running it replaces the directory (atomically).
    return save_adapter(out, exp.model, state.params, mask, base_name=cfg.model.name,
                        method=cfg.method, step=int(state.step), overwrite=True)


def train(cfg, workdir, *, quiet: bool = False, experiment: Experiment | None = None) -> RunResult:
    started = time.perf_counter()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exp = experiment or build_experiment(cfg)
    state = exp.state
    base_hash = exp.base_hash
    ckpt = Checkpointer(workdir, keep=cfg.keep_checkpoints)
    train_iter = exp.train_iterator()
    stopper = _EarlyStopping(cfg.best_mode, cfg.early_stopping.patience,
                             cfg.early_stopping.min_delta)

    restored = ckpt.restore(state, iterator=train_iter)
    if restored is not None:
        if restored.meta.get("base_hash") not in (None, base_hash):
            raise RuntimeError(
                f"{workdir}: the checkpoint was trained on a different base model "
                f"({restored.meta.get('model')}); use a fresh --workdir"
            )
        state = restored.state
        stopper.load(restored.meta.get("early_stopping", {}))
    start_step = int(state.step)

    report = trainability.report(state.param_shapes(), exp.resolved, state.opt_state)
    # With several processes, process 0 alone writes the run's files (ftjax.parallel.hosts).
    primary = parallel.is_primary()
    if primary:
        _write_json(workdir / "params_report.json", report)
        _write_json(workdir / "config.json", cfg.to_dict())
        _write_json(workdir / "sharding.json", exp.plan.describe())
    log = MetricsWriter(workdir, resume_step=start_step) if primary else NoMetrics()
    progress = Progress(cfg.steps, start_step, quiet=quiet,
                        process=jax.process_index() if jax.process_count() > 1 else None)
    if restored is not None:
        progress.write(f"resumed from step {start_step} in {workdir}", every_process=True)
        if not restored.iterator_restored:
            progress.write("the checkpoint holds no data position for this process (saved by "
                           "another number of processes?): the input stream starts afresh",
                           every_process=True)
    else:
        progress.write(trainability.format_report(report))
    if exp.plan.fallbacks:
        progress.write(f"mesh {dict(exp.mesh.shape)}: {len(exp.plan.fallbacks)} parameter "
                       f"dimension(s) replicated, not divisible by their mesh axis (sharding.json)")

    train_step = exp.jit_train_step()
    eval_step = exp.jit_eval_step()

    def meta():
        return {"model": cfg.model.name, "base_hash": base_hash, "config": cfg.to_dict(),
                "early_stopping": stopper.state()}

    def save(best: bool = False):
        ckpt.save(state, iterator=train_iter, meta=meta(), best=best)

    pending: list[tuple[int, dict]] = []
    tokens_seen, token_time = 0.0, 0.0
    interrupted = stopped_early = False
    clock = _StepClock()
    step_memory = None

    def flush():
        nonlocal tokens_seen, token_time
        if not pending:
            return
        rows = jax.device_get([m for _, m in pending])
        clock.lap(len(rows))
        steps = [s for s, _ in pending]
        pending.clear()
        for step, row in zip(steps, rows):
            if row["nonfinite"]:
                message = f"non-finite loss or gradient at step {step} (update skipped)"
                if cfg.nonfinite == "stop":
                    save()
                    ckpt.wait()
                    raise NonFiniteLossError(
                        f"{message}; stopping as nonfinite='stop'. The checkpoint at step "
                        f"{int(state.step)} in {workdir} holds the last finite parameters."
                    )
                progress.write(message)
        last = rows[-1]
        tokens = float(sum(r["tokens"] for r in rows))
        rate = progress.update(len(rows), tokens, float(last["loss"]))
        tokens_seen += tokens
        token_time += tokens / max(rate, 1e-9)
        row = {"step": steps[-1], **{k: float(np.asarray(v)) for k, v in last.items()},
               "tokens_per_s": rate}
        row["nonfinite_total"] = int(sum(r["nonfinite"] for r in rows))
        # The rate each group trained with at this step: LLRD / unfreezing phases made visible.
        lrs = effective_lrs(steps[-1] - 1, exp.resolved, exp.learning_rate)
        row.update({f"lr/{group}": lr for group, lr in lrs.items()})
        log.write(row)

    last_eval: dict = {}  # split -> metrics of the latest evaluation, with the step it was at

    def run_eval(step: int) -> bool:
        """Evaluate the eval splits; keep the best checkpoint; True to stop early."""
        flush()
        results = last_eval
        results.clear()
        results["step"] = step
        for split in cfg.eval_splits:
            results[split] = evaluate(eval_step, state, exp.placed_eval_batches(split))
            log.write({"step": step, "split": split, **results[split]}, prefix=f"eval_{split}")
        summary = "  ".join(f"{s}: loss {r['loss']:.4f} acc {r['accuracy']:.4f}"
                            for s, r in results.items() if s != "step")
        progress.write(f"step {step}: {summary}")
        if not cfg.best_metric:
            clock.restart()
            return False
        should_stop = stopper.update(results[cfg.eval_splits[0]][cfg.best_metric], step)
        if stopper.best_step == step:  # this evaluation is the new best
            save(best=True)
        clock.restart()
        return should_stop

    with _StopSignals() as signals:
        for step in range(start_step, cfg.steps):
            batch = exp.place_train_batch(next(train_iter))
            if step == start_step:  # compiles the step; its first call reuses the executable
                step_memory = compiled_memory(train_step, state, batch)
            state, metrics = train_step(state, batch)
            done = step + 1
            pending.append((done, metrics))
            if done % cfg.log_every == 0 or done == cfg.steps:
                flush()
            if done % cfg.eval_every == 0 and done < cfg.steps:
                if run_eval(done):
                    stopped_early = True
                    progress.write(
                        f"early stopping at step {done}: {cfg.best_metric} has not improved "
                        f"by more than {cfg.early_stopping.min_delta} for "
                        f"{cfg.early_stopping.patience} evaluations"
                    )
            if done % cfg.checkpoint_every == 0 or stopped_early:
                save()
                clock.restart()
            if signals.stop_at(done):
                flush()
                save()
                interrupted = True
                progress.write(f"{signals.requested}: saved a checkpoint at step {done}; "
                               f"run the same command to resume", every_process=True)
                break
            if stopped_early:
                break
        flush()

    final_step = int(state.step)
    result_eval, best_step, adapter = {}, None, None
    if not interrupted:
        if final_step == cfg.steps and not stopped_early:
            run_eval(final_step)
        save()
        ckpt.wait()
        best_step = ckpt.best_step()
        if best_step is not None and best_step != final_step:
            state = ckpt.restore(state, best=True).state
            progress.write(f"restored the best checkpoint (step {best_step}, "
                           f"{cfg.best_metric} {stopper.best:.4f})")
        kept_step = int(state.step)
        for split in exp.result_splits:
            if last_eval.get("step") == kept_step and split in last_eval:
                result_eval[split] = last_eval[split]  # these params were just evaluated
            else:
                result_eval[split] = evaluate(eval_step, state, exp.placed_eval_batches(split))
        adapter = _save_adapter(cfg, exp, state, workdir / "adapter")
        if adapter is not None:
            progress.write(f"adapter-only checkpoint: {adapter.num_params:,} parameters, "
                           f"{adapter.num_bytes / 2**20:.2f} MiB in {adapter.path}")
    ckpt.wait()
    ckpt.close()
    progress.close()
    wall = time.perf_counter() - started
    result = RunResult(
        workdir=workdir, final_step=final_step, eval=result_eval, best_step=best_step,
        stopped_early=stopped_early, interrupted=interrupted,
        nonfinite_steps=int(state.nonfinite_steps),
        train_tokens_per_s=tokens_seen / token_time if token_time else 0.0, wall_s=wall,
        experiment=exp, state=state, step_time_s=clock.median(), step_memory=step_memory,
    )
    if not interrupted and primary:
        _write_json(workdir / "results.json", {
            "final_step": final_step, "best_step": best_step, "eval": result_eval,
            "stopped_early": stopped_early, "nonfinite_steps": result.nonfinite_steps,
            "train_tokens_per_s": result.train_tokens_per_s, "wall_s": wall,
            "trainable": report["trainable"], "total": report["total"],
            "adapter": None if adapter is None else {
                "path": str(adapter.path), "params": adapter.num_params,
                "bytes": adapter.num_bytes},
            "step_time_s": result.step_time_s, "step_memory": step_memory,
        })
        log.write({"step": final_step, "split": "final", **{
            f"{s}_{k}": v for s, r in result_eval.items() for k, v in r.items()}})
    log.close()
    return result
