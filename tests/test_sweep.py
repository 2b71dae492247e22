"""Sweeps: the plan from a config, lr selection on validation, mean +- std, a resumable run
end to end on tiny BERT with the table and plots it writes."""

import csv
import json
import math
from pathlib import Path

import pytest

from ftjax.peft.presets import SUGGESTED_LEARNING_RATES
from ftjax.sweep import load_sweep, mean_std, summarize, write_report
from ftjax.sweep import runner as sweep_runner
from ftjax.sweep.plan import SEARCH, SEED
from ftjax.sweep.select import choose_lr
from ftjax.train.config import ConfigError


def _sweep_file(tmp_path, experiment, body=""):
    """A sweep over the tiny experiment: 2 methods x 2 rates x 2 seeds, 3 steps per run."""
    path = tmp_path / "tiny_sweep.py"
    path.write_text(f'''
import ml_collections


def get_config(arg="base"):
    c = ml_collections.ConfigDict()
    c.name = "tiny_" + arg
    c.methods = ("linear_probe", "bitfit")
    c.seeds = 2
    c.lr_factors = (1.0, 3.0)
    c.overrides = ("steps=3", "eval_every=3", "checkpoint_every=3", "log_every=1",
                   "best_metric=")
    c.tasks = ml_collections.ConfigDict()
    c.tasks.bert = ml_collections.ConfigDict({{
        "experiment": {str(experiment)!r},
        "method_overrides": {{"linear_probe": ("optimizer.learning_rate=1.0",)}},
    }})
    c.workdir = {str(tmp_path / "sweep")!r}
    c.results_dir = "results"
    c.compilation_cache = False
{body}
    return c
''')
    return path


def test_plan_lists_the_search_runs_grids_and_seed_runs(tmp_path, tiny_config_file):
    sweep = load_sweep(f"{_sweep_file(tmp_path, tiny_config_file)}:small")
    assert sweep.name == "tiny_small" and sweep.methods == ("linear_probe", "bitfit")
    probe, bitfit = SUGGESTED_LEARNING_RATES["linear_probe"], SUGGESTED_LEARNING_RATES["bitfit"]
    assert sweep.grids["bert", "bitfit"] == (bitfit, 3 * bitfit)
    search = sweep.search_runs()
    assert [(s.method, s.lr, s.seed, s.phase) for s in search] == [
        ("linear_probe", probe, 0, SEARCH), ("linear_probe", 3 * probe, 0, SEARCH),
        ("bitfit", bitfit, 0, SEARCH), ("bitfit", 3 * bitfit, 0, SEARCH)]
    seeds = sweep.seed_runs("bert", "bitfit", bitfit)
    assert [(s.seed, s.phase, s.lr) for s in seeds] == [(1, SEED, bitfit)]
    assert sweep.num_runs() == 6
    # The cell's own method, rate and seed come after every other override, so they hold
    # (linear_probe's method override sets another rate); the sweep's overrides apply.
    cfg = search[1].config()
    assert (cfg.method, cfg.optimizer.learning_rate, cfg.seed, cfg.steps) == (
        "linear_probe", 3 * probe, 0, 3)
    assert tuple(cfg.eval_splits) == ("validation",)
    assert tuple(seeds[0].config().eval_splits) == ()  # seed runs: test only
    assert search[2].run_id == f"bert/bitfit/lr_{bitfit:.3g}/seed_0"


def test_sweep_overrides_and_explicit_grids(tmp_path, tiny_config_file):
    path = _sweep_file(tmp_path, tiny_config_file)
    sweep = load_sweep(str(path), ["seeds=3", "learning_rates.bitfit=(1e-4, 2e-4, 4e-4)",
                                   "tasks.bert.learning_rates.linear_probe=(0.1,)"])
    assert sweep.seeds == 3 and sweep.grids["bert", "bitfit"] == (1e-4, 2e-4, 4e-4)
    assert sweep.grids["bert", "linear_probe"] == (0.1,)
    assert sweep.num_runs() == (3 + 2) + (1 + 2)
    # Training that keeps its best checkpoint by validation keeps validation in seed runs too.
    keeps_best = load_sweep(str(path), ["overrides=('steps=3', 'best_metric=accuracy')"])
    (seed_run,) = keeps_best.seed_runs("bert", "bitfit", 1e-3)
    assert tuple(seed_run.config().eval_splits) == ("validation",)


