"""The figures the end-to-end benchmarks report, computed from rows (no model runs here: the
benchmarks themselves are run by hand and their results committed)."""

import json

from benchmarks.generation import agreement, compare
from benchmarks.race import ftjax_events, hf_events, watch


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
