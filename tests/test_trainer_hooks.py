"""Hooks defined here, outside ftjax: the protocol's events in order, requests the Trainer
carries out, and a hook that stops the run, given from Python or named in the config."""

import json
from pathlib import Path

import pytest

from ftjax.io.checkpoint import Checkpointer
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.hooks import Hook, Request
from ftjax.train.loop import train
from ftjax.train.trainer import Trainer


class StopAt(Hook):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            return Request(stop=f"{type(self).__name__} asked at step {step}")
        return None


def stop_at_five():
    return StopAt(5)


class Recorder(Hook):
    """Records every event; asks for an extra evaluation at step 3."""

    def __init__(self):
        self.events = []

    def on_start(self, trainer):
        self.events.append(("start", trainer.start_step))

    def on_step_end(self, trainer, step, metrics):
        self.events.append(("step", step))
        if step == 3:
            loss = metrics.get()["loss"]  # fetched on demand
            assert loss == loss  # a float, not NaN
            return Request(eval=True)
        return None

    def on_eval(self, trainer, step, results):
        self.events.append(("eval", step, sorted(results)))

    def on_checkpoint(self, trainer, step, best):
        self.events.append(("checkpoint", step, best))

    def on_end(self, trainer, outcome):
        self.events.append(("end", outcome))


def _train_steps(workdir):
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "split" not in r]


def test_a_hook_from_python_stops_the_run_at_its_step(tiny_config_file, tmp_path):
    result = train(load_config(tiny_config_file), tmp_path, quiet=True, hooks=[StopAt(7)])
    assert result.final_step == 7 and result.stopped_early and not result.interrupted
    assert _train_steps(tmp_path)[-1] == 7
    assert Checkpointer(tmp_path).latest_step() == 7  # a stop saves a checkpoint
    assert json.loads((tmp_path / "results.json").read_text())["stopped_early"] is True


def test_a_hook_named_in_the_config_stops_the_run(tiny_config_file, tmp_path):
    cfg = load_config(tiny_config_file, ["hooks=('test_trainer_hooks:stop_at_five',)"])
    assert train(cfg, tmp_path, quiet=True).final_step == 5
    with pytest.raises(ConfigError, match=r"hooks\[0\] 'test_trainer_hooks:nope'.*has no"):
        load_config(tiny_config_file, ["hooks=('test_trainer_hooks:nope',)"])


def test_events_arrive_in_order_and_requests_are_carried_out(tiny_config_file, tmp_path):
    recorder = Recorder()
    exp = build_experiment(load_config(tiny_config_file, ["steps=6", "eval_every=6",
                                                          "checkpoint_every=6"]))
    Trainer(exp, tmp_path, hooks=[recorder], quiet=True).fit()
    events = recorder.events
    assert events[0] == ("start", 0) and events[-1] == ("end", "finished")
    assert [e[1] for e in events if e[0] == "step"] == [1, 2, 3, 4, 5, 6]
    assert [e[1] for e in events if e[0] == "eval"] == [3, 6]  # the hook's request, then 6
    assert ("checkpoint", 6, False) in events
    # Carried out right after step 3's hooks, before step 4.
    assert events.index(("step", 3)) < events.index(("eval", 3, ["validation"])) < \
        events.index(("step", 4))
    # The best-checkpoint hook saved after the first evaluation; the requested eval is logged.
    assert ("checkpoint", 3, True) in events
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split") == "validation"] == [3, 6]


def test_an_evaluation_at_step_0_lets_selection_keep_the_model_as_set_up(tiny_config_file,
                                                                         tmp_path):
    """With eval_at_start, a run whose steps never beat the model it started from ends with
    that model (best step 0): scripted validation accuracies 0.9 (step 0), 0.6, 0.7, set by
    a hook's extend_eval (which runs before selection sees the results)."""
    import jax
    import numpy as np

    class Scripted(Hook):
        def __init__(self):
            self.script = iter([0.9, 0.6, 0.7])

        def extend_eval(self, trainer, results):
            metrics = results["validation"]
            metrics["accuracy"] = next(self.script, metrics["accuracy"])

    exp = build_experiment(load_config(tiny_config_file, ["steps=4", "eval_every=2",
                                                          "eval_at_start=True"]))
    start = [np.asarray(x) for x in jax.tree.leaves(exp.state.trainable)]
    result = Trainer(exp, tmp_path, quiet=True, hooks=[Scripted()]).fit()
    assert result.best_step == 0 and result.final_step == 4
    for a, b in zip(start, jax.tree.leaves(result.state.trainable)):
        np.testing.assert_array_equal(a, b)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("split") == "validation"] == [0, 2, 4]
