"""The figures the end-to-end benchmarks report, computed from rows (no model runs here: the
benchmarks themselves are run by hand and their results committed)."""

import json

import pytest

from benchmarks.generation import agreement, compare
from benchmarks.race import (
    ftjax_command,
    ftjax_events,
    hf_command,
    hf_events,
    side_figures,
    watch,
)
from benchmarks.races import RACES


def test_agreement_counts_identical_rows_and_the_agreeing_prefix():
    ours = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9]]
    theirs = [[1, 2, 3, 4], [5, 6, 0, 8], [0, 9]]
    got = agreement(ours, theirs)
    assert got == {"rows_identical": 1, "rows": 3, "mean_agreeing_prefix": (4 + 2 + 0) / 3}


def test_compare_ratios_are_ftjax_over_torch_for_speed():
    ours = [{"batch": 8, "prompt_tokens": 64, "new_tokens": 4, "ttft_s": 0.5, "total_s": 2.0,
             "tokens_per_s": 16.0, "compile_s": 3.0, "token_ids": [[1, 2]]}]
    theirs = [{"batch": 8, "prompt_tokens": 64, "new_tokens": 4, "ttft_s": 1.0, "total_s": 4.0,
               "tokens_per_s": 8.0, "token_ids": [[1, 2]]}]
    row = compare(ours, theirs)[0]
    assert row["tokens_per_s_vs_torch"] == 2.0 and row["ttft_speedup_vs_torch"] == 2.0
    assert row["same_outputs"]["rows_identical"] == 1 and row["ftjax_compile_s"] == 3.0


def test_events_from_both_sides_files(tmp_path):
    rows = [{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6},
            {"step": 2, "split": "validation", "accuracy": 0.5},
            {"step": 2, "split": "final", "validation_accuracy": 0.5, "test_accuracy": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows)
                                            + '{"step": 3, "lo')  # a row being written
    assert ftjax_events(tmp_path) == [
        {"event": "first_step", "step": 1}, {"event": "eval", "step": 2, "accuracy": 0.5},
        {"event": "test", "step": 2, "accuracy": 0.6}]
    assert hf_events(tmp_path / "absent") == []


def test_watch_stamps_events_and_stops_at_the_first_wanted_one(tmp_path):
    events = tmp_path / "events.jsonl"
    script = (f"import json, time\nf = open({str(events)!r}, 'a')\n"
              "f.write(json.dumps({'event': 'first_step', 'step': 1}) + '\\n'); f.flush()\n"
              "time.sleep(60)\n")
    result = watch(["python", "-c", script], lambda: hf_events(tmp_path), until="first_step",
                   timeout=30)
    assert [e["event"] for e in result["events"]] == ["first_step"]
    assert 0 < result["events"][0]["t_s"] <= result["wall_s"] < 30


def _stamped(evals, test):
    events = [{"event": "first_step", "step": 1, "t_s": 1.0}]
    events += [{"event": "eval", "step": step, race_metric: value, "t_s": t}
               for step, race_metric, value, t in evals]
    events.append({"event": "test", "step": evals[-1][0], evals[-1][1]: test, "t_s": 99.0})
    return {"events": events, "wall_s": 100.0}


def test_a_relative_target_counts_from_the_runs_own_step_zero():
    race = RACES["clm_lora"]  # lower is better, target 0.9 x the step-0 perplexity
    result = _stamped([(0, "perplexity", 30.0, 10.0), (20, "perplexity", 27.5, 50.0),
                       (40, "perplexity", 26.9, 90.0)], test=28.0)
    figures = side_figures(race, result, steps=40, facts={"real_tokens_per_example": 256.0})
    assert figures["target"] == pytest.approx(27.0)
    assert (figures["step_at_target"], figures["time_to_target_s"]) == (40, 90.0)
    assert figures["test_perplexity"] == 28.0
    assert figures["real_tokens_per_s"] == pytest.approx(40 * 4 * 256 / 100.0)


def test_an_absolute_target_and_a_run_that_never_reaches_it():
    race = RACES["ner_full"]  # higher is better, entity F1 0.40
    reached = _stamped([(80, "f1", 0.3, 20.0), (160, "f1", 0.41, 40.0)], test=0.45)
    assert side_figures(race, reached, 160, {"real_tokens_per_example": 30.0}
                        )["step_at_target"] == 160
    missed = _stamped([(80, "f1", 0.3, 20.0), (160, "f1", 0.39, 40.0)], test=0.38)
    figures = side_figures(race, missed, 160, {"real_tokens_per_example": 30.0})
    assert figures["time_to_target_s"] is None and figures["test_f1"] == 0.38


def test_a_relative_target_without_a_step_zero_evaluation_is_refused():
    with pytest.raises(ValueError, match="step-0"):
        RACES["clm_lora"].threshold(None)


def test_ftjax_events_read_the_races_metric(tmp_path):
    rows = [{"step": 0, "split": "validation", "perplexity": 30.2},
            {"step": 1, "loss": 3.4},
            {"step": 1, "split": "final", "test_perplexity": 35.8}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ftjax_events(tmp_path, "perplexity") == [
        {"event": "eval", "step": 0, "perplexity": 30.2}, {"event": "first_step", "step": 1},
        {"event": "test", "step": 1, "perplexity": 35.8}]


def test_both_sides_get_the_races_recipe(tmp_path):
    race = RACES["ner_full"]
    ours = ftjax_command(race, tmp_path / "w", tmp_path / "d", 480, 80, 80)
    sets = dict(arg.split("=", 1) for arg in ours[ours.index("--quiet") + 1:] if arg != "--set")
    assert (sets["batch_size"], sets["task.max_length"], sets["steps"]) == ("16", "48", "480")
    assert sets["optimizer.learning_rate"] == "0.0005" and sets["head.dropout"] == "0.1"
    theirs = hf_command(race, tmp_path / "m", tmp_path / "o", tmp_path / "d", 480, 80)
    flags = dict(zip(theirs[3::2], theirs[4::2]))
    assert (flags["--batch-size"], flags["--max-length"], flags["--steps"]) == ("16", "48", "480")
    assert flags["--lr"] == "0.0005" and flags["--warmup"] == "48"
    clm = ftjax_command(RACES["clm_lora"], tmp_path / "w", tmp_path / "d", 40, 20, 20)
    assert f"data.path={tmp_path / 'd'}/{{split}}.jsonl" in clm
