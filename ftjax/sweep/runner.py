"""Run a sweep: every run through `ftjax.train.loop.train`, resumable, failures recorded.

Each run has its own directory, <workdir>/<task>/<method>/lr_<lr>/seed_<seed>, and is finished
when its result.json says status "done" with the config the plan asks for now. A rerun of the
sweep therefore skips finished runs; a run without a result (killed mid-way) or with a failed
or stale one is started again from an empty directory rather than resumed, so its wall and
step times always cover one whole run. A run that raises is recorded as failed (error and
traceback in result.json) and the sweep goes on; Ctrl-C stops the sweep after the current run
saved its checkpoint.

Measured per run (result.json):
  trainable, total, trainable_share   ftjax.optim.report (elements that train at some step)
  delta_bytes        nbytes of the trainable leaves, i.e. of the params the checkpoint stores
                     (ftjax.io.checkpoint saves only the trainable tree; optimizer state aside)
  checkpoint_bytes   size on disk of the final checkpoint (params delta + optimizer state +
                     metadata), measured before the checkpoints are deleted
  step_time_s        median wall time per train step (ftjax.train.loop; compile excluded)
  memory_bytes       "compiled step memory" (XLA memory analysis of the train step:
                     arguments + outputs + temporaries), or on GPU with isolate=True the
                     device's peak_bytes_in_use of the run's own process ("peak device memory")
  wall_s             the whole train() call: setup, compile, steps and final evaluations

The untrained baseline (sweep key `baseline`) is set up exactly as a training run and evaluated
without a step: trainable 0, no step time or checkpoint; its wall time is setup + evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import jax

from ftjax.io import reuse_checkpoints
from ftjax.optim import trainability
from ftjax.sweep import select
from ftjax.sweep.plan import BASELINE, RunSpec, Sweep, config_fingerprint, same_config
from ftjax.train.evaluation import evaluate_splits
from ftjax.train.loop import train
from ftjax.train.restore import build_run_experiment
from ftjax.utils.jsonio import write_json
from ftjax.utils.machine import device_description

RESULT, SPEC, LOG = "result.json", "run.json", "train.log"
COMPILED, PEAK = "compiled step memory", "peak device memory"


class SweepInterrupted(RuntimeError):
    """Ctrl-C / SIGTERM during a run: its checkpoint is saved, the sweep stops."""


def read_result(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / RESULT).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _evaluated(spec: RunSpec, cfg, evals: dict) -> dict:
    """A done record's identity and evaluation fields (evals: split -> metrics)."""
    return {
        **spec.to_json(), "status": "done", "model": cfg.model.name,
        "validation_accuracy": evals.get("validation", {}).get("accuracy"),
        "validation_loss": evals.get("validation", {}).get("loss"),
        "test_accuracy": evals.get("test", {}).get("accuracy"),
        "test_loss": evals.get("test", {}).get("loss"), "eval": evals,
    }


def measure(spec: RunSpec, result, run_dir: Path, *, isolated: bool) -> dict:
    """The record of a finished run (see the module docstring for each field)."""
    report = json.loads((run_dir / "params_report.json").read_text())
    delta = sum(int(x.nbytes) for x in jax.tree.leaves(result.state.trainable))
    step_dir = run_dir / "checkpoints" / str(result.final_step)
    memory_bytes, memory_kind = None, None
    if result.step_memory is not None:
        memory_bytes, memory_kind = result.step_memory["total_bytes"], COMPILED
    device = jax.devices()[0]
    peak = None
    if device.platform != "cpu":
        peak = (device.memory_stats() or {}).get("peak_bytes_in_use")
        if peak is not None and isolated:  # a process's peak is one run's only when isolated
            memory_bytes, memory_kind = int(peak), PEAK
    return {
        **_evaluated(spec, result.experiment.cfg, result.eval),
        "trainable": report["trainable"], "total": report["total"],
        "trainable_share": report["trainable_share"], "delta_bytes": delta,
        "checkpoint_bytes": _dir_bytes(step_dir) if step_dir.is_dir() else None,
        "step_time_s": result.step_time_s, "step_memory": result.step_memory,
        "device_peak_bytes": peak, "memory_bytes": memory_bytes, "memory_kind": memory_kind,
        "wall_s": result.wall_s, "train_tokens_per_s": result.train_tokens_per_s,
        "final_step": result.final_step, "best_step": result.best_step,
        "stopped_early": result.stopped_early, "validation_curve": validation_curve(run_dir),
        "device": device_description(), "isolated": isolated,
    }


