"""Several sources in one train stream (ftjax.data.mixing, ftjax.data.schedule,
pipeline.make_mixed_train_iterator)."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import grain
import numpy as np
import pytest

from ftjax.data import (
    CausalLM,
    DataError,
    MaskedLM,
    SequenceClassification,
    TrainSource,
    batch_shapes,
    make_eval_batches,
    make_mixed_train_iterator,
    make_train_iterator,
    mixture_weights,
)
from ftjax.data.config import DataConfig
from ftjax.data.extractive_qa import ExtractiveQA
from ftjax.data.features import IndexedRecord
from ftjax.data.mixing import anneal_alpha, annealed_weights
from ftjax.data.packing import PiecesWithRecord, pack_documents
from ftjax.data.pipeline import default_read_options
from ftjax.data.schedule import BLOCK, source_schedule
from ftjax.data.testing import tiny_decoder_tokenizer, tiny_encoder_tokenizer
from ftjax.train.config import base_config
from ftjax.train.experiment import Experiment

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def encoder_tok():
    return tiny_encoder_tokenizer(WORDS)


@pytest.fixture(scope="module")
def decoder_tok():
    return tiny_decoder_tokenizer(WORDS)


def records_from(words: list[str], n: int, *, label: int, seed: int,
                 max_words: int = 10) -> list[dict]:
    """n texts of 1..max_words words drawn from ``words``; every record has ``label``."""
    rng = np.random.default_rng(seed)
    return [{"text": " ".join(rng.choice(words, rng.integers(1, max_words + 1))),
             "label": label, "id": i} for i in range(n)]


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
            assert x[key].dtype == y[key].dtype


CLASSIFY = SequenceClassification("text", "label", num_labels=2, max_length=12)


def two_sources(task=CLASSIFY, weights=(0.8, 0.2)) -> list[TrainSource]:
    """Source 0 writes words w0..w29 and labels 0; source 1 words w30..w59 and labels 1."""
    return [TrainSource("a", records_from(WORDS[:30], 37, label=0, seed=1), task, weights[0]),
            TrainSource("b", records_from(WORDS[30:], 11, label=1, seed=2), task, weights[1])]


# --------------------------------------------------------------------------------------------
# Weights


def test_mixture_weights_fixed_proportional_temperature():
    task = CLASSIFY
    sources = [TrainSource("big", [{}] * 100, task, 4.0), TrainSource("small", [{}] * 25, task)]
    assert mixture_weights(sources, "fixed") == pytest.approx((0.8, 0.2))
    assert mixture_weights(sources, "proportional") == pytest.approx((0.8, 0.2))
    assert mixture_weights(sources, "temperature", 2.0) == pytest.approx((10 / 15, 5 / 15))
    assert mixture_weights(sources, "temperature", 1.0) == pytest.approx(
        mixture_weights(sources, "proportional"))
    assert mixture_weights(sources, "temperature", 1e6) == pytest.approx((0.5, 0.5), abs=1e-5)
    with pytest.raises(DataError, match="mixing must be one of"):
        mixture_weights(sources, "uniformly")
    with pytest.raises(DataError, match="temperature must be > 0"):
        mixture_weights(sources, "temperature", 0.0)
    with pytest.raises(DataError, match="'small': weight must be > 0"):
        mixture_weights([sources[0], sources[1]._replace(weight=-1.0)])
    with pytest.raises(DataError, match="train records are empty.*'small'"):
        mixture_weights([sources[0], sources[1]._replace(records=[])], "proportional")


# --------------------------------------------------------------------------------------------
# The mixed stream


def test_two_sources_mixed_in_proportion(encoder_tok):
    iterator = make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=20, seed=0)
    batches = take(iterator, 100)  # 2,000 examples
    source = np.concatenate([b["source"] for b in batches])
    assert source.dtype == np.int32 and set(source.tolist()) == {0, 1}
    assert abs(np.mean(source == 0) - 0.8) < 0.03
    # Each row really comes from the source it names: source b writes labels 1, words w30+.
    labels = np.concatenate([b["labels"] for b in batches])
    np.testing.assert_array_equal(labels, source)
    for batch in batches[:10]:
        for ids, src in zip(batch["input_ids"], batch["source"]):
            words = encoder_tok.decode([i for i in ids if i not in encoder_tok.special_ids])
            assert all((int(w[1:]) >= 30) == bool(src) for w in words.split())
    assert {k: (v.shape, v.dtype) for k, v in batches[0].items()} == batch_shapes(CLASSIFY, 20)


def test_proportional_mixing_follows_sizes(encoder_tok):
    # The sources' own weights (0.2 / 0.8) play no part.
    iterator = make_mixed_train_iterator(two_sources(weights=(0.2, 0.8)), encoder_tok,
                                         batch_size=24, seed=3, mixing="proportional")
    source = np.concatenate([b["source"] for b in take(iterator, 40)])
    assert abs(np.mean(source == 0) - 37 / 48) < 0.03


@pytest.mark.parametrize("kind", ["classification", "mlm", "causal_packed"])
def test_mixed_iterator_resumes_mid_epoch(encoder_tok, decoder_tok, kind):
    task, tok = {
        "classification": (CLASSIFY, encoder_tok),
        "mlm": (MaskedLM("text", max_length=12), encoder_tok),
        "causal_packed": (CausalLM("text", max_length=20), decoder_tok),
    }[kind]

    def fresh():
        return make_mixed_train_iterator(two_sources(task, (0.6, 0.4)), tok, batch_size=4,
                                         seed=5, packing_bins=6)

    iterator = fresh()
    take(iterator, 5)  # mid-epoch for both sources
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 20)  # crosses source b's epoch end
    restored = fresh()
    restored.set_state(state)
    assert_batches_equal(take(restored, 20), expected)
    if kind == "causal_packed":  # each packed row holds documents of one source only
        for batch in expected:
            for ids, mask, src in zip(batch["input_ids"], batch["attention_mask"],
                                      batch["source"]):
                words = tok.decode([i for i, m in zip(ids, mask)
                                    if m and i not in tok.special_ids]).split()
                assert words and all((int(w[1:]) >= 30) == bool(src) for w in words)


def test_mixed_shards_are_disjoint_slices_of_one_stream(encoder_tok):
    whole = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=4, seed=7), 9)
    rows = [(r.tolist(), s) for b in whole for r, s in zip(b["input_ids"], b["source"])]
    for i in range(2):
        shard = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=2, seed=7,
                                               shard_index=i, shard_count=2), 9)
        assert [(r.tolist(), s) for b in shard
                for r, s in zip(b["input_ids"], b["source"])] == rows[i::2]


# --------------------------------------------------------------------------------------------
# One source is today's stream


def reference_train_batches(records, task, tok, *, batch_size, seed, n, shard_index=0,
                            shard_count=1):
    """The single-source train pipeline written out from grain's primitives."""
    seed_state = int(np.random.SeedSequence([seed, 0x5EED]).generate_state(1)[0])
    stream = (grain.MapDataset.source(records)
              .map_with_index(lambda i, r: (i % len(records), r))
              .shuffle(seed=seed_state)
              .repeat()
              .map_with_index(lambda i, x: IndexedRecord(x[0], i, x[1])))
    stream = stream[shard_index::shard_count]
    featurize = task.featurizer(tok, seed=seed)
    if task.packed:
        documents = stream.map(PiecesWithRecord(featurize)).to_iter_dataset(
            default_read_options())
        rows = pack_documents(documents, length=task.max_length, num_bins=batch_size,
                              pad_id=tok.pad_id)
        batches = rows.batch(batch_size, drop_remainder=True)
    else:
        batches = stream.map(featurize).batch(batch_size, drop_remainder=True)
    return take(iter(batches), n)


