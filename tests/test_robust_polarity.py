"""The robustness experiment: its stages are the arms of each setting and seed, and a few steps
of a real stage (EDA on real WordNet synonyms) run end to end with its robustness figures (the
adversarial terms' own tests run them on a tiny model)."""

from pathlib import Path

from ftjax.train.loop import train
from ftjax.train.stages import load_stages, stage_config

PATH = Path(__file__).resolve().parents[1] / "experiments" / "robust_polarity.py"
FEW = ["steps=2", "eval_every=2", "checkpoint_every=2", "data.max_train_examples=48",
       "data.max_eval_examples=24", "robustness.attack_examples=3",
       "robustness.attack_budget=20", "data.buckets=()"]


def test_the_stages_are_every_arm_of_each_setting_and_seed(tmp_path):
    stages = load_stages(PATH)
    configs = {s.name: stage_config(PATH, s, tmp_path) for s in stages}
    assert len(configs) == 2 * 3 * 8
    for seed in (0, 1, 2):
        few, full = configs[f"few_plain_s{seed}"], configs[f"full_plain_s{seed}"]
        assert few.seed == full.seed == seed and not few.losses
        assert few.data.max_train_examples == 500 and full.data.max_train_examples == 0
        assert configs[f"few_freelb_s{seed}"].losses.ce.weight == 0.0
        assert configs[f"few_eda_s{seed}"].data.augment.copies == 16
        assert configs[f"full_eda_s{seed}"].data.augment.copies == 4
        assert tuple(few.robustness.perturbations) == ("chars@0.05", "chars@0.1",
                                                       "synonym@0.2")


def test_a_few_steps_of_a_real_stage(tmp_path):
    arm = "few_eda_s1"
    stage = {s.name: s for s in load_stages(PATH)}[arm]
    result = train(stage_config(PATH, stage, tmp_path, FEW), tmp_path / arm, quiet=True)
    test = result.eval["test"]
    assert result.final_step == 2 and 0 < test["accuracy"] <= 1
    for key in ("robust/chars@0.1/accuracy", "robust/synonym@0.2/accuracy",
                "attack/accuracy", "attack/success_rate"):
        assert 0 <= test[key] <= 1
    assert test["attack/examples"] == 3
