"""A run with several data sources (the `sources` block), end to end: the mixture's proportions,
per-source losses and evaluation, an exact resume mid-epoch, the label map saved with the run;
and a user's bad data file ending `ftjax train` at once with one line and exit status 2, before
anything is written to the workdir."""

import csv
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import make_sentences
from ftjax.cli import main
from ftjax.train.config import load_config
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train
from ftjax.train.restore import restore_run

NAMES = {0: "neg", 1: "pos"}


def _write_csv(path: Path, rows, *, label_names=True, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        for row in rows:
            writer.writerow([row["text"], NAMES[row["label"]] if label_names else row["label"]])


@pytest.fixture
def reviews(tmp_path):
    """A second source in another shape: csv, columns review/sentiment, labels as names."""
    for split, n, seed in (("train", 30, 10), ("validation", 12, 11), ("test", 12, 12)):
        _write_csv(tmp_path / f"reviews_{split}.csv", make_sentences(n, seed))
    return str(tmp_path / "reviews_{split}.csv")


def _two_sources(tiny_text_data, reviews, *extra):
    return [
        "sources.tweets.kind=local", f"sources.tweets.path={tiny_text_data}",
        "sources.tweets.weight=0.8",
        "sources.reviews.kind=local", f"sources.reviews.path={reviews}",
        "sources.reviews.text_column=review", "sources.reviews.label_column=sentiment",
        "sources.reviews.labels=('neg','pos')", "sources.reviews.weight=0.2",
        "data.source=polarity", "data.path=None",  # the data block's defaults: sources name it
        *extra]


def test_two_sources_mix_by_weight(tiny_config_file, tiny_text_data, reviews):
    exp = build_experiment(load_config(tiny_config_file, _two_sources(tiny_text_data, reviews)))
    assert [s.name for s in exp.sources] == ["reviews", "tweets"]  # by name
    iterator, counts = exp.train_iterator(), np.zeros(2)
    while counts.sum() < 2000:
        counts += np.bincount(next(iterator)["source"], minlength=2)
    assert abs(counts[1] / counts.sum() - 0.8) < 0.03


def test_a_two_source_run_logs_per_source_and_resumes_exactly(tiny_config_file, tiny_text_data,
                                                               reviews, tmp_path):
    """Killed after its step-6 checkpoint (mid-epoch: 126 records, batches of 8), the run
    resumes with bit-identical losses; losses and evaluations are per source."""
    cfg = load_config(tiny_config_file, _two_sources(tiny_text_data, reviews))
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    result = train(cfg, full, quiet=True)
    shutil.copytree(full, resumed)
    for managed in ("checkpoints", "best"):
        for step_dir in (resumed / managed).iterdir():
            if step_dir.name != "6":
                shutil.rmtree(step_dir)
    train(cfg, resumed, quiet=True)
    rows = lambda w: [json.loads(x) for x in (w / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    losses = lambda w: {r["step"]: r["loss"] for r in rows(w) if "split" not in r}  # noqa: E731
    assert [losses(full)[s] for s in range(7, 13)] == [losses(resumed)[s] for s in range(7, 13)]
    train_row = next(r for r in rows(full) if "split" not in r)
    assert {"loss/ce/tweets", "loss/ce/reviews"} <= set(train_row)
    assert set(result.eval) == {"validation", "validation/tweets", "validation/reviews",
                                "test", "test/tweets", "test/reviews"}
    macro = np.mean([result.eval[f"validation/{s}"]["accuracy"] for s in ("tweets", "reviews")])
    assert result.eval["validation"]["accuracy"] == pytest.approx(macro)
    facts = json.loads((full / "data.json").read_text())["sources"]
    assert facts["reviews"] == {"labels": ["neg", "pos"], "train_examples": 30}
    assert facts["tweets"] == {"labels": None, "train_examples": 96}


def test_a_restored_run_reads_no_training_data(tiny_config_file, tmp_path):
    """Evaluation rebuilds the run from its directory: label names come from data.json, and
    the train file is never opened (here it no longer exists)."""
    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 40, 0), ("validation", 16, 1), ("test", 16, 2)):
        _write_csv(data / f"{split}.csv", make_sentences(n, seed))
    cfg = load_config(tiny_config_file, [
        f"data.path={data}/{{split}}.csv", "task.text_key=review", "task.label_key=sentiment",
        "steps=2", "eval_every=2", "checkpoint_every=2"])
    result = train(cfg, tmp_path / "run", quiet=True)
    (data / "train.csv").unlink()
    exp, restored = restore_run(tmp_path / "run")
    assert exp.sources[0].label_names == ("neg", "pos") and "train" not in exp.sources[0].splits
    eval_step = exp.jit_eval_step()
    from ftjax.train.evaluation import evaluate_splits

    again = evaluate_splits(exp, eval_step, restored.state, ["test"])
    assert again["test"] == result.eval["test"]
    assert jax.tree.leaves(restored.state.trainable)


# --------------------------------------------------------------------------------------------
# Bad data: one line on stderr, exit status 2, nothing written


def _fails_cleanly(capsys, config, workdir, overrides, *expected):
    args = ["train", str(config), "--workdir", str(workdir), "--quiet"]
    for override in overrides:
        args += ["--set", override]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftjax train: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not workdir.exists()  # found before anything was written


def _local(tmp_path, name="d", **files):
    for split, text in files.items():
        path = tmp_path / f"{name}_{split}.csv"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return [f"data.path={tmp_path}/{name}_{{split}}.csv"]


GOOD = "text,label\nthe film was good,1\nbad plot,0\n"


def test_a_missing_split_file(tiny_config_file, tmp_path, capsys):
    overrides = _local(tmp_path, train=GOOD, test=GOOD)
    _fails_cleanly(capsys, tiny_config_file, tmp_path / "w", overrides,
                   "validation split", "d_validation.csv does not exist", "validation_split=None")


def test_an_empty_file(tiny_config_file, tmp_path, capsys):
    overrides = _local(tmp_path, train=GOOD, validation="", test=GOOD)
    _fails_cleanly(capsys, tiny_config_file, tmp_path / "w", overrides, "d_validation.csv",
                   "empty")


def test_a_missing_column(tiny_config_file, tmp_path, capsys):
    overrides = _local(tmp_path, train="sentence,label\na good film,1\n", validation=GOOD,
                       test=GOOD)
    _fails_cleanly(capsys, tiny_config_file, tmp_path / "w", overrides, "'text'",
                   "d_train.csv", "sentence")


def test_a_label_outside_the_set(tiny_config_file, tmp_path, capsys):
    overrides = _local(tmp_path, train=GOOD, validation="text,label\nfine,2\n", test=GOOD)
    _fails_cleanly(capsys, tiny_config_file, tmp_path / "w", overrides, "d_validation.csv",
                   "label 2", "[0, 2)")


def test_undecodable_bytes_name_the_line_and_suggest_an_encoding(tiny_config_file, tmp_path,
                                                                 capsys):
    cp1252 = "text,label\nthe film was good,1\nun caf\u00e9 tr\u00e8s ennuyeux,0\n".encode("cp1252")
    overrides = _local(tmp_path, train=cp1252, validation=GOOD, test=GOOD)
    _fails_cleanly(capsys, tiny_config_file, tmp_path / "w", overrides, "d_train.csv line 3",
                   "0xe9", "encoding")


def test_an_evaluated_only_source_changes_no_training(tiny_config_file, tiny_text_data, reviews,
                                                      tmp_path):
    """A source with train=False is never drawn from, reads no train split, and is reported on
    its own: the run trains bit-identically to the run without it, and the split's average
    (what selection follows) is the trained source's alone."""
    alone_cfg = load_config(tiny_config_file, [
        "sources.tweets.kind=local", f"sources.tweets.path={tiny_text_data}",
        "data.source=polarity", "data.path=None", "steps=4", "eval_every=4"])
    with_cfg = load_config(tiny_config_file, [
        *_two_sources(tiny_text_data, reviews), "sources.reviews.train=False",
        "sources.reviews.train_split=absent", "steps=4", "eval_every=4"])
    alone = train(alone_cfg, tmp_path / "alone", quiet=True)
    both = train(with_cfg, tmp_path / "both", quiet=True)
    assert [s.name for s in both.experiment.sources] == ["tweets", "reviews"]  # trained first
    assert "train" not in both.experiment.sources[1].splits  # no reviews_absent.csv was read
    for a, b in zip(jax.tree.leaves(alone.state.trainable), jax.tree.leaves(both.state.trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert both.eval["validation"]["loss"] == both.eval["validation/tweets"]["loss"]
    assert both.eval["validation/tweets"] == pytest.approx(alone.eval["validation"])
    assert "validation/reviews" in both.eval and "test/reviews" in both.eval
    train_row = next(json.loads(x) for x in (tmp_path / "both" / "metrics.jsonl")
                     .read_text().splitlines() if "split" not in json.loads(x))
    assert not any(key.endswith("/reviews") for key in train_row)