@pytest.mark.parametrize("kind", ["classification", "mlm", "causal_packed"])
def test_one_source_through_the_mixed_path_is_todays_stream(encoder_tok, decoder_tok, kind):
    task, tok = {
        "classification": (CLASSIFY, encoder_tok),
        "mlm": (MaskedLM("text", max_length=12), encoder_tok),
        "causal_packed": (CausalLM("text", max_length=20), decoder_tok),
    }[kind]
    records = records_from(WORDS, 23, label=1, seed=4)
    for shard_index, shard_count in [(0, 1), (1, 2)]:
        expected = reference_train_batches(records, task, tok, batch_size=4, seed=9, n=12,
                                           shard_index=shard_index, shard_count=shard_count)
        mixed = take(make_mixed_train_iterator(
            [TrainSource("only", records, task, 3.0)], tok, batch_size=4, seed=9,
            shard_index=shard_index, shard_count=shard_count), 12)
        plain = take(make_train_iterator(records, task, tok, batch_size=4, seed=9,
                                         shard_index=shard_index, shard_count=shard_count), 12)
        for batch in mixed:
            assert batch.pop("source").tolist() == [0] * 4
            ids = batch.pop("example_id")  # the record of each row; packed rows hold several
            assert (ids == -1).all() if task.packed else ((0 <= ids) & (ids < 23)).all()
        assert_batches_equal(mixed, expected)
        extras = ("source", "example_id")
        assert_batches_equal([{k: v for k, v in b.items() if k not in extras} for b in plain],
                             expected)


