"""Several sources in one train stream (ftjax.data.mixing, pipeline.make_mixed_train_iterator)."""

from __future__ import annotations

import json

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
from ftjax.data.features import IndexedRecord
from ftjax.data.packing import pack_documents
from ftjax.data.pipeline import default_read_options
from ftjax.data.testing import tiny_decoder_tokenizer, tiny_encoder_tokenizer

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
        documents = stream.map(featurize).to_iter_dataset(default_read_options())
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