def test_a_tasks_own_lr_factors_win_over_the_sweeps(tmp_path, tiny_config_file):
    path = _sweep_file(tmp_path, tiny_config_file, '''
    c.tasks.small_batch = ml_collections.ConfigDict({"experiment": c.tasks.bert.experiment,
                                                    "lr_factors": (0.1, 0.5)})
''')
    bitfit = SUGGESTED_LEARNING_RATES["bitfit"]
    sweep = load_sweep(str(path), ["tasks.small_batch.learning_rates.linear_probe=(0.2,)"])
    assert sweep.grids["bert", "bitfit"] == (bitfit, 3 * bitfit)  # the sweep's (1, 3)
    assert sweep.grids["small_batch", "bitfit"] == (0.1 * bitfit, 0.5 * bitfit)
    assert sweep.grids["small_batch", "linear_probe"] == (0.2,)  # an explicit grid still wins
    overridden = load_sweep(str(path), ["tasks.bert.lr_factors=(2.0,)"])
    assert overridden.grids["bert", "bitfit"] == (2 * bitfit,)
    with pytest.raises(ConfigError, match=r"tasks.small_batch.lr_factors has a learning rate <= 0"):
        load_sweep(str(path), ["tasks.small_batch.lr_factors=(0.5, -1.0)"])