# --------------------------------------------------------------------------------------------
# Eval batches and bad mixtures


def test_eval_batches_carry_their_source_index(encoder_tok):
    records = records_from(WORDS, 7, label=0, seed=0)
    batches = list(make_eval_batches(records, CLASSIFY, encoder_tok, batch_size=4,
                                     source_index=2))
    assert [b["source"].tolist() for b in batches] == [[2] * 4, [2] * 4]  # filler rows too
    assert batches[1]["example_mask"].tolist() == [1, 1, 1, 0]
    for batch in batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == batch_shapes(CLASSIFY, 4)


def test_sources_must_give_rows_of_one_layout(encoder_tok, decoder_tok):
    a, b = two_sources()
    longer = b._replace(task=SequenceClassification("text", "label", 2, max_length=16))
    with pytest.raises(DataError, match=r"'a' and 'b' .*feature 'attention_mask' is \(12,\) "
                                        r"int32 vs \(16,\) int32"):
        make_mixed_train_iterator([a, longer], encoder_tok, batch_size=2, seed=0)
    lm = b._replace(task=MaskedLM("text", max_length=12))
    with pytest.raises(DataError, match="'a' and 'b' give rows of different features: only 'a' "
                                        "has 'example_mask'"):
        make_mixed_train_iterator([a, lm], encoder_tok, batch_size=2, seed=0)
    packed = a._replace(task=CausalLM("text", max_length=12))
    unpacked = b._replace(task=CausalLM("text", max_length=12, packing=False))
    with pytest.raises(DataError, match="only 'a' packs"):
        make_mixed_train_iterator([packed, unpacked], decoder_tok, batch_size=2, seed=0)
    with pytest.raises(DataError, match="distinct"):
        make_mixed_train_iterator([a, a], encoder_tok, batch_size=2, seed=0)


# --------------------------------------------------------------------------------------------
# More strategies: uniform, annealed, round_robin


def sized_sources(*sizes: int, weights=None) -> list[TrainSource]:
    weights = weights or (1.0,) * len(sizes)
    return [TrainSource(f"s{i}", [{}] * n, CLASSIFY, w)
            for i, (n, w) in enumerate(zip(sizes, weights))]


def test_mixture_weights_uniform_annealed_round_robin():
    sources = sized_sources(400, 100, 25)
    assert mixture_weights(sources, "uniform") == pytest.approx((1 / 3,) * 3)
    assert mixture_weights(sources, "round_robin") == pytest.approx((1 / 3,) * 3)
    # Annealed: proportional at the first example, temperature 2 halfway, uniform from the end.
    annealed = {t: mixture_weights(sources, "annealed", example=t, anneal_examples=1000)
                for t in (0, 500, 1000, 10**9)}
    assert annealed[0] == pytest.approx(mixture_weights(sources, "proportional"))
    assert annealed[500] == pytest.approx(mixture_weights(sources, "temperature", 2.0))
    assert annealed[1000] == pytest.approx((1 / 3,) * 3)
    assert annealed[10**9] == pytest.approx((1 / 3,) * 3)
    assert anneal_alpha([0, 250, 999, 1000, 5000], 1000) == pytest.approx(
        [1.0, 0.75, 0.001, 0.0, 0.0])
    with pytest.raises(DataError, match="anneal_examples must be >= 1, got 0"):
        mixture_weights(sources, "annealed", anneal_examples=0)


