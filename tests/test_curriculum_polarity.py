"""The curriculum experiment: its stages are every arm and seed after a reference run, a few
steps of a real paced stage run end to end, and its report draws the table and the learning
curves from a pipeline record."""

import json
from pathlib import Path

from ftjax.train.loop import train
from ftjax.train.stages import load_stages, stage_config, write_report

PATH = Path(__file__).resolve().parents[1] / "experiments" / "curriculum_polarity.py"
FEW = ["steps=3", "eval_every=3", "checkpoint_every=3", "data.max_train_examples=64",
       "data.max_eval_examples=32", "batch_size=8", "data.curriculum.full_at_step=2",
       "data.buckets=()"]


def test_the_stages_are_a_reference_run_then_every_arm_of_each_seed(tmp_path):
    stages = load_stages(PATH)
    assert stages[0].name == "reference" and len(stages) == 1 + 3 * 10
    configs = {s.name: stage_config(PATH, s, tmp_path) for s in stages}
    assert configs["reference"].steps == 100 and configs["plain_s0"].steps == 300
    assert configs["plain_s1"].data.curriculum.score == "none"
    anti = configs["length_anti_root_s2"].data.curriculum
    assert (anti.score, anti.order, anti.pacing, anti.seed) == ("length", "hard_first", "root", 2)
    assert configs["reference_root_s0"].data.curriculum.reference == str(
        tmp_path / "reference_cache")
    assert {s.before for s in stages if s.name.startswith("reference_root")} == {
        "make_reference_cache"}
    assert configs["self_paced_s0"].losses.spl.kind == "self_paced"


def test_a_few_steps_of_a_paced_stage_and_the_report(tmp_path):
    stage = {s.name: s for s in load_stages(PATH)}["rarity_root_s1"]
    result = train(stage_config(PATH, stage, tmp_path, FEW), tmp_path / stage.name, quiet=True)
    assert result.final_step == 3 and 0 < result.eval["test"]["accuracy"] <= 1
    facts = json.loads((tmp_path / stage.name / "data.json").read_text())
    assert "rarity" in json.dumps(facts)
    evaluations = [{"step": s, "split": "validation", "accuracy": a}
                   for s, a in ((100, 0.7), (200, 0.75), (300, 0.8))]
    record = {"metrics": {f"{arm}_s0/test/accuracy": 0.8 for arm in ("plain", "length_root")},
              "runs": {"plain_s0": {}, "length_root_s0": {}}, "machine": "test",
              "evaluations": {"plain_s0": evaluations, "length_root_s0": evaluations}}
    written = write_report(PATH, record, tmp_path / "curriculum_polarity")
    assert [p.suffix for p in written] == [".md", ".png"]
    table = written[0].read_text()
    assert "| length_root | 1 | 0.8000 ± 0.0000 | 0.7000 ± 0.0000 |" in table
