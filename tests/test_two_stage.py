"""Two-stage fine-tuning: a run that starts from another run's final weights (`init_from`)."""

import argparse
import json

import jax
import numpy as np
import pytest
from conftest import finished_run
from flax import traverse_util

from ftjax.peft import merge_peft
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train
from ftjax.train.restore import build_run_experiment, final_weights, restore_run


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory, tiny_bert_dir, tiny_text_data):
    """A finished LoRA run whose head trained (checkpoints 6 and 12, the best one kept)."""
    return finished_run(tmp_path_factory, tiny_bert_dir, tiny_text_data, ["method=lora"])


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree),
                                                                     sep="/").items()}


def _stage_one_merged(run_dir):
    exp, restored = restore_run(run_dir, best=True, full_precision=True)
    return _flat(merge_peft(exp.model, restored.state.params)[1])


def test_stage_two_starts_exactly_from_stage_ones_final_weights(stage_one):
    config, run_dir = stage_one
    expected = _stage_one_merged(run_dir)
    assert any(k.startswith("head/") for k in expected)
    cfg = load_config(config, [f"init_from={run_dir}", "init_head=keep", "method=full"])
    start = _flat(build_run_experiment(cfg).params)
    assert start.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(start[name], value, err_msg=name)


def test_a_new_head_keeps_stage_ones_backbone_only(stage_one):
    config, run_dir = stage_one
    expected = _stage_one_merged(run_dir)
    cfg = load_config(config, [f"init_from={run_dir}", "method=lora"])
    exp = build_run_experiment(cfg)
    start = _flat(exp.params)
    fresh = _flat(build_experiment(load_config(config, ["method=lora"])).params)
    for name, value in start.items():
        if name.startswith("backbone/") and "lora" not in name:
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
        elif name.startswith("head/"):  # the config's new head, seeded as any new head
            np.testing.assert_array_equal(value, fresh[name], err_msg=name)
            assert not np.array_equal(value, expected[name])


def test_stage_two_resumes_and_evaluates_on_stage_ones_weights(stage_one, tmp_path):
    config, run_dir = stage_one
    cfg = load_config(config, [f"init_from={run_dir}", "method=lora", "steps=6"])
    result = train(cfg, tmp_path / "two", quiet=True)
    # Its checkpoints hold the LoRA leaves only; rebuilt, the frozen base is stage one's.
    exp, restored = restore_run(tmp_path / "two")
    base = final_weights(run_dir)
    frozen = _flat(restored.state.params)
    for name, value in _flat(base).items():
        if name.startswith("backbone/"):
            np.testing.assert_array_equal(frozen[name], value, err_msg=name)
    assert result.final_step == 6


def test_init_from_errors_name_the_run(stage_one, tmp_path):
    config, run_dir = stage_one
    with pytest.raises(ConfigError, match="no results.json"):
        build_run_experiment(load_config(config, [f"init_from={tmp_path}"]))
    with pytest.raises(ConfigError, match="build_run_experiment"):
        build_experiment(load_config(config, [f"init_from={run_dir}"]))
    with pytest.raises(ConfigError, match="head/classifier"):
        build_run_experiment(load_config(config, [f"init_from={run_dir}", "init_head=keep",
                                                  "head.num_labels=3"]))


PIPELINE = '''

from ftjax.train.stages import Stage

_base = get_config


def get_config(variant):
    c = _base()
    c.method = {"first": "lora", "second": "full"}[variant]
    c.steps = 6
    return c


def get_stages():
    return [Stage("one", "first"),
            Stage("two_s0", "second", init_from="one", group="two-stage"),
            Stage("two_s1", "second", ("seed=1", "init_from={root}/one"), group="two-stage",
                  before="prepare")]


def prepare(root):
    with open(root / "prepared.txt", "a") as f:
        f.write(",".join(sorted(p.name for p in root.iterdir() if p.is_dir())) + "\\n")


def report(record, stem):
    table = stem.with_suffix(".md")
    table.write_text("\\n".join(f"{name} {run['trainable']}"
                                for name, run in sorted(record["runs"].items())))
    return [table]
'''


