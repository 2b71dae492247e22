"""Instruction tuning on real data: the chitchat and arithmetic assets as conversations, and a
short real run of experiments/instruct_smollm2.py that scores generated math answers by exact
match and the held-out conversations' response perplexity."""

import json
import math
from pathlib import Path

import pytest

from ftjax import assets
from ftjax.assets.dialogues import conversation
from ftjax.generate.evaluation import GenerationEval, exact_match
from ftjax.train.config import load_config
from ftjax.train.loop import train

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "instruct_smollm2.py"


def test_dialogue_turns_become_alternating_messages_ending_with_the_assistant():
    turns = [[{"text": "Hello"}, {"text": "How are you?"}], [{"text": " "}],
             [{"text": "fine"}], [{"text": "good"}], [{"text": "bye"}]]
    # The empty second turn drops out; the user's two turns around it merge; the last user
    # turn has no reply and goes.
    assert conversation(turns) == [
        {"role": "user", "content": "Hello\nHow are you?\nfine"},
        {"role": "assistant", "content": "good"}]
    for line in open(assets.resolve("chitchat"), encoding="utf-8"):
        messages = json.loads(line)["messages"]
        roles = [m["role"] for m in messages]
        assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) >= 2
        assert all(a != b for a, b in zip(roles, roles[1:]))


def test_math_asset_splits_and_exact_match():
    folder = assets.resolve("math-add-sub").parent
    counts = {s: sum(1 for _ in open(folder / f"{s}.jsonl")) for s in
              ("train", "validation", "test")}
    assert counts == {"train": 1800, "validation": 200, "test": 100}
    assert exact_match([" 4", "5", "x"], ["4", "6", "x "]) == pytest.approx(200 / 3)


def test_short_real_run_scores_math_exact_match_and_response_perplexity(tmp_path):
    # Scanned layers: one compiled block instead of 30 (compilation is most of this test's
    # time); the layout computes the same model (tests/test_models.py).
    cfg = load_config(EXPERIMENT, [
        "steps=2", "eval_every=2", "checkpoint_every=2", "log_every=1", "hooks=()",
        "eval_at_start=False", "model.scan_layers=True", "sources.chat.max_eval_examples=3",
        "sources.math.max_eval_examples=3", "sources.chat.max_train_examples=40"])
    result = train(cfg, tmp_path, quiet=True,
                   hooks=[GenerationEval(max_new_tokens=12, batch_size=4)])
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    evaluated = {line["split"]: line for line in lines if line.get("step") == 2 and "split" in line}
    assert 0 <= evaluated["validation/math"]["exact_match"] <= 100
    assert "exact_match" not in evaluated["validation/chat"]  # chat names no generation metric
    chat = evaluated["validation/chat"]
    assert math.isclose(chat["perplexity"], math.exp(chat["loss"]), rel_tol=1e-6)
    assert result.eval["test"]["exact_match"] == result.eval["test/math"]["exact_match"]
    generated = [json.loads(x) for x in open(tmp_path / "generations" / "validation-math-2.jsonl")]
    assert [g["reference"] for g in generated] == [
        r["messages"][-1]["content"] for r in result.experiment.sources[1].splits["validation"]]
