"""The distillation experiments: their stages are valid configs, and a few steps of
distill_polarity.py's real stages run end to end (teacher, teacher cache, a cached and an
all-terms student)."""

from pathlib import Path

import pytest

from ftjax.train.loop import train
from ftjax.train.stages import import_experiment_file, load_stages, stage_config

PATH = Path(__file__).resolve().parents[1] / "experiments" / "distill_polarity.py"
FEW = ["steps=2", "eval_every=2", "checkpoint_every=2", "data.max_train_examples=64",
       "data.max_eval_examples=32"]


def test_the_stages_are_the_arms_of_each_student_and_seed(tmp_path):
    stages = load_stages(PATH)
    configs = {s.name: stage_config(PATH, s, tmp_path) for s in stages}
    assert len(stages) == 1 + 3 * 2 * 4 and stages[0].name == "teacher"
    for seed in (0, 1, 2):
        l3, l6 = configs[f"l3_kd_all_s{seed}"], configs[f"l6x3_kd_all_s{seed}"]
        assert l3.model.name == "paraphrase-minilm-l3-v2" and l3.seed == seed
        assert tuple(l6.model.keep_layers) == (0, 2, 4)
        assert {l3.losses[t].teacher for t in ("kd", "hidden", "attention")} == \
            {str(tmp_path / "teacher")}
        cached = configs[f"l3_kd_cached_s{seed}"]
        assert cached.losses.kd.teacher == "" and \
            cached.data.teacher_cache == str(tmp_path / "teacher_cache")
        assert not configs[f"l6x3_labels_s{seed}"].losses
    assert {s.before for s in stages if "kd_cached" in s.name} == {"make_teacher_cache"}


@pytest.mark.parametrize("student", ["l3_kd_cached_s0", "l6x3_kd_all_s1"])
def test_a_few_steps_of_the_real_stages(tmp_path_factory, student):
    root = tmp_path_factory.getbasetemp() / "distill_polarity"
    stages = {s.name: s for s in load_stages(PATH)}
    if not (root / "teacher" / "results.json").is_file():
        train(stage_config(PATH, stages["teacher"], root, FEW), root / "teacher", quiet=True)
    if stages[student].before:
        cache = import_experiment_file(PATH).make_teacher_cache(root)
        assert (cache / "manifest.json").is_file()
    result = train(stage_config(PATH, stages[student], root, FEW), root / student, quiet=True)
    assert result.final_step == 2 and result.eval["test"]["accuracy"] > 0
    logged = (root / student / "metrics.jsonl").read_text()
    terms = ("kd",) if "cached" in student else ("kd", "hidden", "attention")
    assert all(f'"loss/{t}"' in logged for t in terms)


def test_the_language_model_distillation_stages_are_valid_configs(tmp_path):
    path = PATH.with_name("distill_lm_smollm2.py")
    stages = load_stages(path)
    configs = {s.name: stage_config(path, s, tmp_path) for s in stages}
    assert sorted(configs) == sorted(f"{a}_s{s}" for a in ("lm", "kd") for s in (0, 1, 2))
    for seed in (0, 1, 2):
        lm, kd = configs[f"lm_s{seed}"], configs[f"kd_s{seed}"]
        assert len(lm.model.keep_layers) == 15 and lm.seed == kd.seed == seed
        assert not lm.losses and kd.losses.kd.teacher == "smollm2-135m-instruct"


def test_the_sequence_level_distillation_stages_are_valid_configs(tmp_path):
    path = PATH.with_name("distill_math_gemma.py")
    stages = load_stages(path)
    configs = {s.name: stage_config(path, s, tmp_path) for s in stages}
    teacher = configs["teacher"]
    assert teacher.model.name == "gemma3-270m" and teacher.sources.halves.train
    for seed in (0, 1, 2):
        kd, gold = configs[f"seq_kd_s{seed}"], configs[f"gold_s{seed}"]
        assert kd.model.name == gold.model.name == "smollm2-135m-instruct"
        assert kd.sources.answers.path == str(tmp_path / "teacher_answers.jsonl")
        assert gold.sources.answers.path == str(tmp_path / "true_answers.jsonl")
        assert not kd.sources.heldout.train  # the figures come from questions never trained on
    assert {s.before for s in stages if s.name != "teacher"} == {"write_answers"}
