"""Token classification (NER): the CoNLL reader, label alignment over sub-tokens, the word-level
round trip (truncation included), seqeval scores against hand-computed values, and a few-step
run of experiments/ner_wnut16_minilm.py writing f1 into metrics.jsonl."""

import json
from pathlib import Path

import numpy as np
import pytest

from ftjax.cli import main
from ftjax.data.config import SourceConfig
from ftjax.data.errors import DataError, LabelOutOfRangeError, MalformedRowError
from ftjax.data.features import IndexedRecord
from ftjax.data.readers import read_rows
from ftjax.data.token_classification import (
    NerMetric,
    TokenClassification,
    entity_scores,
    load_tagged_source,
    most_frequent_tag_baseline,
    word_predictions,
)

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "ner_wnut16_minilm.py"
BIO = ("O", "B-LOC", "B-PER", "I-LOC", "I-PER")


class CharTokenizer:
    """Each character is one sub-token (id = 10 + its code % 90); [CLS]=1 ... [SEP]=2."""

    pad_id, bos_id, eos_id, vocab_size = 0, None, None, 100
    special_ids = frozenset({0, 1, 2})

    def encode(self, text, add_special_tokens=True):
        ids = [10 + ord(c) % 90 for c in text if not c.isspace()]
        return [1, *ids, 2] if add_special_tokens else ids

    def encode_batch(self, texts, add_special_tokens=True):
        return [self.encode(t, add_special_tokens) for t in texts]

    def token_to_id(self, token):
        return None


def _row(task, tokens, tags, index=0):
    return task.featurizer(CharTokenizer())(IndexedRecord(index, index, {"tokens": tokens,
                                                                         "tags": tags}))


# --------------------------------------------------------------------------------------------
# Reader


