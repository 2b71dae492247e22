"""The continual-learning experiment: its stages (every arm over the task sequence, each stage
from the one before) and their configs; the machinery they use runs for real on a tiny model in
tests/test_continual.py, and the suite's data are experiment assets, not test assets."""

from pathlib import Path

from ftjax.train.stages import load_stages, stage_config, write_report

PATH = Path(__file__).resolve().parents[1] / "experiments" / "continual_suite.py"
LM_PATH = PATH.with_name("continual_lm_smollm2.py")
SEQUENCE = ("polarity", "topic", "spam", "paraphrase")
DOMAINS = ("speeches", "licences", "code")


def test_every_arm_runs_the_sequence_each_stage_from_the_one_before(tmp_path):
    stages = load_stages(PATH)
    assert len(stages) == 3 * (8 * 4 + 1)
    by_name = {s.name: s for s in stages}
    configs = {s.name: stage_config(PATH, s, tmp_path) for s in stages}
    for seed in (0, 1, 2):
        for arm in ("naive", "ewc", "lwf", "replay5", "l2sp"):
            names = [f"{arm}_s{seed}_{i}{t}" for i, t in enumerate(SEQUENCE)]
            assert by_name[names[0]].init_from is None
            for earlier, later in zip(names, names[1:]):
                assert by_name[later].init_from == earlier
                assert configs[later].init_from == str(tmp_path / earlier)
        for i, task in enumerate(SEQUENCE):
            cfg = configs[f"naive_s{seed}_{i}{task}"]
            assert [n for n, s in cfg.sources.items() if s.train] == [task]
            assert cfg.init_head == "keep" and cfg.eval_at_start == (i == 0)
            assert by_name[f"adapters_s{seed}_{i}{task}"].init_from is None
    ewc = configs["ewc_x100_s1_2spam"]
    assert ewc.losses.ewc.weight == 100.0 and ewc.losses.ewc.fisher == str(
        tmp_path / "ewc_x100_s1_1topic" / "fisher.safetensors")
    assert by_name["ewc_s0_1topic"].before == "fisher_of_previous"
    lwf = configs["lwf_s2_3paraphrase"].losses.lwf
    assert tuple(lwf.tasks) == SEQUENCE[:3] and lwf.teacher == str(tmp_path / "lwf_s2_2spam")
    replay = configs["replay1_s0_2spam"]
    assert replay.replay.capacity == 80
    assert replay.replay.continue_from == str(tmp_path / "replay1_s0_1topic" / "replay.json")
    trained = {n: s for n, s in replay.sources.items() if s.train}
    assert sorted(trained) == ["polarity", "spam", "topic"]
    assert trained["polarity"].replay_from == trained["topic"].replay_from != ""
    assert trained["spam"].replay_from == "" and trained["spam"].weight == 0.8
    joint = configs["joint_s0"]
    assert all(s.train for s in joint.sources.values()) and joint.steps == 600


def test_the_report_computes_transfer_from_a_record(tmp_path):
    metrics, evaluations = {}, {}
    for arm in ("naive", "adapters"):
        for i, task in enumerate(SEQUENCE):
            for j, other in enumerate(SEQUENCE):
                metrics[f"{arm}_s0_{i}{task}/test/{other}/accuracy"] = (
                    0.9 if i == j else 0.6 if j < i else 0.5)
        evaluations[f"{arm}_s0_0polarity"] = [
            {"step": 0, "split": f"test/{t}", "accuracy": 0.5} for t in SEQUENCE]
    for t in SEQUENCE:
        metrics[f"joint_s0/test/{t}/accuracy"] = 0.85
    record = {"metrics": metrics, "evaluations": evaluations, "machine": "test"}
    written = write_report(PATH, record, tmp_path / "continual_suite")
    table = written[0].read_text()
    # naive: the last row is 0.6, 0.6, 0.6, 0.9; each task had 0.9 after its own stage.
    assert "| naive | 1 | 0.6750 ± 0.0000 | -0.3000 ± 0.0000 | 0.3000 ± 0.0000 | " \
           "0.0000 ± 0.0000 |" in table
    # adapters keep each task's own score: nothing forgotten.
    assert "| adapters | 1 | 0.9000 ± 0.0000 | 0.0000 ± 0.0000 | 0.0000 ± 0.0000 |" in table
    assert "| joint | 1 | 0.8500 ± 0.0000 |" in table
    assert written[1].suffix == ".png"