def validation_curve(run_dir: Path) -> list[list[float]]:
    """[step, validation accuracy] of every evaluation of a run, from its metrics.jsonl: the
    evidence of whether it converged."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [[r["step"], r.get("accuracy")] for r in rows if r.get("split") == "validation"]


def measure_untrained(spec: RunSpec, cfg, started: float) -> dict:
    """The baseline's record: the run's model as set up, evaluated on its eval splits and test."""
    exp = build_run_experiment(cfg)
    eval_step = exp.jit_eval_step()
    evals = evaluate_splits(exp, eval_step, exp.state, exp.result_splits)
    report = trainability.report(exp.state.param_shapes(), exp.resolved, exp.state.opt_state)
    return {
        **_evaluated(spec, cfg, evals), "trainable": 0, "total": report["total"],
        "trainable_share": 0.0, "delta_bytes": 0, "checkpoint_bytes": None,
        "step_time_s": None, "step_memory": None, "device_peak_bytes": None,
        "memory_bytes": None, "memory_kind": None,
        "wall_s": time.perf_counter() - started, "train_tokens_per_s": None, "final_step": 0,
        "device": device_description(), "isolated": False,
    }


def execute(spec: RunSpec, run_dir: Path, *, keep_checkpoints: bool,
            isolated: bool = False) -> dict:
    """Train one run (or evaluate the untrained baseline) in this process and write its
    result.json (done or failed).

    Raises SweepInterrupted when a signal stopped the training.
    """
    started = time.perf_counter()
    try:
        cfg = spec.config()
        with open(run_dir / LOG, "a") as log, contextlib.redirect_stderr(log):
            if spec.phase == BASELINE:
                record = measure_untrained(spec, cfg, started)
            else:
                result = train(cfg, run_dir, quiet=True)
                if result.interrupted:
                    raise SweepInterrupted(f"{spec.run_id} was interrupted (checkpoint saved)")
                record = measure(spec, result, run_dir, isolated=isolated)
        record["config"] = config_fingerprint(cfg)
    except SweepInterrupted:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one run is recorded, not fatal
        record = {**spec.to_json(), "status": "failed", "error": f"{type(err).__name__}: {err}",
                  "traceback": traceback.format_exc(), "wall_s": time.perf_counter() - started}
    write_json(run_dir / RESULT, record)
    if record["status"] == "done" and not keep_checkpoints:
        for name in ("checkpoints", "best"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    return record


def _execute_isolated(spec: RunSpec, run_dir: Path, *, keep_checkpoints: bool) -> dict:
    """The same in a fresh `python -m ftjax.sweep.worker` process (its output in train.log)."""
    write_json(run_dir / SPEC, {"spec": spec.to_json(), "keep_checkpoints": keep_checkpoints})
    root = str(Path(__file__).resolve().parents[2])  # ftjax importable without installing
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    with open(run_dir / LOG, "a") as log:
        code = subprocess.run([sys.executable, "-m", "ftjax.sweep.worker", str(run_dir)],
                              stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code == 130:
        raise SweepInterrupted(f"{spec.run_id} was interrupted (checkpoint saved)")
    record = read_result(run_dir)
    if record is None:
        record = {**spec.to_json(), "status": "failed",
                  "error": f"the worker process exited with code {code} without a result; "
                           f"see {run_dir / LOG}"}
        write_json(run_dir / RESULT, record)
    return record


class Runner:
    """Runs a Sweep's plan in order, phase by phase, and collects the records."""

    def __init__(self, sweep: Sweep, *, log=print):
        self.sweep, self.log = sweep, log
        self.total = sweep.num_runs()
        self.index = 0
        self.ran = self.skipped = 0

    def finished(self, spec: RunSpec) -> dict | None:
        """The run's record when it finished with the config planned now, else None."""
        record = read_result(self.sweep.run_dir(spec))
        if not record or record.get("status") != "done":
            return None
        if not same_config(record.get("config"), spec.config()):
            return None
        return record

    def run(self, spec: RunSpec) -> dict:
        self.index += 1
        where = f"[{self.index}/{self.total}] {spec.run_id}"
        record = self.finished(spec)
        if record is not None:
            self.skipped += 1
            self.log(f"{where}: done before, skipped")
            return record
        run_dir = self.sweep.run_dir(spec)
        if run_dir.exists():
            shutil.rmtree(run_dir)  # killed, failed or stale: start clean (see module doc)
        run_dir.mkdir(parents=True)
        self.ran += 1
        keep = self.sweep.keep_checkpoints
        if self.sweep.isolate:
            record = _execute_isolated(spec, run_dir, keep_checkpoints=keep)
        else:
            record = execute(spec, run_dir, keep_checkpoints=keep)
        if record["status"] == "done":
            accs = "  ".join(f"{s} {record[f'{s}_accuracy']:.4f}" for s in ("validation", "test")
                             if record.get(f"{s}_accuracy") is not None)
            self.log(f"{where}: {accs}  ({record['wall_s']:.0f} s)")
        else:
            self.log(f"{where}: FAILED {record['error'].splitlines()[0][:300]}")
        return record

    def run_all(self) -> list[dict]:
        """Search every (task, method), choose its rate, run the other seeds at it."""
        records = []
        context = contextlib.nullcontext() if self.sweep.isolate else _reuse_checkpoints()
        with context:
            for task in self.sweep.tasks:
                if self.sweep.baseline:
                    records.append(self.run(self.sweep.baseline_run(task.name)))
                for method in self.sweep.methods:
                    search, lr = search_cell(self.sweep, task.name, method, self.run,
                                             extended=self._extended)
                    records += search
                    if lr is None:
                        self.log(f"{task.name}/{method}: every search run failed; no seeds run")
                        self.index += self.sweep.seeds - 1
                        continue
                    self.log(f"{task.name}/{method}: chose lr {lr:.3g} on validation")
                    records += [self.run(s) for s in self.sweep.seed_runs(task.name, method, lr)]
        return records

    def _extended(self, cell: str, lr: float, grid: list[float], new: float) -> None:
        self.total += 1
        self.log(f"{cell}: the best rate {lr:.3g} is at an end of {[f'{g:.3g}' for g in grid]}; "
                 f"searching {new:.3g} too")


