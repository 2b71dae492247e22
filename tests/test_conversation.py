"""Instruction tuning rows: the loss falls on the assistant's tokens only, checked token by
token against SmolLM2's own ChatML rendering."""

import json

import numpy as np
import pytest

from ftjax import assets
from ftjax.data import (
    Conversation,
    DataError,
    SourceConfig,
    load_run_data,
    make_eval_batches,
)
from ftjax.data.config import TaskConfig
from ftjax.data.features import IndexedRecord
from ftjax.io.tokenizer import load_tokenizer

MESSAGES = [
    {"role": "system", "content": "You answer arithmetic questions."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And -0.5 take away 1.25?"},
    {"role": "assistant", "content": "-1.75"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(assets.resolve("smollm2-135m-instruct"))


def _document(tokenizer, messages, max_length=256):
    featurizer = Conversation("messages", max_length, packing=False).featurizer(tokenizer)
    return featurizer.document(IndexedRecord(0, 0, {"messages": messages}))


def test_only_assistant_tokens_are_targets_token_by_token(tokenizer):
    doc = _document(tokenizer, MESSAGES)
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=False)
    # The segments encode to exactly the tokens of the whole rendered text.
    assert doc["input_ids"].tolist() == tokenizer.encode(rendered, add_special_tokens=False)
    np.testing.assert_array_equal(doc["labels"][:-1], doc["input_ids"][1:])
    targets = doc["input_ids"][1:][doc["loss_mask"][:-1] > 0]
    end = tokenizer.eos_id  # <|im_end|>
    spans, current = [], []
    for token in targets.tolist():  # split the trained tokens at each end-of-turn
        current.append(token)
        if token == end:
            spans.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
    assert current == []
    assert spans == ["2 + 2 = 4.<|im_end|>", "-1.75<|im_end|>"]
    # Everything else (system, user turns, the assistant headers, the newlines after each
    # end-of-turn) carries no loss.
    untrained = tokenizer.decode(doc["input_ids"][1:][doc["loss_mask"][:-1] == 0],
                                 skip_special_tokens=False)
    assert "What is 2 + 2?" in untrained and "assistant" in untrained
    assert "4." not in untrained and "-1.75" not in untrained


def test_rows_pack_whole_conversations_and_truncate_long_ones(tokenizer):
    records = [{"messages": MESSAGES}, {"messages": MESSAGES[1:3]}]
    packed = Conversation("messages", 256)
    (batch,) = make_eval_batches(records, packed, tokenizer, batch_size=2)
    first = _document(tokenizer, MESSAGES)
    n = len(first["input_ids"])
    assert batch["input_ids"][0, :n].tolist() == first["input_ids"].tolist()
    assert set(batch["segment_ids"][0].tolist()) == {0, 1, 2}  # both in one row
    short = Conversation("messages", 20, packing=False)
    (cut,) = make_eval_batches(records[:1], short, tokenizer, batch_size=1)
    assert cut["input_ids"][0].tolist() == first["input_ids"][:20].tolist()
    assert cut["loss_mask"][0].tolist() == first["loss_mask"][:20].tolist()


def test_bad_conversations_are_named(tokenizer):
    with pytest.raises(DataError, match="no assistant turn"):
        _document(tokenizer, MESSAGES[:2])
    with pytest.raises(DataError, match="column 'messages' in record 0 must hold a conversation"):
        _document(tokenizer, "hello")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_chat_sources_read_conversations_from_jsonl(tmp_path, tokenizer):
    _write_jsonl(tmp_path / "chat_train.jsonl", [{"messages": MESSAGES, "id": 1}] * 3)
    _write_jsonl(tmp_path / "chat_validation.jsonl", [{"messages": MESSAGES[1:3]}])
    source = SourceConfig(kind="local", path=str(tmp_path / "chat_{split}.jsonl"),
                          messages_column="messages", label_column=None, test_split=None)
    (run_source,) = load_run_data({"chat": source}, TaskConfig(kind="chat", max_length=128),
                                  num_labels=None)
    assert run_source.splits["train"][0] == {"messages": MESSAGES}
    assert isinstance(run_source.task, Conversation)
    (batch,) = make_eval_batches(run_source.splits["validation"], run_source.task, tokenizer,
                                 batch_size=1)
    assert batch["loss_mask"].sum() == len(tokenizer.encode("2 + 2 = 4.<|im_end|>",
                                                            add_special_tokens=False))
    _write_jsonl(tmp_path / "chat_validation.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(DataError, match=r"column 'messages' in .*chat_validation.jsonl"):
        load_run_data({"chat": source}, TaskConfig(kind="chat"), num_labels=None)
    with pytest.raises(DataError, match="set the source's messages_column"):
        load_run_data({"chat": SourceConfig(kind="local", path=str(tmp_path / "chat_{split}"
                                                                    ".jsonl"),
                                            label_column=None, test_split=None)},
                      TaskConfig(kind="chat"), num_labels=None)