def test_conll_reader_ends_sentences_at_tab_only_lines(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text("-DOCSTART- O\n\nJohn\tB-PER\nlives\tO\n\t\nin Paris\tB-LOC\nParis B-LOC\n"
                    "  \nok O\n")
    rows = read_rows(path, format="conll")
    assert [r.fields["tokens"] for r in rows] == [["John", "lives"], ["in Paris", "Paris"],
                                                  ["ok"]]
    assert [r.fields["tags"] for r in rows] == [["B-PER", "O"], ["B-LOC", "B-LOC"], ["O"]]
    assert rows[1].fields["lines"] == [6, 7]


def test_conll_line_without_a_tag_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("John\tB-PER\nlives\n")
    with pytest.raises(MalformedRowError, match=r"bad.conll line 2"):
        read_rows(path)


def test_tag_set_from_train_and_unknown_eval_tag(tmp_path):
    (tmp_path / "train.conll").write_text("a\tB-PER\nb\tO\n\nc\tI-PER\n")
    (tmp_path / "validation.conll").write_text("a\tO\n\nb\tB-ORG\n")
    config = SourceConfig(kind="local", path=str(tmp_path / "{split}.conll"), test_split=None)
    loaded = load_tagged_source("s", config, roles=("train",))
    assert loaded.label_names == ("O", "B-PER", "I-PER")
    assert loaded.splits["train"] == [{"tokens": ["a", "b"], "tags": [1, 0]},
                                      {"tokens": ["c"], "tags": [2]}]
    with pytest.raises(LabelOutOfRangeError, match=r"line 3 of .*validation.conll.*'B-ORG'"):
        load_tagged_source("s", config)
    with pytest.raises(DataError, match="3 tags"):
        load_tagged_source("s", config, roles=("train",), num_labels=5)


def test_split_fractions_split_one_conll_file(tmp_path):
    path = tmp_path / "all.txt"
    path.write_text("".join(f"w{i}\t{'B-PER' if i % 3 else 'O'}\n\t\n" for i in range(20)))
    config = SourceConfig(kind="local", path=str(path), format="conll",
                          split_fractions=(0.8, 0.1, 0.1), split_seed=1)
    loaded = load_tagged_source("s", config)
    sizes = {role: len(records) for role, records in loaded.splits.items()}
    assert sizes == {"train": 16, "validation": 2, "test": 2}
    words = [r["tokens"][0] for split in loaded.splits.values() for r in split]
    assert sorted(words) == sorted(f"w{i}" for i in range(20))


def test_hf_source_with_list_columns(tmp_path):
    for split, rows in (("train", [(["Ann", "x"], ["B-PER", "O"])]),
                        ("validation", [(["y"], ["B-ORG"])])):
        (tmp_path / f"{split}.jsonl").write_text("".join(
            json.dumps({"words": w, "ner": t}) + "\n" for w, t in rows))
    config = SourceConfig(kind="hf", path=str(tmp_path / "{split}.jsonl"), text_column="words",
                          label_column="ner", test_split=None)
    loaded = load_tagged_source("s", config, roles=("train",))
    assert loaded.label_names == ("O", "B-PER")
    assert loaded.splits["train"] == [{"tokens": ["Ann", "x"], "tags": [1, 0]}]
    with pytest.raises(LabelOutOfRangeError, match="'B-ORG'"):
        load_tagged_source("s", config)


# --------------------------------------------------------------------------------------------
# Alignment and the word-level round trip


def test_first_subtoken_carries_the_tag():
    task = TokenClassification(5, 20, BIO)
    row = _row(task, ["Jo", "lives", "in", "New", "York"], [2, 0, 0, 1, 3])
    n = 1 + 2 + 5 + 2 + 3 + 4 + 1  # [CLS] + characters + [SEP]
    assert row["attention_mask"].sum() == n
    assert row["word_index"].tolist() == [-1, 0, -1, 1, -1, -1, -1, -1, 2, -1, 3, -1, -1,
                                          4, -1, -1, -1, -1, -1, -1]
    assert row["loss_mask"].tolist() == [float(i >= 0) for i in row["word_index"]]
    assert row["labels"][[1, 3, 8, 10, 13]].tolist() == [2, 0, 0, 1, 3]
    assert row["labels"].dtype == np.int32 and row["loss_mask"].dtype == np.float32
    assert set(task.row_shapes()) <= set(row)


def test_label_all_subtokens_trains_continuations_on_the_inside_tag():
    task = TokenClassification(5, 16, BIO, label_all_subtokens=True)
    row = _row(task, ["Jo", "New"], [2, 1])
    assert row["labels"][1:6].tolist() == [2, 4, 1, 3, 3]  # B-PER I-PER B-LOC I-LOC I-LOC
    assert row["loss_mask"][:7].tolist() == [0, 1, 1, 1, 1, 1, 0]
    assert row["word_index"][:6].tolist() == [-1, 0, -1, 1, -1, -1]


def test_truncated_sentence_maps_back_with_cut_words_as_outside():
    """max_length 8: [CLS] + 6 sub-tokens + [SEP]; 'Amsterdam' starts at the 6th and is cut
    after its first character, the last word does not fit at all."""
    task = TokenClassification(5, 8, BIO)
    words, tags = ["ab", "cde", "Amsterdam", "x"], [0, 2, 1, 0]
    row = _row(task, words, tags)
    assert row["input_ids"][-1] == 2  # [SEP] kept
    assert row["word_index"].tolist() == [-1, 0, -1, 1, -1, -1, 2, -1]
    predicted = np.where(row["word_index"] >= 0, row["labels"], 0)
    assert word_predictions(4, row["word_index"], predicted) == [0, 2, 1, -1]
    metric = NerMetric(BIO, [{"tokens": words, "tags": tags}])
    batch = {"example_id": np.array([0, -1]), "word_index": np.stack([row["word_index"]] * 2)}
    metric.update(batch, {"tag": np.stack([predicted] * 2)})
    result = metric.result()
    assert result["truncated_words"] == 1.0 and result["f1"] == 1.0


def test_metric_rebuilds_sentences_from_shuffled_rows_and_filler():
    records = [{"tokens": ["a", "b"], "tags": [2, 4]}, {"tokens": ["c"], "tags": [1]}]
    task = TokenClassification(5, 8, BIO)
    rows = [_row(task, r["tokens"], r["tags"], i) for i, r in enumerate(records)]
    batch = {"example_id": np.array([1, 0, -1]),
             "word_index": np.stack([rows[1]["word_index"], rows[0]["word_index"],
                                     rows[0]["word_index"]])}
    tags = np.stack([rows[1]["labels"], rows[0]["labels"], np.full(8, 3)])
    metric = task.metric(records)
    metric.update(batch, {"tag": tags})
    assert metric.result()["f1"] == 1.0
    assert set(NerMetric.names) <= set(metric.result())


# --------------------------------------------------------------------------------------------
# seqeval scores


def test_default_and_strict_modes_against_hand_computed_scores():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["I-LOC", "I-LOC", "O"]]
    scores = entity_scores(gold, predicted)
    # default (conlleval): I-LOC I-LOC starts an entity LOC(0,1) = gold: 2 of 3 gold found,
    # 2 of 2 predicted right -> P 1, R 2/3, F1 0.8
    assert scores["precision"] == pytest.approx(1.0)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(0.8)
    # strict IOB2: an I- without B- is no entity -> P 1/1, R 1/3, F1 0.5
    assert scores["f1_strict"] == pytest.approx(0.5)
    assert scores["f1/PER"] == pytest.approx(1.0)
    assert scores["f1/LOC"] == pytest.approx(2 * 0.5 / 1.5)  # P 1, R 1/2


