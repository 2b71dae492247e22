"""Invariants of the tasks and grain pipelines in ftjax.data (tiny real tokenizers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from ftjax.data import (
    CausalLM,
    EmptySplitError,
    LabelOutOfRangeError,
    MaskedLM,
    MissingColumnError,
    SequenceClassification,
    TokenizerError,
    batch_shapes,
    count_loss_weight,
    count_real_tokens,
    make_eval_batches,
    make_train_iterator,
    polarity_splits,
)
from ftjax.data.testing import TokenizersAdapter, tiny_decoder_tokenizer, tiny_encoder_tokenizer

WORDS = [f"w{i}" for i in range(60)]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder_tok():
    return tiny_encoder_tokenizer(WORDS)


@pytest.fixture(scope="module")
def decoder_tok():
    return tiny_decoder_tokenizer(WORDS)


def make_records(n: int, *, min_words: int = 1, max_words: int = 12, seed: int = 0,
                 num_labels: int = 3) -> list[dict]:
    """Texts of min..max words; the first word is WORDS[i % 60], so up to 60 texts are unique."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        rest = rng.integers(0, len(WORDS), rng.integers(min_words - 1, max_words))
        words = [i % len(WORDS), *rest]
        records.append({
            "text": " ".join(WORDS[w] for w in words),
            "pair": " ".join(WORDS[w] for w in words[::-1][:5]),
            "label": i % num_labels,
            "id": i,
        })
    return records


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def assert_fixed_shapes(batches, task, batch_size) -> None:
    expected = batch_shapes(task, batch_size)
    for batch in batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def segments(row_segment_ids: np.ndarray) -> list[np.ndarray]:
    """Index arrays of each document (segment) in a row, in order."""
    return [np.flatnonzero(row_segment_ids == s) for s in range(1, row_segment_ids.max() + 1)]


# --------------------------------------------------------------------------------------------
# Sequence classification


def test_classification_truncation_keeps_final_sep(encoder_tok):
    cls_id, sep_id = encoder_tok.token_to_id("[CLS]"), encoder_tok.token_to_id("[SEP]")
    records = make_records(40, max_words=20)
    task = SequenceClassification("text", "label", num_labels=3, max_length=8)
    for batch in make_eval_batches(records, task, encoder_tok, batch_size=8):
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            n = int(mask.sum())
            assert row[0] == cls_id and row[n - 1] == sep_id
            assert (row[n:] == encoder_tok.pad_id).all()
            assert sep_id not in row[1 : n - 1]
    # Each row holds the longest possible prefix of its text.
    row_tokens = [list(r[m.astype(bool)])
                  for b in make_eval_batches(records, task, encoder_tok, batch_size=8)
                  for r, m in zip(b["input_ids"], b["attention_mask"])]
    for record, tokens in zip(records, row_tokens):
        content = encoder_tok.encode(record["text"], add_special_tokens=False)
        assert tokens == [cls_id, *content[:6], sep_id]


