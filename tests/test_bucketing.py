"""Batches without waste (ftjax.data.bucketing): rows grouped by length, batches cut to a few
fixed lengths; nothing changes what is computed on the real tokens, every row comes once,
resuming is exact, and each bucket compiles the train step once."""

import grain
import jax
import numpy as np
import pytest

from ftjax.data import SequenceClassification, make_eval_batches, make_train_iterator
from ftjax.data.bucketing import (
    LengthGroupedBatches,
    batch_length,
    bucket_lengths,
    cut_to_bucket,
    group_order,
    row_length,
)
from ftjax.data.errors import DataError
from ftjax.data.testing import tiny_encoder_tokenizer
from ftjax.train.config import load_config
from ftjax.train.evaluation import evaluate_splits
from ftjax.train.experiment import build_experiment
from ftjax.train.loop import train


def _row(length: int, width: int = 13, ident: int = 0) -> dict:
    mask = np.zeros(width, np.int32)
    mask[:length] = 1
    return {"input_ids": np.where(mask == 1, 7, 0).astype(np.int32), "attention_mask": mask,
            "offsets": np.zeros((width, 2), np.int32), "labels": np.int32(ident),
            "example_id": np.int32(ident)}


def test_bucket_lengths_always_hold_max_length_and_drop_longer_ones():
    assert bucket_lengths((), 64) == ()
    assert bucket_lengths((32, 16, 128), 64) == (16, 32, 64)
    with pytest.raises(DataError, match=">= 1"):
        bucket_lengths((0, 8), 64)


def test_a_cut_batch_keeps_its_row_features_and_cuts_every_token_feature():
    batch = {name: np.stack([r[name] for r in (_row(3), _row(6, ident=1))])
             for name in _row(1)}
    assert batch_length(batch) == 6
    cut = cut_to_bucket(batch, (4, 7, 13))
    assert cut["input_ids"].shape == (2, 7) and cut["attention_mask"].shape == (2, 7)
    assert cut["offsets"].shape == (2, 7, 2)
    assert cut["labels"].tolist() == [0, 1] and cut["example_id"].shape == (2,)
    # A teacher's per-example outputs have no token axis, even when as wide as the rows.
    batch["teacher_values"] = np.zeros((2, 13), np.float32)
    batch["teacher_token_values"] = np.zeros((2, 13, 5), np.float32)
    cut = cut_to_bucket(batch, (4, 7, 13))
    assert cut["teacher_values"].shape == (2, 13)
    assert cut["teacher_token_values"].shape == (2, 7, 5)
    assert cut_to_bucket(batch, (4, 7, 13), length=9)["input_ids"].shape == (2, 13)
    assert cut_to_bucket(batch, ())["input_ids"].shape == (2, 13)


def test_group_order_sorts_each_window_and_permutes_its_batches_by_seed():
    lengths = [5, 1, 9, 3, 3, 7, 2, 8]
    order = group_order(lengths, 3, seed=0, window_index=0)
    assert sorted(i for b in order for i in b) == list(range(8))
    assert sorted(len(b) for b in order) == [2, 3, 3]
    # Each batch is a run of the sorted lengths: [1 2 3] [3 5 7] [8 9].
    assert sorted(sorted(lengths[i] for i in b) for b in order) == [[1, 2, 3], [3, 5, 7], [8, 9]]
    assert order == group_order(lengths, 3, seed=0, window_index=0)
    others = [group_order(lengths, 3, seed=s, window_index=0) for s in range(1, 6)]
    assert any(o != order for o in others)


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [_row(int(k), ident=i) for i, k in enumerate(rng.integers(1, 14, size=n))]