def assert_counts_match(drawn: np.ndarray, probabilities: np.ndarray) -> None:
    """Independent draws with probabilities[t] (one row per draw): each source's count lies
    within 5 standard deviations of its expectation (sum p_t, variance sum p_t (1 - p_t)); a
    correct draw fails this about once in 1.7 million times per source, and the seeds are
    fixed."""
    counts = np.bincount(drawn, minlength=probabilities.shape[1])
    expected = probabilities.sum(axis=0)
    sd = np.sqrt((probabilities * (1 - probabilities)).sum(axis=0))
    assert np.all(np.abs(counts - expected) <= 5 * sd), (counts, expected, sd)


N_DRAWS = 3 * BLOCK + 1000  # crosses draw blocks


@pytest.mark.parametrize("mixing", ["fixed", "proportional", "temperature", "uniform"])
def test_scheduled_draws_follow_each_strategys_weights(mixing):
    sources = sized_sources(400, 100, 25, weights=(0.6, 0.3, 0.1))
    drawn = source_schedule(sources, mixing, seed=3).sources(0, N_DRAWS)
    weights = np.asarray(mixture_weights(sources, mixing))
    assert_counts_match(drawn, np.tile(weights, (N_DRAWS, 1)))
    # Another seed, other draws.
    assert not np.array_equal(drawn, source_schedule(sources, mixing, seed=4).sources(0, N_DRAWS))