def test_the_language_model_sequence_trains_each_domain_from_the_stage_before(tmp_path):
    stages = load_stages(LM_PATH)
    assert len(stages) == 3 * (7 * 3 + 1)
    by_name = {s.name: s for s in stages}
    configs = {s.name: stage_config(LM_PATH, s, tmp_path) for s in stages}
    for seed in (0, 1, 2):
        for arm in ("naive", "ewc", "l2sp", "replay1", "lwf"):
            names = [f"{arm}_s{seed}_{i}{d}" for i, d in enumerate(DOMAINS)]
            assert by_name[names[0]].init_from is None
            for earlier, later in zip(names, names[1:]):
                assert configs[later].init_from == str(tmp_path / earlier)
        for i, domain in enumerate(DOMAINS):
            cfg = configs[f"naive_s{seed}_{i}{domain}"]
            assert [n for n, s in cfg.sources.items() if s.train] == [domain]
            assert cfg.method == "full" and cfg.task.kind == "causal_lm"
            assert cfg.eval_at_start == (i == 0) and cfg.seed == seed
            adapters = configs[f"adapters_s{seed}_{i}{domain}"]
            assert adapters.method == "lora" and adapters.init_from is None
    # Directory assets are named, not resolved: the config fetches nothing.
    assert configs["naive_s0_2code"].sources.code.path == "python-code/*.txt"
    ewc = configs["ewc_s1_2code"].losses.ewc
    assert ewc.fisher == str(tmp_path / "ewc_s1_1licences" / "fisher.safetensors")
    assert by_name["ewc_s1_2code"].before == "fisher_of_previous"
    lwf = configs["lwf_s2_1licences"].losses.lwf
    assert lwf.teacher == str(tmp_path / "lwf_s2_0speeches") and tuple(lwf.tasks) == ()
    assert configs["l2sp_s0_1licences"].regularizer.l2sp == 0.01
    replay = configs["replay5_s0_2code"]
    assert replay.replay.capacity == 72
    assert replay.replay.continue_from == str(tmp_path / "replay5_s0_1licences" / "replay.json")
    trained = {n: s for n, s in replay.sources.items() if s.train}
    assert sorted(trained) == ["code", "licences", "speeches"]
    assert trained["speeches"].replay_from == trained["licences"].replay_from != ""
    assert trained["code"].replay_from == "" and trained["code"].weight == 0.8
    joint = configs["joint_s0"]
    assert all(s.train for s in joint.sources.values()) and joint.steps == 180


def test_the_language_model_report_reads_perplexity_as_lower_is_better(tmp_path):
    metrics, evaluations = {}, {}
    for arm in ("naive", "adapters"):
        for i, domain in enumerate(DOMAINS):
            for j, other in enumerate(DOMAINS):
                metrics[f"{arm}_s0_{i}{domain}/test/{other}/perplexity"] = (
                    10.0 if i == j else 14.0 if j < i else 30.0)
        evaluations[f"{arm}_s0_0speeches"] = [
            {"step": 0, "split": f"test/{d}", "perplexity": 32.0} for d in DOMAINS]
    record = {"metrics": metrics, "evaluations": evaluations, "machine": "test"}
    written = write_report(LM_PATH, record, tmp_path / "continual_lm")
    table = written[0].read_text()
    # naive: the last row is 14, 14, 10; each domain had 10 after its own stage: 4 lost.
    assert "| naive | 1 | 12.67 ± 0.00 | 4.00 ± 0.00 | 4.00 ± 0.00 | -2.00 ± 0.00 |" in table
    assert "| adapters | 1 | 10.00 ± 0.00 | 0.00 ± 0.00 | 0.00 ± 0.00 |" in table
    assert written[1].suffix == ".png"