def test_grouped_batches_hold_every_row_once_with_similar_lengths():
    rows = _rows(50)
    batches = list(LengthGroupedBatches(grain.MapDataset.source(rows).to_iter_dataset(),
                                        batch_size=4, window=5, seed=3))
    ids = np.concatenate([b["example_id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(50))
    assert [len(b["example_id"]) for b in batches].count(2) == 1  # the short window's end
    # Grouping removes padding: the batches' longest rows sum to far less than without it.
    grouped = sum(batch_length(b) for b in batches)
    plain = sum(max(row_length(r) for r in rows[i:i + 4]) for i in range(0, 50, 4))
    assert grouped < 0.8 * plain


def test_grouped_iterator_resumes_exactly_mid_window_and_at_window_ends():
    dataset = LengthGroupedBatches(grain.MapDataset.source(_rows(37)).repeat().to_iter_dataset(),
                                   batch_size=3, window=4, seed=1)
    reference = iter(dataset)
    expected = [next(reference)["example_id"].tolist() for _ in range(20)]
    for stop in (0, 1, 3, 4, 5, 9, 12):
        it = iter(dataset)
        for _ in range(stop):
            next(it)
        state = it.get_state()
        resumed = iter(dataset)
        resumed.set_state(state)
        assert [next(resumed)["example_id"].tolist() for _ in range(20 - stop)] == \
            expected[stop:], stop


def _tokenizer_task():
    words = [f"w{i}" for i in range(40)]
    tokenizer = tiny_encoder_tokenizer(words)
    texts = [" ".join(words[: 1 + (i * 7) % 23]) for i in range(60)]
    records = [{"text": t, "label": i % 2} for i, t in enumerate(texts)]
    return tokenizer, SequenceClassification("text", "label", num_labels=2, max_length=32), \
        records


def test_the_train_pipeline_groups_by_length_and_resumes_exactly():
    tokenizer, task, records = _tokenizer_task()

    def make(group_by_length=3):
        return make_train_iterator(records, task, tokenizer, batch_size=4, seed=0,
                                   group_by_length=group_by_length)

    def spread(batches):  # the mean length range within a batch
        return np.mean([np.ptp(b["attention_mask"].sum(1)) for b in batches])

    it, plain = make(), make(0)
    batches = [next(it) for _ in range(40)]  # several epochs
    assert all(b["input_ids"].shape == (4, 32) for b in batches)
    assert spread(batches) < 0.5 * spread([next(plain) for _ in range(40)])
    it = make()
    for _ in range(17):
        next(it)
    resumed = make()
    resumed.set_state(it.get_state())
    for expected in batches[17:]:
        np.testing.assert_array_equal(next(resumed)["input_ids"], expected["input_ids"])


def test_grouped_eval_batches_hold_every_record_once_with_filler_rows():
    tokenizer, task, records = _tokenizer_task()
    batches = list(make_eval_batches(records, task, tokenizer, batch_size=8, group_by_length=2))
    ids = np.concatenate([b["example_id"] for b in batches])
    assert sorted(ids[ids >= 0].tolist()) == list(range(60))
    assert sum(b["example_mask"].sum() for b in batches) == 60


@pytest.fixture
def bucketed(tiny_config_file):
    return lambda *extra: load_config(tiny_config_file, ["data.buckets=(7, 10)", *extra])


def test_evaluation_with_buckets_and_grouping_equals_the_fixed_shape_one(tiny_config_file,
                                                                          bucketed):
    plain = build_experiment(load_config(tiny_config_file))
    cut = build_experiment(bucketed("data.group_by_length=2", "eval_batch_size=8"))
    assert cut.buckets == (7, 10, 16)
    shapes = {b["input_ids"].shape[1] for b in cut.placed_eval_batches("validation")}
    assert shapes <= {7, 10, 16} and len(shapes) > 1
    a = evaluate_splits(plain, plain.jit_eval_step(), plain.state, ["validation"])
    b = evaluate_splits(cut, cut.jit_eval_step(), cut.state, ["validation"])
    assert b["validation"]["examples"] == a["validation"]["examples"]
    for key in ("loss", "accuracy", "macro_f1"):
        assert b["validation"][key] == pytest.approx(a["validation"][key], abs=1e-5), key


def test_a_bucketed_run_compiles_its_train_step_once_per_bucket(bucketed, tmp_path):
    compiled: list[str] = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        result = train(bucketed("data.group_by_length=2", "steps=24"), tmp_path / "run",
                       quiet=True)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    steps = [name for name in compiled if name == "jit(split_step)"]
    assert 1 < len(steps) <= 3  # at most one program per bucket length (7, 10, 16)
    assert result.final_step == 24