@pytest.mark.parametrize("unit_examples", [1, 8])
def test_annealed_draws_move_from_proportional_to_uniform(unit_examples):
    sizes = (400, 100, 25)
    anneal = N_DRAWS * unit_examples // 2  # the second half of the draws is uniform
    schedule = source_schedule(sized_sources(*sizes), "annealed", seed=5, anneal_examples=anneal,
                               unit_examples=unit_examples)
    drawn = schedule.sources(0, N_DRAWS)
    windows = {"early": (0, 2000), "middle": (N_DRAWS // 4, N_DRAWS // 4 + 2000),
               "late": (N_DRAWS // 2, N_DRAWS)}
    for start, stop in windows.values():
        # A unit's clock is its first example: unit u is example u * unit_examples.
        examples = np.arange(start, stop) * unit_examples
        assert_counts_match(drawn[start:stop], annealed_weights(sizes, examples, anneal))
    early = np.bincount(drawn[:2000], minlength=3) / 2000
    late = np.bincount(drawn[N_DRAWS // 2:], minlength=3) / (N_DRAWS - N_DRAWS // 2)
    assert early[0] > 0.7 and early[2] < 0.07  # near proportional (0.76, 0.19, 0.05)
    assert late == pytest.approx([1 / 3] * 3, abs=0.03)


def test_round_robin_takes_the_sources_in_turn():
    schedule = source_schedule(sized_sources(5, 500, 50), "round_robin", seed=0)
    assert schedule.sources(0, 9).tolist() == [0, 1, 2] * 3
    assert [schedule[u] for u in (0, 1, 2, 3, 3 * BLOCK + 4)] == [
        (0, 0), (1, 0), (2, 0), (0, 1), (1, BLOCK + 1)]


def test_schedule_ranks_count_earlier_draws_whatever_the_access_order():
    sources = sized_sources(400, 100, 25)
    drawn = source_schedule(sources, "annealed", seed=1, anneal_examples=N_DRAWS).sources(
        0, N_DRAWS)
    ranks = np.zeros(N_DRAWS, np.int64)
    for source in range(3):
        mine = drawn == source
        ranks[mine] = np.arange(mine.sum())
    # A fresh schedule first asked far ahead (a resumed run) must count the skipped blocks.
    fresh = source_schedule(sources, "annealed", seed=1, anneal_examples=N_DRAWS)
    units = [N_DRAWS - 1, 2 * BLOCK, 2 * BLOCK - 1, BLOCK, 0, 17, BLOCK + 5, 3 * BLOCK + 3]
    for unit in units:
        assert fresh[unit] == (drawn[unit], ranks[unit]), unit
    copy = pickle.loads(pickle.dumps(fresh))  # grain may pickle it into worker processes
    assert [copy[u] for u in reversed(units)] == [fresh[u] for u in reversed(units)]


# --------------------------------------------------------------------------------------------
# The new strategies in the mixed stream


EXPECTED_SHARE_A = {  # two_sources(): a has 37 records, weight 0.8; b has 11, weight 0.2
    "fixed": 0.8, "proportional": 37 / 48, "temperature": 37**0.5 / (37**0.5 + 11**0.5),
    "uniform": 0.5, "round_robin": 0.5}


@pytest.mark.parametrize("mixing", sorted(EXPECTED_SHARE_A))
def test_mixed_batches_follow_each_strategy(encoder_tok, mixing):
    batches = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=25, seed=1,
                                             mixing=mixing), 40)
    source = np.concatenate([b["source"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), source)
    # grain's mix interleaves deterministically: the share is exact up to rounding.
    assert abs(np.mean(source == 0) - EXPECTED_SHARE_A[mixing]) < 0.01
    if mixing in ("uniform", "round_robin"):  # the sources in turn
        np.testing.assert_array_equal(source, np.arange(len(source)) % 2)


def test_annealed_mixed_stream_draws_each_example(encoder_tok):
    anneal, n = 400, 800
    batches = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=20, seed=2,
                                             mixing="annealed", anneal_examples=anneal), n // 20)
    source = np.concatenate([b["source"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), source)
    # The example stream's sources are the schedule's draws, one per example ...
    schedule = source_schedule(two_sources(), "annealed", seed=2, anneal_examples=anneal)
    np.testing.assert_array_equal(source, schedule.sources(0, n))
    # ... near proportional early (37 / 48 = 0.77), uniform after anneal_examples.
    sizes = (37, 11)
    for start, stop in [(0, 200), (anneal, n)]:
        assert_counts_match(source[start:stop],
                            annealed_weights(sizes, np.arange(start, stop), anneal))
    # Two hosts read every other example of that one stream.
    rows = [(r.tolist(), s) for b in batches[:6] for r, s in zip(b["input_ids"], b["source"])]
    for i in range(2):
        shard = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=10,
                                               seed=2, mixing="annealed", anneal_examples=anneal,
                                               shard_index=i, shard_count=2), 6)
        assert [(r.tolist(), s) for b in shard
                for r, s in zip(b["input_ids"], b["source"])] == rows[i::2]


# --------------------------------------------------------------------------------------------
# Per-source batches


@pytest.mark.parametrize("mixing", ["fixed", "uniform", "annealed", "round_robin"])
def test_per_source_batches_hold_the_source_drawn_for_each_batch(encoder_tok, mixing):
    n, batch_size = 60, 4
    batches = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=batch_size,
                                             seed=2, mixing=mixing, batching="per_source",
                                             anneal_examples=120), n)
    drawn = source_schedule(two_sources(), mixing, seed=2, anneal_examples=120,
                            unit_examples=batch_size).sources(0, n)
    for batch, source in zip(batches, drawn):
        assert batch["source"].tolist() == [source] * batch_size
        assert batch["labels"].tolist() == [source] * batch_size  # rows really from it
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == batch_shapes(CLASSIFY,
                                                                                batch_size)
    if mixing == "round_robin":
        assert drawn.tolist() == [0, 1] * (n // 2)
    # Source a's batches, joined, are a's own stream: no example skipped or repeated.
    a = [b for b, source in zip(batches, drawn) if source == 0]
    alone = take(make_train_iterator(two_sources()[0].records, CLASSIFY, encoder_tok,
                                     batch_size=batch_size, seed=2), len(a))
    assert_batches_equal([{k: v for k, v in b.items() if k != "source"} for b in a],
                         [{k: v for k, v in b.items() if k != "source"} for b in alone])


def test_per_source_batch_draws_follow_the_weights(encoder_tok):
    batches = take(make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=1, seed=6,
                                             batching="per_source"), 500)
    source = np.array([b["source"][0] for b in batches])
    assert_counts_match(source, np.tile([0.8, 0.2], (500, 1)))