def test_pipeline_runs_stages_in_order_and_keeps_finished_ones(tmp_path, tiny_bert_dir,
                                                               tiny_text_data, capsys):
    from conftest import write_tiny_config

    from ftjax.cli import main

    path = write_tiny_config(tmp_path / "pipe.py", tiny_bert_dir, tiny_text_data)
    path.write_text(path.read_text() + PIPELINE)
    root = tmp_path / "root"
    args = ["pipeline", str(path), "--workdir", str(root), "--quiet", "--record"]
    assert main(args) == 0
    record = json.loads((tmp_path / "results" / "pipe.json").read_text())
    group = record["groups"]["two-stage"]["test/accuracy"]
    assert group["n"] == 2 and record["seeds"] == [0, 1]
    accuracies = [record["metrics"][f"two_s{s}/test/accuracy"] for s in (0, 1)]
    assert group["mean"] == pytest.approx(sum(accuracies) / 2)
    saved = json.loads((root / "two_s1" / "config.json").read_text())
    assert saved["init_from"] == str(root / "one") and saved["seed"] == 1  # {root} resolved
    # The file's report() wrote its table from the record's run facts.
    table = (tmp_path / "results" / "pipe.md").read_text().split("\n")
    assert [row.split()[0] for row in table] == ["one", "two_s0", "two_s1"]
    assert record["runs"]["two_s0"]["trainable"] == record["runs"]["two_s0"]["total"] > 0
    logs = {name: (root / name / "metrics.jsonl").read_text() for name in ("one", "two_s0")}
    # The stage's `before` function ran once, before it trained (after the earlier stages).
    assert (root / "prepared.txt").read_text() == "one,two_s0\n"
    assert main(args) == 0  # finished stages are summarized, not trained again
    assert {n: (root / n / "metrics.jsonl").read_text() for n in logs} == logs
    assert (root / "prepared.txt").read_text() == "one,two_s0\n"


def test_pipeline_stage_starting_from_a_later_stage_is_refused(tmp_path, tiny_bert_dir,
                                                               tiny_text_data, capsys):
    from conftest import write_tiny_config

    from ftjax.cli import main

    path = write_tiny_config(tmp_path / "pipe.py", tiny_bert_dir, tiny_text_data)
    path.write_text(path.read_text() + PIPELINE.replace('Stage("one", "first"),', "")
                    + '\n\n_stages = get_stages\n\n\ndef get_stages():\n'
                      '    return [*_stages(), Stage("one", "first")]\n')
    assert main(["pipeline", str(path), "--workdir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "starts from 'one', which is not an earlier stage" in err and err.count("\n") == 1


def test_two_stage_polarity_experiment_stages_are_valid_configs(tmp_path):
    from pathlib import Path

    from ftjax.train.stages import load_stages, stage_config

    path = Path(__file__).resolve().parents[1] / "experiments" / "two_stage_polarity.py"
    stages = load_stages(path)
    configs = {s.name: stage_config(path, s, tmp_path, ()) for s in stages}
    assert configs["mlm"].task.kind == "masked_lm" and configs["mlm"].head.kind == "mlm"
    arms = {s.group for s in stages if s.group}
    assert arms == {"mlm then polarity", "polarity only"}
    for seed in (0, 1, 2):
        two, alone = configs[f"polarity_mlm_s{seed}"], configs[f"polarity_only_s{seed}"]
        assert two.init_from == str(tmp_path / "mlm") and alone.init_from is None
        assert two.seed == alone.seed == seed
        assert two.data.max_train_examples == alone.data.max_train_examples == 500


def test_an_interrupted_pipeline_records_its_finished_stages(tmp_path, monkeypatch):
    """The record of an interrupted pipeline keeps what the finished stages measured and
    names the rest; the command still exits 130 so that a rerun resumes."""
    from ftjax.commands import pipeline as command
    from ftjax.train import stages as stages_module

    summary = {"stages": {"a": {"test": {"accuracy": 0.9}}},
               "groups": {"arm": {"test/accuracy": {"mean": 0.9, "std": 0.0, "n": 1}}},
               "steps": {"a": 4}, "seeds": [0], "wall_time_s": 1.0,
               "interrupted": "b", "not_finished": ["b", "c"]}
    monkeypatch.setattr(stages_module, "run_stages", lambda *a, **k: summary)
    monkeypatch.setattr(stages_module, "write_report", lambda *a: [])
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)  # the command's own defaults for every other option
    args = parser.parse_args(["experiments/fake.py", "--workdir", str(tmp_path), "--quiet",
                              "--record"])
    assert command.run(args) == 130
    record = json.loads((tmp_path / "experiments" / "results" / "fake.json").read_text())
    assert record["metrics"] == {"a/test/accuracy": 0.9}
    assert record["not_finished"] == ["b", "c"]
