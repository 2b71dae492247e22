"""Extractive QA: SQuAD reading, windowing with stride, n-best decoding, official EM/F1."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax import assets
from ftjax.cli import main
from ftjax.data.config import SourceConfig, TaskConfig
from ftjax.data.errors import DataError
from ftjax.data.extractive_qa import (
    ExtractiveQA,
    best_answer,
    exact_match,
    f1_score,
    normalize_answer,
    read_squad,
    score,
)
from ftjax.data.features import IndexedRecord, source_shapes
from ftjax.data.loading import load_source
from ftjax.data.pipeline import make_eval_batches, make_train_iterator
from ftjax.data.run_data import make_task
from ftjax.io.tokenizer import load_tokenizer
from ftjax.objectives import loss_for_task

CONTEXT = ("The Eiffel Tower was built in 1889 by Gustave Eiffel's company. It stands in Paris, "
           "on the Champ de Mars. The tower is 330 metres tall and was the tallest structure in "
           "the world until 1930, when the Chrysler Building in New York surpassed it. Millions "
           "of tourists visit it every year, and its lights sparkle every hour after dark.")


def _record(qid, question, answer):
    start = CONTEXT.index(answer)
    return {"id": qid, "question": question, "context": CONTEXT,
            "answers": [{"text": answer, "answer_start": start}]}


HAND_MADE = [
    _record("q1", "When was the tower built?", "1889"),
    _record("q2", "Where does it stand?", "Paris"),
    _record("q3", "What surpassed it?", "the Chrysler Building"),
    _record("q4", "When do the lights sparkle?", "every hour after dark"),
    _record("q5", "How tall is it?", "330 metres"),
]


def _squad_doc(records):
    records = copy.deepcopy(records)
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                           "answers": r["answers"]}]} for r in records]}]}


@pytest.fixture(scope="module")
def tokenizer():
    try:
        path = assets.resolve("all-minilm-l6-v2")
    except Exception as e:  # not cached and no network
        pytest.skip(f"all-minilm-l6-v2 unavailable: {e}")
    return load_tokenizer(path)


def _one_hot_decode(task, tokenizer, records):
    """Featurize each record into windows, give each window one-hot logits at its gold
    start/end, decode over all windows: the answer text per question."""
    feat = task.featurizer(tokenizer)
    out, n_windows = {}, 0
    for i, record in enumerate(records):
        rows = feat(IndexedRecord(i, i, record))
        n_windows += len(rows)
        windows = []
        for row in rows:
            start, end = np.full(task.max_length, -10.0), np.full(task.max_length, -10.0)
            start[row["start_positions"]] += 20.0
            end[row["end_positions"]] += 20.0
            windows.append((start, end, row["offsets"]))
        out[record["id"]] = best_answer(windows, record["context"],
                                        max_answer_length=task.max_answer_length)
    return out, n_windows


def test_windows_with_stride_recover_every_gold_span(tokenizer):
    task = ExtractiveQA(max_length=48, doc_stride=12, max_query_length=16)
    feat = task.featurizer(tokenizer)
    rows = feat(IndexedRecord(0, 0, HAND_MADE[0]))
    assert len(rows) > 2  # the context is split
    for row in rows:
        for name, (shape, dtype) in task.row_shapes().items():
            assert row[name].shape == shape and row[name].dtype == dtype, name
        ctx = row["offsets"][:, 0] >= 0
        assert not ctx[0] and ctx.any()
        # offsets only on context tokens (token type 1, not the final [SEP])
        assert (row["token_type_ids"][ctx] == 1).all()
    answered = [r for r in rows if r["start_positions"] > 0]
    assert answered  # the answer lies inside at least one window
    predictions, _ = _one_hot_decode(task, tokenizer, HAND_MADE)
    assert predictions == {r["id"]: r["answers"][0]["text"] for r in HAND_MADE}
    assert score(predictions, HAND_MADE) == {"exact_match": 100.0, "f1": 100.0}


def test_consecutive_windows_overlap_by_doc_stride(tokenizer):
    task = ExtractiveQA(max_length=40, doc_stride=10, max_query_length=16)
    rows = task.featurizer(tokenizer)(IndexedRecord(0, 0, HAND_MADE[1]))
    spans = [tuple(map(tuple, r["offsets"][r["offsets"][:, 0] >= 0])) for r in rows]
    for a, b in zip(spans, spans[1:]):
        assert a[-10:] == b[:10]
    assert spans[-1][-1][1] == len(CONTEXT.rstrip("."))+1 or spans[-1][-1][1] == len(CONTEXT)


def test_answer_outside_window_points_at_first_token(tokenizer):
    task = ExtractiveQA(max_length=40, doc_stride=10, max_query_length=16)
    rows = task.featurizer(tokenizer)(IndexedRecord(0, 0, HAND_MADE[3]))
    assert rows[0]["start_positions"] == 0 and rows[0]["end_positions"] == 0
    assert rows[-1]["start_positions"] > 0


def test_real_squad_questions_round_trip_through_windows(tokenizer):
    # `make test` fetches the asset; a missing one fails here rather than skipping silently.
    records = read_squad(assets.resolve("squad-v1.1") / "dev-v1.1.json")
    assert len(records) == 10570
    sample = records[:200]
    task = ExtractiveQA(max_length=128, doc_stride=32, max_query_length=32)
    predictions, n_windows = _one_hot_decode(task, tokenizer, sample)
    assert n_windows > len(sample)  # contexts are split
    # the first gold answer decodes back to the text of the tokens covering it: exactly the
    # answer unless it ends inside a word piece ("gold" in "golden")
    exact = 0
    for r in sample:
        gold = r["answers"][0]
        predicted = predictions[r["id"]]
        start = r["context"].index(predicted, max(gold["answer_start"] - len(predicted), 0))
        assert start <= gold["answer_start"]
        assert start + len(predicted) >= gold["answer_start"] + len(gold["text"])
        if predicted != gold["text"]:  # e.g. '8' of '18', 'gold' of 'golden': one word
            assert len(predicted.split()) == 1, (predicted, gold["text"])
        exact += predicted == gold["text"]
    assert exact >= 0.95 * len(sample)  # all-minilm-l6-v2: 192 of the first 200 dev questions


def test_normalization_and_scores_match_the_official_rules():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    # pred tokens [eiffel, tower, paris], gold [eiffel, tower]: P=2/3, R=1, F1=0.8
    assert f1_score("The Eiffel Tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert f1_score("Paris", "Eiffel Tower") == 0.0
    records = [
        {"id": "a", "answers": [{"text": "Eiffel Tower", "answer_start": 0},
                                {"text": "the tower in Paris", "answer_start": 0}]},
        {"id": "b", "answers": [{"text": "1889", "answer_start": 0}]},
        {"id": "c", "answers": [{"text": "New York City", "answer_start": 0}]},
    ]
    predictions = {"a": "tower in Paris!", "b": "in 1889", "c": "Boston"}
    # a: EM 1 (second gold normalizes to "tower in paris"); b: EM 0, F1 2*(1/2*1)/(1.5)=2/3;
    # c: 0
    result = score(predictions, records)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_v2_null_answers_with_threshold():
    offsets = np.full((6, 2), -1, np.int32)
    offsets[3:5] = [[0, 5], [6, 11]]
    context = "hello world"
    start = np.array([2.0, 0, 0, 1.0, 0, 0])
    end = np.array([2.0, 0, 0, 0, 1.5, 0])
    windows = [(start, end, offsets)]
    # null 4.0 vs span "hello world" 2.5
    assert best_answer(windows, context) == "hello world"  # v1: always answer
    assert best_answer(windows, context, null_threshold=0.0) == ""
    assert best_answer(windows, context, null_threshold=2.0) == "hello world"
    assert best_answer(windows, context, max_answer_length=1) == "world"  # 0 + 1.5 > 1 + 0
    # an unanswerable question: the empty prediction matches its empty gold list
    records = [{"id": "x", "answers": []}, {"id": "y", "answers": []}]
    assert score({"x": "", "y": "hello"}, records) == {"exact_match": 50.0, "f1": 50.0}


def test_read_squad_v1_and_v2(tmp_path):
    doc = _squad_doc(HAND_MADE[:2])
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {"id": "imp", "question": "Who?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Paris", "answer_start": 3}]})
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(doc))
    records = read_squad(path)
    assert [r["id"] for r in records] == ["q1", "imp", "q2"]
    assert records[0] == HAND_MADE[0]
    assert records[1]["answers"] == []


def test_malformed_squad_names_file_and_position(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n{"paragraphs": [}]}')
    with pytest.raises(DataError, match=r"bad.json: invalid JSON at line 2"):
        read_squad(bad)
    doc = _squad_doc(HAND_MADE[:2])
    del doc["data"][0]["paragraphs"][1]["qas"][0]["question"]
    bad.write_text(json.dumps(doc))
    where = r"bad.json: data\[0\]\.paragraphs\[1\]\.qas\[0\]: missing 'question'"
    with pytest.raises(DataError, match=where):
        read_squad(bad)
    doc = _squad_doc(HAND_MADE[:1])
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 10_000
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"answers\[0\]: answer_start=10000"):
        read_squad(bad)


# --------------------------------------------------------------------------------------------
# Wiring: the pipeline flattens a record's windows; the span loss


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_iterator_flattens_windows_and_resumes_exactly(tokenizer):
    task = ExtractiveQA(max_length=40, doc_stride=10, max_query_length=16)
    records = HAND_MADE * 3
    iterator = make_train_iterator(records, task, tokenizer, batch_size=4, seed=3)
    first = _take(iterator, 3)
    for batch in first:
        for name, (shape, dtype) in {**task.row_shapes(), **source_shapes()}.items():
            assert batch[name].shape == (4, *shape) and batch[name].dtype == dtype, name
    # windows of one record are consecutive rows with that record's example_id
    ids = np.concatenate([b["example_id"] for b in first])
    assert len(set(ids.tolist())) < len(ids)
    state = iterator.get_state()  # mid-record: inside one record's windows
    expected = _take(iterator, 6)
    restored = make_train_iterator(records, task, tokenizer, batch_size=4, seed=3)
    restored.set_state(json.loads(json.dumps(state)))
    for a, b in zip(_take(restored, 6), expected):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_eval_batches_and_metric_score_every_question(tokenizer):
    task = ExtractiveQA(max_length=40, doc_stride=10, max_query_length=16)
    batches = list(make_eval_batches(HAND_MADE, task, tokenizer, batch_size=8))
    n_windows = sum(len(task.featurizer(tokenizer)(IndexedRecord(i, i, r)))
                    for i, r in enumerate(HAND_MADE))
    assert sum(int((b["example_id"] >= 0).sum()) for b in batches) == n_windows
    metric = task.metric(HAND_MADE)
    for batch in batches:  # one-hot logits at the gold positions, via predict()
        logits = np.full((*batch["input_ids"].shape, 2), -10.0, np.float32)
        rows = np.arange(len(logits))
        logits[rows, batch["start_positions"], 0] = 10.0
        logits[rows, batch["end_positions"], 1] = 10.0
        predictions = {k: np.asarray(v) for k, v in task.predict(jnp.asarray(logits)).items()}
        metric.update(batch, predictions)
    assert metric.result() == {"exact_match": 100.0, "f1": 100.0}
    assert set(metric.names) == {"exact_match", "f1"}


def test_span_loss_is_the_mean_of_start_and_end_cross_entropy():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7, 2)), jnp.float32)
    batch = {"start_positions": jnp.asarray([1, 0, 4]), "end_positions": jnp.asarray([2, 0, 6]),
             "example_mask": jnp.asarray([1.0, 1.0, 0.0])}
    term = loss_for_task("extractive_qa")
    assert term.name == "span"
    ctx = SimpleNamespace(batch=batch, output=SimpleNamespace(logits=logits))
    value = term(ctx)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=1))
    expected = sum(-0.5 * (logp[i, batch["start_positions"][i], 0]
                           + logp[i, batch["end_positions"][i], 1]) for i in range(2))
    assert float(value.total) == pytest.approx(expected, rel=1e-5)
    assert float(value.per_row[2]) == 0.0


def test_squad_source_format_loads_records(tmp_path):
    for split, records in (("train", HAND_MADE[:3]), ("dev", HAND_MADE[3:])):
        (tmp_path / f"{split}.json").write_text(json.dumps(_squad_doc(records)))
    config = SourceConfig(kind="local", format="squad", path=str(tmp_path / "{split}.json"),
                          validation_split="dev", test_split=None, label_column=None)
    loaded = load_source("squad", config, roles=("train", "validation"), needs_labels=False)
    assert loaded.splits["train"] == HAND_MADE[:3]
    assert loaded.splits["validation"] == HAND_MADE[3:]
    task = make_task(TaskConfig(kind="extractive_qa", max_length=128, doc_stride=32), config,
                     num_labels=None)
    assert isinstance(task, ExtractiveQA) and task.doc_stride == 32


def test_decoding_limits_are_config_keys():
    task = make_task(TaskConfig(kind="extractive_qa", max_length=128, doc_stride=32,
                                max_query_length=20, max_answer_length=8, n_best=5),
                     SourceConfig(kind="local", path="{split}.json", format="squad",
                                  label_column=None), num_labels=None)
    assert (task.max_query_length, task.max_answer_length, task.n_best) == (20, 8, 5)
    with pytest.raises(ValueError, match="n_best"):
        TaskConfig(kind="extractive_qa", n_best=0)


def test_a_short_real_run_of_the_experiment_writes_f1(tmp_path):
    """experiments/qa_squad_minilm.py for two steps on real SQuAD windows, grouped by length and
    cut to its buckets: exact_match and f1 reach metrics.jsonl."""
    experiment = Path(__file__).resolve().parents[1] / "experiments" / "qa_squad_minilm.py"
    workdir = tmp_path / "run"
    code = main(["train", str(experiment), "--workdir", str(workdir), "--quiet",
                 "--set", "steps=2", "--set", "eval_every=2", "--set", "log_every=1",
                 "--set", "checkpoint_every=2", "--set", "batch_size=4",
                 "--set", "data.group_by_length=2", "--set", "optimizer.warmup_steps=1",
                 "--set", "sources.squad.max_train_examples=16",
                 "--set", "sources.squad.max_eval_examples=12"])
    assert code in (0, None)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "split" not in r]
    assert all(r["real_token_share"] > 0.5 for r in train_rows)
    evals = [r for r in rows if r.get("split") == "validation"]
    assert evals and 0.0 <= evals[-1]["f1"] <= 100.0 and "exact_match" in evals[-1]