@pytest.mark.parametrize("change,message", [
    ('    c.methods = ("full", "lorra")\n', r"unknown method 'lorra'; did you mean 'lora'"),
    ('    c.methods = ()\n', r"`methods` is empty"),
    ('    c.lr_factors = ()\n', r"is empty: a method needs at least one learning rate"),
    ('    c.learning_rates = ml_collections.ConfigDict({"full": ()})\n',
     r"learning_rates.full is empty"),
    ('    c.learning_rates = ml_collections.ConfigDict({"full": (1e-3, -1.0)})\n',
     r"learning rate <= 0"),
    ('    c.seedz = 2\n', r"unknown sweep key 'seedz'; did you mean 'seeds'"),
    ('    c.seeds = 0\n', r"`seeds` must be >= 1"),
    ('    c.tasks.bert.overrides = ("stepz=3",)\n',
     r"run bert/linear_probe/.*unknown key 'stepz'; did you mean 'steps'"),
])
def test_bad_sweep_configs_are_clear_errors(tmp_path, tiny_config_file, change, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(str(_sweep_file(tmp_path, tiny_config_file, change)))


def test_bad_sweep_overrides_name_the_key(tmp_path, tiny_config_file):
    path = str(_sweep_file(tmp_path, tiny_config_file))
    with pytest.raises(ConfigError, match=r"unknown sweep key 'seedz'; did you mean 'seeds'"):
        load_sweep(path, ["seedz=2"])
    with pytest.raises(ConfigError, match=r"'seeds' must be int"):
        load_sweep(path, ["seeds=two"])
    with pytest.raises(ConfigError, match=r"not a sweep config"):
        load_sweep(str(tiny_config_file))


@pytest.mark.parametrize("variant", ["reduced", "converged", "full"])
def test_paper_sweep_config_plans_every_run(variant):
    sweep = load_sweep(f"experiments/paper_polarity.py:{variant}")  # every run config checked
    assert [t.name for t in sweep.tasks] == ["minilm", "smollm2"]
    assert all(len(grid) == 3 for grid in sweep.grids.values()) and sweep.seeds == 3
    assert sweep.results_dir.parts[-2:] == ("experiments", "results")
    smollm2 = sweep.search_runs("smollm2", "lora")[0].config()
    assert smollm2.head.kind == "verbalizer" and smollm2.model.name == "smollm2-135m-instruct"
    if variant == "converged":  # every run stops on a plateau of validation accuracy
        assert sweep.extend_grid == 2 and smollm2.eval_at_start
        assert smollm2.early_stopping.patience == 3 and smollm2.best_metric == "accuracy"


def _record(lr, val, test=None, seed=0, phase=SEARCH, loss=0.5, status="done", **kw):
    return {"task": "t", "method": "m", "lr": lr, "seed": seed, "phase": phase,
            "status": status, "validation_accuracy": val, "validation_loss": loss,
            "test_accuracy": test, "run_id": f"t/m/lr_{lr}/seed_{seed}", "trainable": 10,
            "total": 100, "trainable_share": 0.1, "delta_bytes": 40, "step_time_s": 0.1,
            "memory_bytes": 1000, "memory_kind": "compiled step memory", "wall_s": 2.0, **kw}


def test_lr_selection_picks_the_best_validation_accuracy():
    records = [_record(1e-4, 0.70, test=0.99), _record(3e-4, 0.80, test=0.50),
               _record(1e-3, 0.75)]
    assert choose_lr(records) == 3e-4  # validation decides; test accuracy never does
    # Ties go to the lower validation loss, then to the smaller rate.
    tie = [_record(1e-4, 0.8, loss=0.4), _record(3e-4, 0.8, loss=0.3)]
    assert choose_lr(tie) == 3e-4
    assert choose_lr([_record(1e-4, 0.8), _record(3e-5, 0.8)]) == 3e-5
    # Failed runs and seed runs do not count; nothing finished: no choice.
    assert choose_lr([_record(1e-4, 0.9, status="failed"), _record(3e-4, 0.6)]) == 3e-4
    assert choose_lr([_record(1e-4, 0.99, seed=1, phase=SEED), _record(3e-4, 0.6)]) == 3e-4
    assert choose_lr([_record(1e-4, None, status="failed")]) is None


def test_mean_and_sample_std():
    mean, std = mean_std([0.80, 0.82, 0.87])
    assert math.isclose(mean, 0.83)
    assert math.isclose(std, math.sqrt(((0.03) ** 2 + (0.01) ** 2 + (0.04) ** 2) / 2))
    assert mean_std([0.5]) == (0.5, None) and mean_std([]) == (None, None)


def test_summary_row_is_over_the_seeds_at_the_chosen_rate():
    records = [_record(1e-4, 0.70, test=0.60), _record(3e-4, 0.80, test=0.80),
               _record(3e-4, None, test=0.90, seed=1, phase=SEED, wall_s=4.0),
               _record(1e-4, None, test=0.99, seed=1, phase=SEED)]  # another rate: ignored
    (row,) = summarize(records, ["t"], ["m"], seeds=2)
    assert row["lr"] == 3e-4 and row["seeds"] == [0, 1] and row["n"] == 2
    assert math.isclose(row["test_accuracy_mean"], 0.85)
    assert math.isclose(row["test_accuracy_std"], math.sqrt(2 * 0.05 ** 2))
    assert row["wall_s"] == 3.0 and row["status"] == "ok"


def test_tiny_sweep_end_to_end_writes_tables_and_plots_and_resumes(
        tmp_path, tiny_config_file, monkeypatch):
    calls, broken = [], {"on": True}
    real_train = sweep_runner.train

    def counting_train(cfg, workdir, **kw):
        calls.append(str(workdir))
        if broken["on"] and "/linear_probe/" in str(workdir) and str(workdir).endswith("seed_1"):
            raise RuntimeError("boom: a run that fails")
        return real_train(cfg, workdir, **kw)

    monkeypatch.setattr(sweep_runner, "train", counting_train)
    sweep = load_sweep(str(_sweep_file(tmp_path, tiny_config_file)))
    records = sweep_runner.Runner(sweep, log=lambda _: None).run_all()
    assert len(calls) == 6
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and "boom" in failed[0]["error"]
    assert failed[0]["method"] == "linear_probe" and failed[0]["seed"] == 1

    done = [r for r in records if r["status"] == "done"]
    for r in done:
        assert r["test_accuracy"] is not None and r["wall_s"] > 0 and r["step_time_s"] > 0
        assert r["memory_kind"] == "compiled step memory" and r["memory_bytes"] > 0
        assert r["checkpoint_bytes"] > r["delta_bytes"] > 0  # measured, then deleted
        assert not (sweep.workdir / r["run_id"] / "checkpoints").exists()
        assert (r["validation_accuracy"] is None) == (r["phase"] == SEED)
    probe = next(r for r in done if r["method"] == "linear_probe")
    assert probe["trainable"] == 30 * 2 + 2  # tiny BERT's hidden size 30, two labels
    assert probe["delta_bytes"] == 4 * probe["trainable"]  # the fp32 head only

    # --report-only reads back the same records from the run directories.
    ids = sorted(r["run_id"] for r in records)
    assert sorted(r["run_id"] for r in sweep_runner.collect(sweep)) == ids

    rows = summarize(records, ["bert"], sweep.methods, sweep.seeds)
    paths = write_report(sweep, rows, records, tmp_path / "out")
    table = paths["md"].read_text()
    assert "| bitfit |" in table and "| linear_probe |" in table and "CPU" in table
    assert "(n=2)" in table and "(n=1)" in table  # the failed seed is missing from its row
    with open(paths["csv"]) as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["method"], r["n"]) for r in csv_rows] == [("linear_probe", "1"), ("bitfit", "2")]
    saved = json.loads(paths["json"].read_text())
    assert len(saved["runs"]) == 6 and saved["rows"][1]["lr"] == rows[1]["lr"]
    assert str(tmp_path) not in paths["json"].read_text()  # no path of the machine that ran it
    assert saved["runs"][0]["experiment"] == "tiny_experiment.py"
    for key in ("share_png", "wall_png"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun trains only what did not finish: the failed run (fixed now).
    calls.clear()
    broken["on"] = False
    again = sweep_runner.Runner(sweep, log=lambda _: None)
    again.run_all()
    (victim,) = calls
    assert victim.endswith("seed_1") and (again.ran, again.skipped) == (1, 5)
    # A run killed before its result (no result.json) starts again from an empty directory.
    (Path(victim) / "result.json").unlink()
    (Path(victim) / "leftover").write_text("from the killed run")
    calls.clear()
    sweep_runner.Runner(sweep, log=lambda _: None).run_all()
    assert calls == [victim] and not (Path(victim) / "leftover").exists()


def test_isolated_runs_go_through_a_worker_process(tmp_path, tiny_config_file):
    sweep = load_sweep(str(_sweep_file(tmp_path, tiny_config_file)),
                       ["methods=('linear_probe',)", "seeds=1", "lr_factors=(1.0,)",
                        "isolate=True"])
    (record,) = sweep_runner.Runner(sweep, log=lambda _: None).run_all()
    assert record["status"] == "done" and record["isolated"] is True
    assert record["test_accuracy"] is not None and record["delta_bytes"] == 4 * 62
    assert "resumed" not in (sweep.workdir / record["run_id"] / "train.log").read_text()


def test_untrained_baseline_is_the_state_every_run_starts_from(tmp_path, tiny_config_file):
    """The baseline row evaluates the model exactly as a run sets it up: a linear probe trained
    at a learning rate of 1e-12 (its head moves by ~1e-12) scores what the baseline scores."""
    sweep = load_sweep(str(_sweep_file(tmp_path, tiny_config_file)),
                       ["methods=('linear_probe',)", "seeds=1", "baseline=True",
                        "learning_rates.linear_probe=(1e-12,)"])
    assert sweep.num_runs() == 2
    baseline, probe = sweep_runner.Runner(sweep, log=lambda _: None).run_all()
    assert (baseline["method"], baseline["phase"], baseline["status"]) == (
        "untrained", "baseline", "done")
    assert baseline["trainable"] == 0 and baseline["final_step"] == 0
    assert not (sweep.workdir / baseline["run_id"] / "checkpoints").exists()
    for split in ("validation", "test"):
        assert baseline["eval"][split]["examples"] == 40
        assert baseline["eval"][split]["accuracy"] == probe["eval"][split]["accuracy"]
        assert math.isclose(baseline["eval"][split]["loss"], probe["eval"][split]["loss"],
                            rel_tol=1e-5)

    rows = summarize(sweep_runner.collect(sweep), ["bert"], sweep.methods, sweep.seeds)
    assert [r["method"] for r in rows] == ["untrained", "linear_probe"]
    paths = write_report(sweep, rows, [baseline, probe], tmp_path / "out")
    assert "| untrained | 0 | 0% |" in paths["md"].read_text()
    assert paths["share_png"].read_bytes()[:4] == b"\x89PNG"
    again = sweep_runner.Runner(sweep, log=lambda _: None)
    again.run_all()
    assert (again.ran, again.skipped) == (0, 2)


def test_a_run_stays_finished_when_ftjax_grows_a_config_key(tiny_config_file):
    """A key added to the schema after a run (absent from its record) at its default does not
    make the run stale; the same key set otherwise, a changed value or a removed key does."""
    import json

    from ftjax.sweep.plan import config_fingerprint, same_config
    from ftjax.train.config import load_config

    cfg = load_config(tiny_config_file)
    recorded = json.loads(config_fingerprint(cfg))
    del recorded["model"]["attention_impl"]  # as recorded before the key existed
    older = json.dumps(recorded, sort_keys=True)
    assert same_config(config_fingerprint(cfg), cfg)
    assert same_config(older, cfg)
    assert not same_config(older, load_config(tiny_config_file, ["model.attention_impl=xla"]))
    assert not same_config(older, load_config(tiny_config_file, ["steps=13"]))
    recorded["model"]["retired_key"] = 1
    assert not same_config(json.dumps(recorded), cfg)
    assert not same_config(None, cfg)


def test_a_rate_at_the_end_of_the_grid_extends_the_search_until_bracketed(tmp_path,
                                                                          tiny_config_file):
    """Validation accuracy peaks at lr 0.3 (outside the grid 0.01, 0.03, 0.1): the search
    steps past the grid's end until a worse rate brackets the best, at most extend_grid times;
    --report-only replays the same walk from the records on disk."""
    from ftjax.sweep.select import beyond

    assert beyond([0.01, 0.03, 0.1], 0.1) == pytest.approx(0.1 * 0.1 / 0.03)
    assert beyond([0.01, 0.03, 0.1], 0.01) == pytest.approx(0.01 * 0.01 / 0.03)
    assert beyond([0.01, 0.03, 0.1], 0.03) is None and beyond([0.1], 0.1) is None
    sweep = load_sweep(str(_sweep_file(tmp_path, tiny_config_file, body=(
        "    c.learning_rates = ml_collections.ConfigDict({'bitfit': (0.01, 0.03, 0.1)})\n"
        "    c.extend_grid = 3"))))

    def accuracy(lr):
        return 0.9 - abs(math.log(lr / 0.3))  # best at 0.3

    asked = []

    def fake_run(spec):
        asked.append(spec.lr)
        return {"status": "done", "phase": SEARCH, "lr": spec.lr, "seed": 0,
                "validation_accuracy": accuracy(spec.lr), "validation_loss": 1.0}

    records, lr = sweep_runner.search_cell(sweep, "bert", "bitfit", fake_run)
    assert [round(r, 4) for r in asked] == [0.01, 0.03, 0.1, 0.3333, 1.1111]
    assert lr == pytest.approx(0.1 / 0.03 * 0.1) and len(records) == 5
    limited = load_sweep(str(_sweep_file(tmp_path, tiny_config_file, body=(
        "    c.learning_rates = ml_collections.ConfigDict({'bitfit': (0.001, 0.003)})\n"
        "    c.extend_grid = 2"))))
    asked.clear()
    _, lr = sweep_runner.search_cell(limited, "bert", "bitfit", fake_run)
    assert len(asked) == 4 and lr == max(asked)  # still at the end: extensions spent


def test_the_table_says_when_a_rate_is_not_bracketed_and_why_a_method_ends_below_untrained(
        tmp_path, tiny_config_file):
    from ftjax.sweep.plan import BASELINE, UNTRAINED
    from ftjax.sweep.report import markdown

    sweep = load_sweep(str(_sweep_file(tmp_path, tiny_config_file)))
    base = {"status": "done", "task": "bert", "trainable": 10, "total": 100,
            "trainable_share": 0.1, "delta_bytes": 40, "wall_s": 1.0, "step_time_s": 0.1}
    records = [
        {**base, "method": UNTRAINED, "phase": BASELINE, "lr": 0.0, "seed": 0,
         "test_accuracy": 0.70, "validation_accuracy": 0.68},
        *[{**base, "method": "bitfit", "phase": SEARCH, "lr": lr, "seed": 0,
           "validation_accuracy": acc, "test_accuracy": 0.6, "best_step": 0, "final_step": 40,
           "validation_curve": [[0, 0.68], [20, acc], [40, acc]]}
          for lr, acc in ((0.01, 0.60), (0.03, 0.62))],
        {**base, "method": "bitfit", "phase": SEED, "lr": 0.03, "seed": 1,
         "test_accuracy": 0.64, "best_step": 20, "final_step": 40},
    ]
    rows = summarize(records, ["bert"], ["bitfit"], 2)
    row = rows[1]
    assert row["lr_at_edge"] and row["below_untrained"] and row["best_steps"] == [0, 20]
    text = markdown(sweep, rows, ["CPU"])
    assert "the best rate, 0.03, is at an end of the rates searched (0.01, 0.03)" in text
    assert "`bitfit` ends below the untrained model (0.6200 vs 0.7000 test)" in text
    assert "0.01: 0.6000, 0.03: 0.6200, the untrained model's 0.6800" in text
    assert "steps kept by validation / run per seed: 0 of 40, 20 of 40" in text
