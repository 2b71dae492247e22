"""The loop end to end on a tiny checkpoint: logs, reports, checkpoints, exact resume, signals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftjax.data import MissingFileError
from ftjax.io.checkpoint import Checkpointer
from ftjax.train.config import load_config
from ftjax.train.loop import NonFiniteLossError, train

REPO = Path(__file__).resolve().parents[1]


def _rows(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _train_losses(workdir):
    return {r["step"]: r["loss"] for r in _rows(workdir) if "split" not in r}


def _cli(*args, **popen_kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ftjax.cli", *map(str, args)]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen_kw)


def test_loop_trains_logs_and_reports(tiny_config_file, tmp_path):
    result = train(load_config(tiny_config_file), tmp_path, quiet=True)
    rows = _rows(tmp_path)
    losses = _train_losses(tmp_path)
    assert sorted(losses) == list(range(1, 13))
    assert losses[12] < losses[1]
    evals = [r for r in rows if r.get("split") == "validation"]
    assert [r["step"] for r in evals] == [6, 12] and all("accuracy" in r for r in evals)
    report = json.loads((tmp_path / "params_report.json").read_text())
    assert report["trainable"] == report["total"] > 0
    assert set(result.eval) == {"validation", "test"}
    assert (tmp_path / "results.json").exists()
    assert list((tmp_path / "tensorboard").iterdir())
    assert Checkpointer(tmp_path).latest_step() == 12


def test_step_time_and_compiled_memory_cost_no_extra_compile(tiny_config_file, tmp_path,
                                                             monkeypatch):
    """The loop reports its median step time and the compiled train step's memory; measuring
    the memory compiles the step ahead of time, and the step's calls reuse that executable."""
    import jax

    import ftjax.train.experiment as experiment
    import ftjax.train.trainer as trainer

    compiles, per_call, ahead = [], [], []

    def on_event(name, *args, **kwargs):
        if name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    def measure_memory(step, state, batch):
        before = len(compiles)
        memory = real_memory(step, state, batch)
        ahead.append(len(compiles) - before)
        return memory

    def watch(train_step, *shardings):
        step = real_jit(train_step, *shardings)

        def watched(state, batch):
            before = len(compiles)
            out = jax.block_until_ready(step(state, batch))
            per_call.append(len(compiles) - before)
            return out

        watched.lower = step.lower
        return watched

    real_memory, real_jit = trainer.compiled_memory, experiment.jit_train_step
    monkeypatch.setattr(trainer, "compiled_memory", measure_memory)
    monkeypatch.setattr(experiment, "jit_train_step", watch)  # what Experiment.jit_train_step calls
    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        cfg = load_config(tiny_config_file, ["steps=4", "eval_every=4", "checkpoint_every=4"])
        result = train(cfg, tmp_path, quiet=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert ahead == [1] and per_call == [0, 0, 0, 0]
    memory = result.step_memory
    assert memory["total_bytes"] == sum(memory[f"{k}_bytes"] for k in ("argument", "output",
                                                                         "temp"))
    assert memory["argument_bytes"] > 3 * 4 * 18_406  # tiny BERT's fp32 params + 2 Adam moments
    assert result.step_time_s > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["step_memory"] == memory and saved["step_time_s"] == result.step_time_s


def test_resume_in_fresh_process_is_bit_identical(tiny_config_file, tmp_path):
    """Uninterrupted 12 steps vs the same run restarted from its step-6 checkpoint."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    proc = _cli("train", tiny_config_file, "--workdir", full, "--quiet")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    shutil.copytree(full, resumed)
    # Leave only the step-6 checkpoint, as if the run had been killed right after it.
    for managed in ("checkpoints", "best"):
        for step_dir in (resumed / managed).iterdir():
            if step_dir.name != "6":
                shutil.rmtree(step_dir)
    proc = _cli("train", tiny_config_file, "--workdir", resumed, "--quiet")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    a, b = _train_losses(full), _train_losses(resumed)
    assert sorted(b) == list(range(1, 13))
    assert [a[s] for s in range(7, 13)] == [b[s] for s in range(7, 13)]  # exact, not allclose


def test_sigterm_saves_a_checkpoint_and_resume_continues(tiny_config_file, tmp_path):
    proc = _cli("train", tiny_config_file, "--workdir", tmp_path, "--quiet",
                "--set", "steps=100000", "--set", "checkpoint_every=100000",
                "--set", "eval_every=100000")
    deadline = time.time() + 240
    while time.time() < deadline:
        if (tmp_path / "metrics.jsonl").exists() and len(_train_losses(tmp_path)) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    saved = Checkpointer(tmp_path).latest_step()
    assert saved is not None and saved >= 3
    assert "saved a checkpoint" in out


def test_nonfinite_stop_names_the_step(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, ["nonfinite=stop", "optimizer.learning_rate=1e38",
                                         "optimizer.grad_clip_norm=0.0"])
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        train(cfg, tmp_path, quiet=True)
    assert Checkpointer(tmp_path).latest_step() is not None  # the last finite state is saved


def test_nonfinite_skip_counts_and_continues(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, ["optimizer.learning_rate=1e38",
                                         "optimizer.grad_clip_norm=0.0", "steps=4"])
    result = train(cfg, tmp_path, quiet=True)
    assert result.final_step == 4 and result.nonfinite_steps >= 1


def test_killed_mid_save_leaves_previous_checkpoint_loadable(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, ["steps=6"])
    first = train(cfg, tmp_path, quiet=True)
    # What a kill during orbax's save leaves behind: a temporary step directory, never renamed.
    partial = tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 100)
    ckpt = Checkpointer(tmp_path)
    assert ckpt.latest_step() == 6
    restored = ckpt.restore(first.experiment.state)
    assert restored.step == 6


def test_missing_data_file_is_a_clear_error(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, [f"data.path={tmp_path}/nowhere/{{split}}.jsonl"])
    with pytest.raises(MissingFileError, match="nowhere"):
        train(cfg, tmp_path / "run", quiet=True)


def test_early_stopping_stops_on_schedule_and_restores_best(tiny_config_file, tmp_path):
    """Scripted validation accuracies (set by a hook's extend_eval, which runs before selection
    and early stopping see the results): best at step 4, then 3 evals without improvement."""
    import jax
    import numpy as np

    from ftjax.train.hooks import Hook

    class Scripted(Hook):
        script = iter([0.50, 0.70, 0.69, 0.70, 0.65, 0.99, 0.99])

        def extend_eval(self, trainer, results):
            if "validation" in results:
                metrics = results["validation"]
                metrics["accuracy"] = next(self.script, metrics["accuracy"])

    overrides = ["steps=20", "eval_every=2", "early_stopping.patience=3",
                 "early_stopping.min_delta=0.005"]
    stopped = train(load_config(tiny_config_file, overrides), tmp_path / "es", quiet=True,
                    hooks=[Scripted()])
    assert stopped.stopped_early and stopped.final_step == 10 and stopped.best_step == 4

    reference = train(load_config(tiny_config_file, ["steps=4"]), tmp_path / "ref", quiet=True)
    same = [np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(stopped.state.trainable),
        jax.tree.leaves(reference.state.trainable))]
    assert same and all(same)  # the restored params are exactly those of step 4


def test_eval_command_reproduces_the_run_s_numbers(tiny_config_file, tmp_path, capsys):
    from ftjax.cli import main

    result = train(load_config(tiny_config_file), tmp_path, quiet=True)
    args = ["eval", str(tiny_config_file), "--workdir", str(tmp_path), "--split", "test"]
    if result.best_step is not None:
        args.append("--best")
    capsys.readouterr()
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["eval"]["test"] == result.eval["test"]


@pytest.mark.parametrize("objective", ["causal_lm", "masked_lm"])
def test_language_modeling_objectives_train_through_the_loop(objective, tiny_config_file,
                                                             tiny_llama_dir, tmp_path):
    overrides = [f"task.kind={objective}", "task.max_length=24", "steps=8", "eval_every=4",
                 "best_metric=loss", "best_mode=min", "optimizer.learning_rate=1e-2"]
    if objective == "causal_lm":  # packed documents through the decoder
        overrides += [f"model.name={tiny_llama_dir}", "head.kind=lm", "task.packing=True"]
    else:
        overrides += ["head.kind=mlm", "task.mask_prob=0.3"]
    result = train(load_config(tiny_config_file, overrides), tmp_path, quiet=True)
    losses = _train_losses(tmp_path)
    assert len(losses) == 8 and losses[8] < losses[1]
    assert 0.0 <= result.eval["validation"]["accuracy"] <= 1.0
    assert result.eval["validation"]["examples"] > 0  # real (masked / target) tokens counted


def _tiny_state(step: int):
    import jax.numpy as jnp
    import optax

    from ftjax.train.step import create_train_state

    state = create_train_state({"w": jnp.arange(3.0)}, {"w": True}, optax.sgd(0.1), seed=0)
    return state.replace(step=jnp.asarray(step, jnp.int32))


def test_checkpoint_keeps_each_process_data_position(tmp_path):
    """The iterator's position is read when save() is called (the write finishes in the
    background while training goes on) and set back in place by restore(); a checkpoint with
    no position for this process (here: one written by 2 processes) leaves the stream as is."""
    import grain
    import numpy as np

    def stream():
        return iter(grain.MapDataset.range(1000).shuffle(seed=3).batch(4).to_iter_dataset())

    it = stream()
    for _ in range(5):
        next(it)
    ckpt = Checkpointer(tmp_path)
    ckpt.save(_tiny_state(5), iterator=it, meta={})
    expected = [next(it) for _ in range(3)]  # advances while the save may still be writing
    ckpt.wait()

    fresh = stream()
    restored = ckpt.restore(_tiny_state(0), iterator=fresh)
    assert restored.step == 5 and restored.iterator_restored
    assert all(np.array_equal(next(fresh), e) for e in expected)

    # Simulate 2 writer processes: process 0 of 1 (this one) then has no file to read.
    for f in (tmp_path / "checkpoints" / "5" / "data").glob("process_0-of-1*"):
        f.rename(f.with_name(f.name.replace("-of-1", "-of-2")))
    untouched = stream()
    restored = Checkpointer(tmp_path).restore(_tiny_state(0), iterator=untouched)
    assert restored.step == 5 and not restored.iterator_restored
    assert np.array_equal(next(untouched), next(stream()))
    ckpt.close()
