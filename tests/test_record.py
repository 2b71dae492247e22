"""The experiment record that `ftjax train --record` writes beside the experiment file."""

import json
import types
from pathlib import Path

from ftjax.train.record import record_path, write_record


def test_record_path_names_the_experiment_and_its_config_function():
    assert record_path("experiments/ner.py") == Path("experiments/results/ner.json")
    assert record_path("experiments/ner.py:get_config") == Path("experiments/results/ner.json")
    assert record_path("x/paper.py:reduced") == Path("x/results/paper_reduced.json")


def test_record_holds_every_result_metric_and_how_it_was_measured(tmp_path):
    experiment = str(tmp_path / "exp.py")
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(
        '{"step": 0, "split": "validation", "accuracy": 0.5}\n'
        '{"step": 10, "loss": 0.7}\n'
        '{"step": 100, "split": "validation", "accuracy": 0.8}\n')
    result = types.SimpleNamespace(
        eval={"validation": {"accuracy": 0.8, "loss": 0.4}, "test": {"accuracy": 0.75}},
        final_step=120, best_step=100, stopped_early=False, wall_s=12.345,
        train_tokens_per_s=999.0, workdir=workdir)
    cfg = types.SimpleNamespace(seed=3)
    path = write_record(experiment, result, cfg, ["ftjax", "train", experiment, "--record"])
    record = json.loads(path.read_text())
    assert path == tmp_path / "results" / "exp.json"
    assert record["metrics"] == {"validation/accuracy": 0.8, "validation/loss": 0.4,
                                 "test/accuracy": 0.75}
    assert record["metrics_at_start"] == {"validation/accuracy": 0.5}  # before any step
    assert record["command"] == f"ftjax train {experiment} --record"
    assert record["seeds"] == [3] and record["steps"] == 120 and record["wall_time_s"] == 12.3
    assert record["machine"].startswith(("CPU", "GPU", "TPU"))


def test_a_pipeline_record_names_no_directory_of_the_machine(tmp_path):
    """The workdir and the paths under it (an adapter's place) are written as WORKDIR/..."""
    from ftjax.train.record import write_pipeline_record

    experiment = str(tmp_path / "pipe.py")
    root = tmp_path / "runs"
    summary = {"stages": {"a": {"test": {"accuracy": 0.9}}}, "groups": {}, "seeds": [0],
               "steps": {"a": 5}, "wall_time_s": 1.0,
               "runs": {"a": {"adapter": {"path": str(root / "a" / "adapter")}}},
               "evaluations": {"a": [{"step": 5, "split": "test", "accuracy": 0.9}]}}
    path = write_pipeline_record(experiment, summary, [
        "ftjax", "pipeline", "pipe.py", "--workdir", str(root), "--set",
        f"init_from={root}/a", "--record"])
    text = path.read_text()
    assert str(root) not in text
    record = json.loads(text)
    assert record["command"] == ("ftjax pipeline pipe.py --workdir WORKDIR --set "
                                 "init_from=WORKDIR/a --record")
    assert record["runs"]["a"]["adapter"]["path"] == "WORKDIR/a/adapter"
    assert record["evaluations"]["a"][0]["accuracy"] == 0.9