def search_cell(sweep: Sweep, task: str, method: str, get, *, extended=None
                ) -> tuple[list[dict], float | None]:
    """The search records of one (task, method) and the rate chosen from them: the grid's
    runs, then, while the best rate is at an end of the rates searched, one more rate beyond it
    (at most sweep.extend_grid times), so the chosen rate is bracketed. `get(spec)` runs a
    spec or reads its record (None: missing); the same walk serves running and reporting."""
    grid = list(sweep.grids[task, method])
    records = [r for r in map(get, sweep.search_runs(task, method)) if r is not None]
    lr = select.choose_lr(records)
    for _ in range(sweep.extend_grid):
        new = select.beyond(grid, lr)
        if new is None:
            break
        if extended is not None:
            extended(f"{task}/{method}", lr, grid, new)
        grid.append(new)
        record = get(sweep.search_run(task, method, new))
        if record is None:
            break
        records.append(record)
        lr = select.choose_lr(records)
    return records, lr


def _reuse_checkpoints():

    return reuse_checkpoints()


def enable_compilation_cache(sweep: Sweep) -> Path:
    """Persistent XLA cache under the sweep directory: a seed run compiles the same program
    as its search run (only the learning rate is a compile-time constant of a step), and an
    isolated worker or a rerun of the sweep finds it on disk."""
    path = (sweep.workdir / "jax_cache").resolve()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)  # inherited by isolated workers
    return path


def collect(sweep: Sweep) -> list[dict]:
    """Every record of the current plan found on disk (for --report-only): the search runs,
    and the seed runs at each cell's chosen rate; stale ones (another config) are left out."""
    runner = Runner(sweep, log=lambda *_: None)
    records = []
    for task in sweep.tasks:
        if sweep.baseline:
            baseline = _current(runner, sweep.baseline_run(task.name))
            records += [baseline] if baseline is not None else []
        for method in sweep.methods:
            search, lr = search_cell(sweep, task.name, method, lambda s: _current(runner, s))
            records += search
            if lr is not None:
                seeds = [_current(runner, s) for s in sweep.seed_runs(task.name, method, lr)]
                records += [r for r in seeds if r is not None]
    return records


def _current(runner: Runner, spec: RunSpec) -> dict | None:
    """A finished record, or a failed one (reported as such); None if missing or stale."""
    record = read_result(runner.sweep.run_dir(spec))
    if record is None:
        return None
    if record.get("status") == "failed":
        same = (record.get("experiment"), record.get("overrides")) == (
            spec.experiment, list(spec.overrides))
        return record if same else None
    return runner.finished(spec)
