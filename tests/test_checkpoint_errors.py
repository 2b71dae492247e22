"""Checkpoint errors that say what is wrong: a corrupt or incomplete newest checkpoint falls back
to the previous one (and says so), a checkpoint of another config names the leaf and both
shapes, and an unwritable checkpoint directory fails at once, naming it."""

import logging
import os
import re
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest
from conftest import copy_run, finished_run

from ftjax.io.checkpoint import (
    CheckpointDirectoryError,
    Checkpointer,
    IncompatibleCheckpointError,
    UnusableCheckpointError,
)
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train
from ftjax.train.restore import restore_run

OVERRIDES = ["method=lora", "eval_every=100"]  # checkpoints at steps 6 and 12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data, OVERRIDES)


@pytest.fixture
def run(pristine, tmp_path):
    """A copy of the finished run (checkpoints 6 and 12) to damage."""
    return copy_run(pristine, tmp_path)


def _truncate_arrays(run_dir, step):
    """Cut every array data file of a step's state in half (a disk that filled up, a partial
    copy); returns the files."""
    files = sorted((run_dir / "checkpoints" / str(step) / "state" / "d").iterdir())
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return files


def _trainable(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.trainable)]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_step(run, caplog):
    _, run_dir = run
    files = _truncate_arrays(run_dir, 12)
    with caplog.at_level(logging.WARNING, logger="ftjax.io.checkpoint"):
        exp, restored = restore_run(run_dir)
    assert restored.step == 6
    [(step, why)] = restored.skipped
    assert step == 12 and "corrupt" in why and str(files[0]) in why
    warnings = caplog.text
    assert "skipped checkpoint step 12" in warnings and str(files[0]) in warnings
    assert "restoring step 6" in warnings
    # Exactly the step-6 state, as restoring that step explicitly gives it.
    explicit = Checkpointer(run_dir, read_only=True).restore(exp.state, step=6)
    assert all(np.array_equal(a, b) for a, b in zip(_trainable(restored.state),
                                                    _trainable(explicit.state)))

    _truncate_arrays(run_dir, 6)
    with pytest.raises(UnusableCheckpointError, match=r"step 12: .*corrupt.*; step 6: .*corrupt"):
        restore_run(run_dir)


def test_incomplete_newest_checkpoint_falls_back_and_says_why(run):
    _, run_dir = run
    (run_dir / "checkpoints" / "12" / "commit_success.txt").unlink()
    _, restored = restore_run(run_dir)
    assert restored.step == 6
    assert restored.skipped[0][0] == 12 and "incomplete" in restored.skipped[0][1]
    assert "commit marker" in restored.skipped[0][1]

    shutil.rmtree(run_dir / "checkpoints" / "6" / "meta")
    with pytest.raises(UnusableCheckpointError, match=r"step 6: .*incomplete: its item 'meta'"):
        restore_run(run_dir)


def test_resume_after_a_corrupt_checkpoint_replaces_it(run, capsys):
    """train() resumes from step 6 and saves a new, readable step 12 over the corrupt one."""
    config, run_dir = run
    _truncate_arrays(run_dir, 12)
    result = train(load_config(config, OVERRIDES), run_dir, quiet=True)
    assert result.final_step == 12
    assert "resumed from step 6" in capsys.readouterr().err
    _, restored = restore_run(run_dir)
    assert restored.step == 12 and restored.skipped == []


def test_checkpoint_of_another_model_shape_names_the_leaf_and_both_shapes(run):
    config, run_dir = run
    other = load_config(config, [*OVERRIDES, "lora.rank=4"])
    with pytest.raises(IncompatibleCheckpointError) as err:
        restore_run(run_dir, cfg=other)
    message = str(err.value)
    assert "config changed" in message and str(run_dir / "checkpoints" / "12") in message
    assert re.search(r"trainable/backbone/layers_\d/attention/\w+/lora_a: checkpoint "
                     r"\(30, 8\) float32, this run \(30, 4\) float32", message), message
    assert "\n" not in message


def test_resuming_with_another_config_is_a_clear_command_error(run, capsys):
    from ftjax.cli import main

    config, run_dir = run
    overrides = [arg for o in [*OVERRIDES, "lora.rank=4"] for arg in ("--set", o)]
    args = ["train", str(config), "--workdir", str(run_dir), "--quiet", *overrides]
    assert main(args) == 2  # the config change is refused first, by what differs
    err = capsys.readouterr().err
    assert "lora.rank: 8 -> 4" in err and err.count("\n") == 1
    assert main([*args, "--allow-config-change"]) == 2  # allowed, the leaves still do not fit
    err = capsys.readouterr().err
    assert err.startswith("ftjax train: checkpoint ") and "this run (30, 4) float32" in err
    assert err.count("\n") == 1


def test_checkpoint_directory_under_a_file_fails_at_once(tmp_path):
    (tmp_path / "file").write_text("")
    start = time.perf_counter()
    with pytest.raises(CheckpointDirectoryError, match=re.escape(str(tmp_path / "file"))):
        Checkpointer(tmp_path / "file" / "run")
    assert time.perf_counter() - start < 10


def _make_read_only(directory):
    """Make `directory` refuse new files and return the function that undoes it; None if this
    process can write there anyway (root ignores permission bits; `chattr +i` needs
    CAP_LINUX_IMMUTABLE)."""
    def chmod_back():
        os.chmod(directory, 0o755)

    def chattr_back():
        subprocess.run(["chattr", "-i", str(directory)], check=False)

    os.chmod(directory, 0o555)
    if not _writable(directory):
        return chmod_back
    chmod_back()
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(directory)],
                                                 capture_output=True, check=False).returncode == 0:
        if not _writable(directory):
            return chattr_back
        chattr_back()
    return None


def _writable(directory) -> bool:
    try:
        (directory / "probe").write_text("")
    except OSError:
        return False
    (directory / "probe").unlink()
    return True


def test_read_only_checkpoint_directory_fails_within_seconds(tiny_config_file, tmp_path):
    """Orbax's background writer used to fail there and its wait time out after ~300 s."""
    cfg = load_config(tiny_config_file, ["steps=6"])
    exp = build_experiment(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    undo = _make_read_only(checkpoints)
    if undo is None:
        pytest.skip("cannot make a directory read-only here (root, and chattr +i not allowed)")
    try:
        start = time.perf_counter()
        with pytest.raises(CheckpointDirectoryError, match=re.escape(str(checkpoints))):
            train(cfg, tmp_path / "run", quiet=True, experiment=exp)
        assert time.perf_counter() - start < 10
    finally:
        undo()