def longest_first_reference(la: int, lb: int, budget: int) -> tuple[int, int]:
    """HF tokenizers' "longest_first": drop one token from the longer (b on ties) at a time."""
    while la + lb > budget:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_classification_pairs_truncate_longest_first(encoder_tok):
    sep_id = encoder_tok.token_to_id("[SEP]")
    records = make_records(30, min_words=1, max_words=20)
    task = SequenceClassification("text", "label", 3, max_length=12, text_pair_key="pair")
    rows = [(r, t, m) for b in make_eval_batches(records, task, encoder_tok, batch_size=30)
            for r, t, m in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"])]
    for record, (ids, type_ids, mask) in zip(records, rows):
        n = int(mask.sum())
        la = len(encoder_tok.encode(record["text"], add_special_tokens=False))
        lb = len(encoder_tok.encode(record["pair"], add_special_tokens=False))
        first = np.flatnonzero(ids[:n] == sep_id)
        assert len(first) == 2 and first[1] == n - 1
        kept_a, kept_b = first[0] - 1, n - first[0] - 2
        assert (kept_a, kept_b) == longest_first_reference(la, lb, budget=12 - 3)
        assert (type_ids[: first[0] + 1] == 0).all() and (type_ids[first[0] + 1 : n] == 1).all()


def test_real_minilm_tokenizer_no_128_padding_or_truncation():
    from ftjax import assets

    raw = tokenizers.Tokenizer.from_file(str(assets.resolve("all-minilm-l6-v2") / "tokenizer.json"))
    tok = TokenizersAdapter(raw, pad_token="[PAD]")
    assert tok.encode("a gripping, funny and moving film.") == [
        101, 1037, 13940, 1010, 6057, 1998, 3048, 2143, 1012, 102]
    long_text = " ".join(["a gripping, funny and moving film."] * 30)  # ~270 tokens
    records = [{"text": "a gripping, funny and moving film.", "label": 1},
               {"text": long_text, "label": 0}]
    task = SequenceClassification("text", "label", num_labels=2, max_length=200)
    (batch,) = make_eval_batches(records, task, tok, batch_size=2)
    assert batch["input_ids"].shape == (2, 200)
    assert batch["attention_mask"].sum(axis=1).tolist() == [10, 200]  # not 128 either way
    assert batch["input_ids"][0, :10].tolist() == tok.encode(records[0]["text"])
    assert batch["input_ids"][1, 199] == 102  # [SEP] kept after truncation
    mlm = MaskedLM("text", max_length=200, mask_prob=0.5)
    (masked,) = make_eval_batches(records, mlm, tok, batch_size=2)
    special = np.isin(masked["labels"], list(tok.special_ids))
    assert masked["loss_mask"].sum() > 0 and not (masked["loss_mask"][special] > 0).any()
    assert (masked["input_ids"] == 103).any()  # [MASK]


# --------------------------------------------------------------------------------------------
# Causal LM


def check_packed_rows(batch: dict) -> None:
    """Row-level invariants of packed causal-LM rows (documents shorter than a row)."""
    for ids, labels, loss, pos, seg, att in zip(
        batch["input_ids"], batch["labels"], batch["loss_mask"], batch["positions"],
        batch["segment_ids"], batch["attention_mask"]
    ):
        real = seg > 0
        assert (att == real).all()
        n_real = int(real.sum())
        assert real[:n_real].all()  # documents first, padding after
        assert (loss[~real] == 0).all() and (pos[~real] == 0).all()
        for doc in segments(seg):
            assert (np.diff(doc) == 1).all()  # contiguous
            assert (pos[doc] == np.arange(len(doc))).all()  # restart at 0 per document
            assert loss[doc[-1]] == 0  # no loss across the boundary
            inner = doc[:-1]
            np.testing.assert_array_equal(labels[inner], ids[inner + 1])
            filler = loss.sum() == 0  # eval fillers copy a real row with loss 0
            assert filler or (loss[inner] == 1).all()


def test_causal_packing_invariants_and_token_count(decoder_tok):
    records = make_records(50, max_words=10)
    task = CausalLM("text", max_length=24)
    batches = list(make_eval_batches(records, task, decoder_tok, batch_size=4))
    assert_fixed_shapes(batches, task, 4)
    documents = []
    for batch in batches:
        check_packed_rows(batch)
        for ids, seg, loss in zip(batch["input_ids"], batch["segment_ids"], batch["loss_mask"]):
            if loss.sum() > 0:  # filler rows repeat a real row with loss 0
                documents += [ids[doc].tolist() for doc in segments(seg)]
    expected = [decoder_tok.encode(r["text"]) + [decoder_tok.eos_id] for r in records]
    assert sorted(documents) == sorted(expected)  # every document exactly once, whole
    # Each document of n tokens (BOS + words + EOS) gives n - 1 targets.
    assert sum(count_loss_weight(b) for b in batches) == sum(len(d) - 1 for d in expected)
    # Packing actually packs: fewer rows than documents.
    assert sum(int((b["loss_mask"].sum(1) > 0).sum()) for b in batches) < len(records) / 2


def test_causal_long_documents_split_keep_all_targets(decoder_tok):
    records = make_records(12, min_words=20, max_words=40)
    length, pad = 16, decoder_tok.pad_id
    batches = list(make_eval_batches(records, CausalLM("text", max_length=length), decoder_tok,
                                     batch_size=3))
    pieces = []
    for batch in batches:
        for ids, labels, loss, seg, pos in zip(batch["input_ids"], batch["labels"],
                                               batch["loss_mask"], batch["segment_ids"],
                                               batch["positions"]):
            if loss.sum() == 0:
                continue  # filler row
            for doc in segments(seg):
                assert (pos[doc] == np.arange(len(doc))).all()
                pieces.append((ids[doc].tolist(), labels[doc].tolist(), loss[doc].tolist()))
    expected = []
    for record in records:
        doc = decoder_tok.encode(record["text"]) + [decoder_tok.eos_id]
        targets = doc[1:] + [pad]  # the next token of the same document, across piece ends
        counted = [1.0] * (len(doc) - 1) + [0.0]
        for start in range(0, len(doc), length):
            stop = start + length
            expected.append((doc[start:stop], targets[start:stop], counted[start:stop]))
    assert sorted(pieces) == sorted(expected)
    n_tokens = sum(len(e[0]) for e in expected)
    assert sum(count_loss_weight(b) for b in batches) == n_tokens - len(records)


def test_each_document_s_first_piece_names_its_record_once(decoder_tok):
    """first_piece_record: a document's record on exactly its first piece's tokens (what a
    replay buffer counts), -1 on later pieces and padding: one pass names every record once."""
    records = make_records(12, min_words=20, max_words=40)
    length = 16
    batches = list(make_eval_batches(records, CausalLM("text", max_length=length),
                                     decoder_tok, batch_size=3))
    named = []
    for batch in batches:
        for ids, seg, pos, loss, record in zip(batch["input_ids"], batch["segment_ids"],
                                               batch["positions"], batch["loss_mask"],
                                               batch["first_piece_record"]):
            if loss.sum() == 0:
                continue  # filler row
            assert (record[seg == 0] == -1).all()
            for doc in segments(seg):
                values = set(record[doc].tolist())
                assert len(values) == 1  # one piece, one value
                (value,) = values
                if value >= 0:  # a first piece: the record's own first tokens
                    first = decoder_tok.encode(records[value]["text"])[:len(doc)]
                    assert ids[doc].tolist() == first
                    named.append(value)
    assert sorted(named) == list(range(len(records)))


def test_causal_unpacked_one_document_per_row(decoder_tok):
    records = make_records(20, max_words=20)
    task = CausalLM("text", max_length=10, packing=False)
    rows = [(b["input_ids"][i], b["labels"][i], b["loss_mask"][i], b["segment_ids"][i])
            for b in make_eval_batches(records, task, decoder_tok, batch_size=20)
            for i in range(20)]
    for record, (ids, labels, loss, seg) in zip(records, rows):
        doc = decoder_tok.encode(record["text"]) + [decoder_tok.eos_id]
        n = min(len(doc), 10)
        assert ids[:n].tolist() == doc[:n] and (ids[n:] == decoder_tok.pad_id).all()
        assert (seg[:n] == 1).all() and (seg[n:] == 0).all()
        assert labels[: n].tolist() == (doc[1 : n + 1] + [decoder_tok.pad_id])[:n]
        assert loss.sum() == min(len(doc) - 1, 10)


def test_causal_prompt_target_loss_only_on_target(decoder_tok):
    records = [{"prompt": r["pair"], "text": r["text"]} for r in make_records(30, max_words=8)]
    task = CausalLM("text", max_length=32, prompt_key="prompt")
    batches = list(make_eval_batches(records, task, decoder_tok, batch_size=4))
    predicted = []  # per document: the tokens whose prediction counts
    for batch in batches:
        for labels, loss, seg in zip(batch["labels"], batch["loss_mask"], batch["segment_ids"]):
            if loss.sum() > 0:
                predicted += [labels[doc][loss[doc] > 0].tolist() for doc in segments(seg)]
    expected = [decoder_tok.encode(r["text"], add_special_tokens=False) + [decoder_tok.eos_id]
                for r in records]
    assert sorted(predicted) == sorted(expected)  # exactly the target tokens and EOS


# --------------------------------------------------------------------------------------------
# Masked LM


def test_mlm_masks_about_15_percent_never_specials(encoder_tok):
    records = make_records(400, min_words=5, max_words=30)
    task = MaskedLM("text", max_length=24)
    mask_id = encoder_tok.token_to_id("[MASK]")
    special = list(encoder_tok.special_ids)
    selected = maskable = masked = randomized = 0
    for batch in make_eval_batches(records, task, encoder_tok, batch_size=50):
        labels, loss = batch["labels"], batch["loss_mask"]
        is_special = np.isin(labels, special)
        assert not (loss[is_special] > 0).any()
        assert not (loss[batch["attention_mask"] == 0] > 0).any()
        # Unselected positions are untouched; labels are the original ids.
        np.testing.assert_array_equal(batch["input_ids"][loss == 0], labels[loss == 0])
        sel = loss > 0
        selected += sel.sum()
        maskable += (~is_special & (batch["attention_mask"] > 0)).sum()
        masked += (batch["input_ids"][sel] == mask_id).sum()
        changed = batch["input_ids"][sel]
        randomized += ((changed != mask_id) & (changed != labels[sel])).sum()
        assert not np.isin(batch["input_ids"][sel & (batch["input_ids"] != mask_id)], special).any()
    assert abs(selected / maskable - 0.15) < 0.02
    assert abs(masked / selected - 0.8) < 0.05
    assert abs(randomized / selected - 0.1) < 0.05


def test_mlm_deterministic_per_seed_and_example(encoder_tok):
    records = make_records(40)
    task = MaskedLM("text", max_length=16, mask_prob=0.3)
    a = take(make_train_iterator(records, task, encoder_tok, batch_size=4, seed=5), 20)
    b = take(make_train_iterator(records, task, encoder_tok, batch_size=4, seed=5), 20)
    assert_batches_equal(a, b)
    # Epoch 2 re-masks the same texts differently (the example index keeps growing).
    def masks_by_text(batches):
        return {tuple(r): tuple(m) for x in batches for r, m in zip(x["labels"], x["loss_mask"])}
    epoch1, epoch2 = masks_by_text(a[:10]), masks_by_text(a[10:])
    assert len(epoch1) == len(epoch2) == 40
    assert sum(epoch1[text] != epoch2[text] for text in epoch1) > 20
    eval_a = list(make_eval_batches(records, task, encoder_tok, batch_size=8, seed=1))
    eval_b = list(make_eval_batches(records, task, encoder_tok, batch_size=8, seed=1))
    eval_c = list(make_eval_batches(records, task, encoder_tok, batch_size=8, seed=2))
    assert_batches_equal(eval_a, eval_b)
    assert any((x["loss_mask"] != y["loss_mask"]).any() for x, y in zip(eval_a, eval_c))


# --------------------------------------------------------------------------------------------
# Eval batches


@pytest.mark.parametrize("n", [1, 23, 24])
def test_eval_batches_cover_each_example_once(encoder_tok, n):
    records = make_records(n)
    task = SequenceClassification("text", "label", 3, max_length=10)
    evals = make_eval_batches(records, task, encoder_tok, batch_size=8)
    batches = list(evals)
    assert evals.num_examples == n and len(batches) == evals.num_batches == -(-n // 8)
    assert_fixed_shapes(batches, task, 8)
    mask = np.concatenate([b["example_mask"] for b in batches])
    assert mask.sum() == n and (mask[:n] == 1).all() and (mask[n:] == 0).all()
    labels = np.concatenate([b["labels"] for b in batches])[:n]
    assert labels.tolist() == [r["label"] for r in records]  # ordered
    assert all(b["attention_mask"].sum(1).min() > 0 for b in batches)  # fillers are real rows
    assert sum(count_loss_weight(b) for b in batches) == n
    # [CLS] + at most 8 words + [SEP] per row, fillers included (they cost compute too).
    lengths = [min(len(encoder_tok.encode(r["text"], add_special_tokens=False)), 8) + 2
               for r in records]
    if n % 8:
        lengths += [lengths[n - n % 8]] * (8 - n % 8)  # fillers copy the last batch's first row
    assert sum(count_real_tokens(b) for b in batches) == sum(lengths)
    assert list(evals)[0]["input_ids"].tolist() == batches[0]["input_ids"].tolist()  # re-iterable


def test_eval_batches_packed_lm_fill_last_batch(decoder_tok):
    records = make_records(9)
    evals = make_eval_batches(records, CausalLM("text", max_length=64), decoder_tok, batch_size=4)
    batches = list(evals)
    assert evals.num_batches is None
    filler = [row for b in batches for row in b["loss_mask"] if row.sum() == 0]
    assert len(filler) >= 1 and all(b["input_ids"].shape == (4, 64) for b in batches)
    expected = sum(len(decoder_tok.encode(r["text"])) for r in records)  # BOS+words+EOS, minus 1
    assert sum(count_loss_weight(b) for b in batches) == expected


# --------------------------------------------------------------------------------------------
# Train iterator: order, shapes, resume


def test_train_iterator_epochs_are_reshuffled_permutations(encoder_tok):
    records = make_records(40)
    task = SequenceClassification("text", "label", 3, max_length=10)
    iterator = make_train_iterator(records, task, encoder_tok, batch_size=8, seed=3)
    batches = take(iterator, 15)
    assert_fixed_shapes(batches, task, 8)
    rows = [tuple(r) for b in batches for r in b["input_ids"]]
    (all_rows,) = make_eval_batches(records, task, encoder_tok, batch_size=40)
    texts = {tuple(r) for r in all_rows["input_ids"]}
    assert set(rows[:40]) == texts and len(set(rows[:40])) == 40  # epoch 1: each once
    assert set(rows[40:80]) == texts  # epoch 2: each once...
    assert rows[:40] != rows[40:80]  # ...in another order
    other_seed = take(make_train_iterator(records, task, encoder_tok, batch_size=8, seed=4), 5)
    assert [tuple(r) for b in other_seed for r in b["input_ids"]] != rows[:40]


@pytest.mark.parametrize("kind", ["classification", "causal_packed", "causal_unpacked", "mlm"])
def test_train_iterator_resume_is_exact(encoder_tok, decoder_tok, kind):
    records = make_records(37, max_words=14)
    task, tok = {
        "classification": (SequenceClassification("text", "label", 3, max_length=12), encoder_tok),
        "causal_packed": (CausalLM("text", max_length=20), decoder_tok),
        "causal_unpacked": (CausalLM("text", max_length=12, packing=False), decoder_tok),
        "mlm": (MaskedLM("text", max_length=12), encoder_tok),
    }[kind]
    # 6 packing bins: batch boundaries fall inside packing rounds too.
    iterator = make_train_iterator(records, task, tok, batch_size=4, seed=11, packing_bins=6)
    take(iterator, 7)  # mid-epoch, and mid packing round for the packed task
    state = iterator.get_state()
    if kind == "causal_packed":
        assert state["next_row"] != 0
    expected = take(iterator, 15)  # crosses into the next epoch
    assert_fixed_shapes(expected, task, 4)
    if kind == "causal_packed":
        for batch in expected:
            check_packed_rows(batch)

    restored = make_train_iterator(records, task, tok, batch_size=4, seed=11, packing_bins=6)
    restored.set_state(json.loads(json.dumps(state)))
    assert_batches_equal(take(restored, 15), expected)


def test_train_iterator_resume_in_fresh_process(decoder_tok, tmp_path):
    records = make_records(37, max_words=14)
    task = CausalLM("text", max_length=20)
    iterator = make_train_iterator(records, task, decoder_tok, batch_size=4, seed=2)
    take(iterator, 5)
    (tmp_path / "state.json").write_text(json.dumps(iterator.get_state()))
    expected = take(iterator, 6)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.path.insert(0, {str(REPO_ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_data_pipeline import WORDS, make_records
        from ftjax.data import CausalLM, make_train_iterator
        from ftjax.data.testing import tiny_decoder_tokenizer
        iterator = make_train_iterator(make_records(37, max_words=14),
                                       CausalLM("text", max_length=20),
                                       tiny_decoder_tokenizer(WORDS), batch_size=4, seed=2)
        iterator.set_state(json.loads(open({str(tmp_path / "state.json")!r}).read()))
        batches = [next(iterator) for _ in range(6)]
        np.savez({str(tmp_path / "out.npz")!r},
                 **{{f"{{i}}/{{k}}": v for i, b in enumerate(batches) for k, v in b.items()}})
    """)
    env = {**os.environ, "PYTHONHASHSEED": "123", "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    out = np.load(tmp_path / "out.npz")
    got = [{k: out[f"{i}/{k}"] for k in expected[0]} for i in range(6)]
    assert_batches_equal(got, expected)


def test_train_shards_are_disjoint_slices_of_one_stream(encoder_tok):
    records = make_records(24)
    task = SequenceClassification("text", "label", 3, max_length=10)
    whole = take(make_train_iterator(records, task, encoder_tok, batch_size=4, seed=7), 6)
    rows = [r.tolist() for b in whole for r in b["input_ids"]]
    shards = [take(make_train_iterator(records, task, encoder_tok, batch_size=2, seed=7,
                                       shard_index=i, shard_count=2), 6) for i in range(2)]
    for i, shard in enumerate(shards):
        assert [r.tolist() for b in shard for r in b["input_ids"]] == rows[i::2]


# --------------------------------------------------------------------------------------------
# Bad input


def test_task_errors_name_column_record_and_range(encoder_tok, decoder_tok):
    task = SequenceClassification("text", "label", num_labels=2, max_length=8)
    bad_label = [{"text": "w1", "label": 0}, {"text": "w2", "label": 5}]
    with pytest.raises(LabelOutOfRangeError, match=r"label 5 .*record 1.*\[0, 2\)"):
        list(make_eval_batches(bad_label, task, encoder_tok, batch_size=2))
    no_column = [{"sentence": "w1", "label": 0}]
    with pytest.raises(MissingColumnError, match=r"'text'.*record 0.*\['label', 'sentence'\]"):
        next(make_train_iterator(no_column, task, encoder_tok, batch_size=1, seed=0))
    with pytest.raises(MissingColumnError, match="'prompt'"):
        list(make_eval_batches([{"text": "w1"}], CausalLM("text", 8, prompt_key="prompt"),
                               decoder_tok, batch_size=1))
    with pytest.raises(EmptySplitError, match="train records are empty"):
        make_train_iterator([], task, encoder_tok, batch_size=1, seed=0)
    with pytest.raises(TokenizerError, match="eos"):
        make_train_iterator([{"text": "w1"}], CausalLM("text", 8), encoder_tok, batch_size=1,
                            seed=0)
    with pytest.raises(TokenizerError, match="mask token"):
        make_eval_batches([{"text": "w1"}], MaskedLM("text", 8), decoder_tok, batch_size=1)


def test_polarity_through_pipeline(encoder_tok):
    splits = polarity_splits()
    task = SequenceClassification("text", "label", num_labels=2, max_length=16)
    evals = make_eval_batches(splits["test"], task, encoder_tok, batch_size=128)
    total = sum(b["example_mask"].sum() for b in evals)
    assert total == len(splits["test"])


def test_mlm_whole_word_selects_every_token_of_a_word_and_nothing_across():
    from ftjax import assets

    raw = tokenizers.Tokenizer.from_file(str(assets.resolve("all-minilm-l6-v2") / "tokenizer.json"))
    encoder_tok = TokenizersAdapter(raw, pad_token="[PAD]")
    # Long made-up words split into several WordPiece tokens each.
    words = ["unbelievablyquixotic", "zzyzxquark", "film", "overcompensatingly", "a", "moving"]
    rng = np.random.default_rng(0)
    records = [{"text": " ".join(rng.choice(words, size=8))} for _ in range(800)]
    task = MaskedLM("text", max_length=64, whole_word=True)
    plain = MaskedLM("text", max_length=64)
    pieces = {w: encoder_tok.encode(w, add_special_tokens=False) for w in words}
    assert max(len(p) for p in pieces.values()) >= 4
    selected_tokens = maskable_tokens = 0
    for batch, reference in zip(make_eval_batches(records, task, encoder_tok, batch_size=50),
                                make_eval_batches(records, plain, encoder_tok, batch_size=50)):
        # Word-by-word encoding is the same token sequence for WordPiece.
        np.testing.assert_array_equal(batch["labels"], reference["labels"])
        for labels, loss in zip(batch["labels"], batch["loss_mask"]):
            n_real = int((labels != encoder_tok.pad_id).sum())
            # Walk the words of the row: each word's tokens are all selected or all not.
            ids = labels[1:n_real - 1].tolist()
            position = 0
            while position < len(ids):
                word = next(w for w, p in pieces.items() if ids[position:position + len(p)] == p)
                span = loss[1 + position: 1 + position + len(pieces[word])]
                assert span.min() == span.max(), (word, span)
                position += len(pieces[word])
            selected_tokens += loss.sum()
            maskable_tokens += n_real - 2
    # Words are selected with p = 0.15, so about 15% of the tokens are too (sizes vary little).
    assert abs(selected_tokens / maskable_tokens - 0.15) < 0.03
