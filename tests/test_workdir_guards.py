"""A workdir holds one run: a resume with a config that changes what is trained is refused (the
checkpoints untouched), schedule changes are allowed and said; one writer at a time; a lock of
a dead process is taken over; checkpoints deleted under a logged run, or a checkpoint without
its data position, stop the run instead of silently restarting it."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_run, finished_run

from ftjax.cli import main
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.train.workdir import ResumeError, WorkdirBusyError, config_changes

REPO = Path(__file__).resolve().parents[1]
SHORT = ["steps=4", "eval_every=4", "checkpoint_every=2"]


def _digest(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data, SHORT)


@pytest.fixture(name="finished_run")
def a_finished_run(pristine, tmp_path):
    """A copy of one finished 4-step run, for each test to change."""
    return copy_run(pristine, tmp_path)


def test_a_changed_method_is_refused_and_the_checkpoints_are_untouched(finished_run, capsys):
    config, workdir = finished_run
    before = _digest(workdir / "checkpoints")
    args = ["train", str(config), "--workdir", str(workdir), "--quiet"]
    overrides = [a for o in [*SHORT, "steps=6", "method=linear_probe"] for a in ("--set", o)]
    capsys.readouterr()
    assert main([*args, *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftjax train: ") and err.count("\n") == 1
    assert "method: 'full' -> 'linear_probe'" in err and "--allow-config-change" in err
    assert _digest(workdir / "checkpoints") == before


def test_schedule_changes_resume_and_are_said(finished_run, capsys):
    config, workdir = finished_run
    capsys.readouterr()
    result = train(load_config(config, [*SHORT, "steps=6", "eval_every=3"]), workdir)
    assert result.final_step == 6
    err = capsys.readouterr().err
    assert "config changed since the checkpoint: steps: 4 -> 6" in err


def test_allowed_config_change_resumes(finished_run):
    config, workdir = finished_run
    cfg = load_config(config, [*SHORT, "steps=6", "optimizer.learning_rate=1e-4"])
    with pytest.raises(ResumeError, match="optimizer.learning_rate: 0.003 -> 0.0001"):
        train(cfg, workdir, quiet=True)
    assert train(cfg, workdir, quiet=True, allow_config_change=True).final_step == 6


def test_config_changes_classify_keys():
    saved = {"steps": 4, "method": "full", "mesh": {"data": -1}, "optimizer": {"b1": None},
             "losses": {}, "rules": [["a", "train"]]}
    current = {"steps": 9, "method": "full", "mesh": {"data": 2}, "optimizer": {"b1": 0.8},
               "losses": {"kd": {"weight": 1.0}}, "rules": (("a", "train"),)}
    resumable, refused = config_changes(saved, current)
    assert resumable == ["mesh.data: -1 -> 2", "steps: 4 -> 9"]
    assert refused == ["losses: {} -> {'kd': {'weight': 1.0}}", "optimizer.b1: None -> 0.8"]


def test_deleted_checkpoints_under_a_logged_run_are_refused(finished_run):
    config, workdir = finished_run
    shutil.rmtree(workdir / "checkpoints")
    shutil.rmtree(workdir / "best")
    rows = (workdir / "metrics.jsonl").read_text()
    with pytest.raises(ResumeError, match="metrics of an earlier run but no checkpoint"):
        train(load_config(config, SHORT), workdir, quiet=True)
    assert (workdir / "metrics.jsonl").read_text() == rows


def test_a_checkpoint_without_its_data_position_is_refused_unless_allowed(finished_run):
    config, workdir = finished_run
    for step_dir in (workdir / "checkpoints").iterdir():
        shutil.rmtree(step_dir / "data")
    cfg = load_config(config, [*SHORT, "steps=6"])
    with pytest.raises(ResumeError, match="no data position.*--allow-inexact-resume"):
        train(cfg, workdir, quiet=True)
    assert train(cfg, workdir, quiet=True, allow_inexact_resume=True).final_step == 6


def test_a_second_run_on_a_busy_workdir_fails_at_once(tiny_config_file, tmp_path):
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(
        [sys.executable, "-m", "ftjax.cli", "train", str(tiny_config_file), "--workdir",
         str(workdir), "--quiet", "--set", "steps=100000", "--set", "eval_every=100000",
         "--set", "checkpoint_every=100000"], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (workdir / "metrics.jsonl").exists():
            time.sleep(0.5)
        started = time.perf_counter()
        with pytest.raises(WorkdirBusyError, match=f"in use by another run \\(pid {first.pid}"):
            train(load_config(tiny_config_file), workdir, quiet=True)
        assert time.perf_counter() - started < 60  # before any step
    finally:
        first.terminate()
        first.communicate(timeout=120)
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()
             if "split" not in json.loads(x)]
    assert steps == list(range(1, len(steps) + 1))  # one writer: each step once, in order


def test_the_lock_of_a_dead_process_is_taken_over(tiny_config_file, tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / ".lock").write_text(json.dumps({"pid": 999999, "host": "elsewhere"}))
    capsys.readouterr()
    train(load_config(tiny_config_file, ["steps=2", "eval_every=2"]), workdir)
    assert "took over the lock of pid 999999" in capsys.readouterr().err