def test_bioes_scheme():
    gold = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"]]
    predicted = [["S-PER", "O", "B-LOC", "I-LOC", "I-LOC"]]
    scores = entity_scores(gold, predicted, "IOBES")
    assert scores["f1_strict"] == pytest.approx(2 / 3)  # B-I-I has no E: no entity
    assert scores["f1"] == pytest.approx(1.0)
    assert entity_scores(gold, gold, "IOBES")["f1_strict"] == 1.0


def test_most_frequent_tag_baseline():
    names = ("O", "B-PER", "I-PER")
    train = [{"tokens": ["Ann", "x", "Ann"], "tags": [1, 0, 1]}, {"tokens": ["Ann"], "tags": [0]}]
    test = [{"tokens": ["Ann", "Bob"], "tags": [1, 1]}]
    assert most_frequent_tag_baseline(train, test, names)["f1"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------
# A real run


def test_experiment_runs_and_logs_f1(tmp_path):
    workdir = tmp_path / "run"
    code = main(["train", str(EXPERIMENT), "--workdir", str(workdir), "--quiet",
                 "--set", "steps=2", "--set", "eval_every=2", "--set", "log_every=1",
                 "--set", "checkpoint_every=2", "--set", "batch_size=8",
                 "--set", "sources.wnut16.max_train_examples=64",
                 "--set", "sources.wnut16.max_eval_examples=32"])
    assert code in (0, None)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("split") == "validation"]
    assert evals and 0.0 <= evals[-1]["f1"] <= 1.0 and "f1_strict" in evals[-1]


def test_wnut16_split_and_most_frequent_tag_baseline():
    """The figures the experiment's docstring quotes: sizes of the seeded split, and the
    most-frequent-train-tag baseline's test F1."""
    config = SourceConfig(kind="local", path="wnut16", format="conll",
                          split_fractions=(0.8, 0.1, 0.1), split_seed=0)
    loaded = load_tagged_source("wnut16", config, num_labels=21)
    assert {r: len(s) for r, s in loaded.splits.items()} == {"train": 1915, "validation": 239,
                                                              "test": 240}
    assert sum(len(r["tokens"]) for s in loaded.splits.values() for r in s) == 46469
    scores = most_frequent_tag_baseline(loaded.splits["train"], loaded.splits["test"],
                                        loaded.label_names)
    assert scores["f1"] == pytest.approx(0.218, abs=5e-4)