def records_qa(n: int, seed: int, words: list[str]) -> list[dict]:
    """SQuAD-like records whose contexts of 5..40 words take 1..several windows."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        context_words = list(rng.choice(words, rng.integers(5, 41)))
        context = " ".join(context_words)
        k = int(rng.integers(len(context_words)))
        start = len(" ".join(context_words[:k])) + (1 if k else 0)
        out.append({"id": f"q{i}", "question": " ".join(rng.choice(words, 2)),
                    "context": context,
                    "answers": [{"text": context_words[k], "answer_start": start}]})
    return out


@pytest.fixture(scope="module")
def offsets_tok():
    """The tiny encoder tokenizer with the character offsets extractive QA needs."""
    tok = tiny_encoder_tokenizer(WORDS)

    def encode_with_offsets(text):
        encoding = tok._tokenizer.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]

    tok.encode_with_offsets = encode_with_offsets
    return tok


QA = ExtractiveQA(max_length=24, doc_stride=4, max_query_length=4)


def stream_sources(kind):
    """Two sources of a task kind, whose rows tell their source apart (see is_from)."""
    if kind == "qa":
        return [TrainSource("a", records_qa(13, 1, WORDS[:30]), QA, 0.6),
                TrainSource("b", records_qa(7, 2, WORDS[30:]), QA, 0.4)]
    task = {"classification": CLASSIFY, "grouped": CLASSIFY,
            "causal_packed": CausalLM("text", max_length=20)}[kind]
    return two_sources(task, (0.6, 0.4))


def tokenizer_for(kind, encoder_tok, decoder_tok, offsets_tok):
    return {"qa": offsets_tok, "causal_packed": decoder_tok}.get(kind, encoder_tok)


def assert_rows_from(batch, tok, source: int) -> None:
    """Every real token of the batch is a word of ``source`` (a: w0..w29, b: w30..w59)."""
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        words = tok.decode([i for i, m in zip(ids, mask)
                            if m and i not in tok.special_ids]).split()
        assert words and all((int(w[1:]) >= 30) == bool(source) for w in words)


@pytest.mark.parametrize("kind", ["classification", "causal_packed", "qa", "grouped"])
def test_per_source_shards_share_the_source_of_each_global_batch(encoder_tok, decoder_tok,
                                                                 offsets_tok, kind):
    tok = tokenizer_for(kind, encoder_tok, decoder_tok, offsets_tok)

    def batches(shard_index, shard_count, batch_size):
        return take(make_mixed_train_iterator(
            stream_sources(kind), tok, batch_size=batch_size, seed=4, mixing="annealed",
            anneal_examples=48, batching="per_source", shard_index=shard_index,
            shard_count=shard_count, group_by_length=2 if kind == "grouped" else 0), 16)

    whole = batches(0, 1, 4)
    shards = [batches(0, 2, 2), batches(1, 2, 2)]
    drawn = source_schedule(stream_sources(kind), "annealed", seed=4, anneal_examples=48,
                            unit_examples=4).sources(0, 16)
    assert len(set(drawn.tolist())) == 2
    for g, (one, first, second) in enumerate(zip(whole, *shards)):
        for batch in (one, first, second):
            assert batch["source"].tolist() == [drawn[g]] * len(batch["source"])
            assert_rows_from(batch, tok, drawn[g])
        if kind == "classification":  # host h holds rows h, h + 2, ... of the global batch
            for key in one:
                np.testing.assert_array_equal(one[key][0::2], first[key])
                np.testing.assert_array_equal(one[key][1::2], second[key])


RESUME_CASES = [  # (mixing, batching, kind)
    ("annealed", "mixed", "classification"),
    ("annealed", "mixed", "causal_packed"),
    ("annealed", "mixed", "qa"),
    ("uniform", "mixed", "classification"),
    ("uniform", "per_source", "classification"),
    ("annealed", "per_source", "classification"),
    ("fixed", "per_source", "causal_packed"),
    ("round_robin", "per_source", "qa"),
    ("annealed", "per_source", "grouped"),
]


@pytest.mark.parametrize("shard_index,shard_count", [(0, 1), (1, 2)])
@pytest.mark.parametrize("mixing,batching,kind", RESUME_CASES)
def test_new_streams_resume_exactly(encoder_tok, decoder_tok, offsets_tok, mixing, batching,
                                    kind, shard_index, shard_count):
    tok = tokenizer_for(kind, encoder_tok, decoder_tok, offsets_tok)

    def fresh():
        # Annealing ends at example 60: the resumed batches cross it.
        return make_mixed_train_iterator(
            stream_sources(kind), tok, batch_size=4, seed=5, mixing=mixing, batching=batching,
            anneal_examples=60, shard_index=shard_index, shard_count=shard_count,
            packing_bins=6, group_by_length=2 if kind == "grouped" else 0)

    iterator = fresh()
    take(iterator, 5)  # mid-epoch for both sources
    state = json.loads(json.dumps(iterator.get_state()))
    expected = take(iterator, 16)
    restored = fresh()
    restored.set_state(state)
    assert_batches_equal(take(restored, 16), expected)
    if batching == "per_source":
        for batch in expected:
            assert len(set(batch["source"].tolist())) == 1
            assert_rows_from(batch, tok, batch["source"][0])


def test_one_source_ignores_mixing_and_batching(encoder_tok):
    records = records_from(WORDS, 23, label=1, seed=4)
    only = [TrainSource("only", records, CLASSIFY, 3.0)]
    base = take(make_mixed_train_iterator(only, encoder_tok, batch_size=4, seed=9), 8)
    for mixing, batching in [("annealed", "per_source"), ("round_robin", "mixed"),
                             ("uniform", "per_source")]:
        assert_batches_equal(take(make_mixed_train_iterator(
            only, encoder_tok, batch_size=4, seed=9, mixing=mixing, batching=batching,
            anneal_examples=10), 8), base)


def test_bad_batching_and_anneal_examples_are_refused(encoder_tok):
    with pytest.raises(DataError, match=r"batching must be one of \('mixed', 'per_source'\), "
                                        r"got 'per_task'"):
        make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=2, seed=0,
                                  batching="per_task")
    with pytest.raises(DataError, match="mixing='annealed' needs anneal_examples >= 1 .*got 0"):
        make_mixed_train_iterator(two_sources(), encoder_tok, batch_size=2, seed=0,
                                  mixing="annealed")


# --------------------------------------------------------------------------------------------
# Config and the experiment's stream


def test_data_config_mixing_batching_and_anneal_examples():
    config = DataConfig(mixing="annealed", anneal_examples=100, batching="per_source")
    assert (config.mixing, config.anneal_examples, config.batching) == (
        "annealed", 100, "per_source")
    assert {"mixing", "temperature", "anneal_examples", "batching"} <= set(
        DataConfig.STREAM_KEYS)
    for kwargs, message in [
        ({"mixing": "annealing"}, r"mixing must be one of \(.*'round_robin'\), got 'annealing'"),
        ({"batching": "per_task"}, r"batching must be one of .*, got 'per_task'"),
        ({"anneal_examples": -1}, r"anneal_examples must be >= 0 .*got -1"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            DataConfig(**kwargs)
        assert "\n" not in str(error.value)


def test_experiment_stream_anneals_over_the_whole_run_by_default(encoder_tok):
    cfg = base_config()
    cfg.steps, cfg.batch_size, cfg.seed = 30, 4, 3
    cfg.data.mixing, cfg.data.batching = "annealed", "per_source"
    run = SimpleNamespace(cfg=cfg, tokenizer=encoder_tok, sources=[
        SimpleNamespace(trained=True, train_source=lambda tokenizer, s=s: s)
        for s in two_sources()])
    got = take(Experiment.train_iterator(run), 30)

    def sources_of(anneal_examples):
        return [b["source"][0] for b in take(make_mixed_train_iterator(
            two_sources(), encoder_tok, batch_size=4, seed=3, mixing="annealed",
            batching="per_source", anneal_examples=anneal_examples), 30)]

    assert [b["source"][0] for b in got] == sources_of(30 * 4)  # steps * batch_size
    assert sources_of(30 * 4) != sources_of(1)  # the anneal length shows in the draws
