"""Sequence-level distillation: a teacher run's answers to a source's prompts become a data
source (`ftjax distill-targets`), which a student trains on."""

import json

import pytest

from conftest import WORDS, write_tiny_config
from ftjax.cli import main
from ftjax.generate.api import decode_prompts
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.train.restore import restore_run


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "pairs_{split}.jsonl"
    for split, n in (("train", 24), ("validation", 6), ("test", 6)):
        with open(str(path).format(split=split), "w") as f:
            for i in range(n):
                words = [WORDS[(i * 3 + k) % len(WORDS)] for k in range(4)]
                f.write(json.dumps({"prompt": " ".join(words[:2]),
                                    "target": " ".join(words[2:])}) + "\n")
    return str(path)


def _lm_config(tmp_path, tiny_bert_dir, tiny_text_data, tiny_llama_dir, data, *extra):
    path = write_tiny_config(tmp_path / "lm.py", tiny_bert_dir, tiny_text_data)
    return path, load_config(path, [
        f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
        "task.max_length=24", f"data.path={data}", "task.prompt_key=prompt",
        "task.text_key=target", "model.dtype=float32", "steps=3", "eval_every=3",
        "checkpoint_every=3", "best_metric=", *extra])


def test_a_teachers_answers_become_the_students_targets(tmp_path, tiny_bert_dir,
                                                       tiny_text_data, tiny_llama_dir,
                                                       prompts_file, capsys):
    path, teacher_cfg = _lm_config(tmp_path, tiny_bert_dir, tiny_text_data, tiny_llama_dir,
                                   prompts_file, "optimizer.learning_rate=1e-1")
    train(teacher_cfg, tmp_path / "teacher", quiet=True)
    overrides = [f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
                 "task.max_length=24", f"data.path={prompts_file}",
                 "task.prompt_key=prompt", "task.text_key=target", "model.dtype=float32"]
    out = tmp_path / "answers.jsonl"
    args = ["distill-targets", str(path), "--workdir", str(tmp_path / "teacher"),
            *[f"--set={o}" for o in overrides], "--out", str(out), "--max-new-tokens", "4"]
    assert main(args) == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24
    # The answers are the teacher's greedy generations from its own prompt rendering.
    exp, restored = restore_run(tmp_path / "teacher", full_precision=True,
                                roles=("train", "validation", "test"))
    source = exp.sources[0]
    featurizer = source.task.featurizer(exp.tokenizer)
    prompts = [featurizer.generation_example(r)[0] for r in source.splits["train"]]
    expected = decode_prompts(exp.model, restored.state.params, exp.tokenizer, prompts,
                              max_new_tokens=4)
    assert [r["text"] for r in rows] == expected
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in source.splits["train"]]
    # A second run onto the same file is refused in one line; the file is kept.
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err and out.read_text().count("\n") == 24

    # The student trains on the answers as a local prompt / target source.
    student_cfg = load_config(path, [
        f"model.name={tiny_llama_dir}", "head.kind=lm", "task.kind=causal_lm",
        "task.max_length=24", "data.source=polarity", "data.path=None",
        "sources.answers.kind=local", f"sources.answers.path={out}",
        "sources.answers.prompt_column=prompt", "sources.answers.text_column=text",
        "sources.answers.split_fractions=(0.8, 0.1, 0.1)", "model.dtype=float32",
        "steps=2", "eval_every=2", "checkpoint_every=2", "best_metric=", "seed=1"])
    result = train(student_cfg, tmp_path / "student", quiet=True)
    assert result.final_step == 2
