"""Invariants and error messages of the record sources in ftjax.data.sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftjax import assets
from ftjax.data import (
    DataError,
    EmptySplitError,
    LabelOutOfRangeError,
    MissingColumnError,
    MissingFileError,
    SequenceClassification,
    hf_dataset,
    local_file,
    make_eval_batches,
    polarity_splits,
    tfds_source,
)
from ftjax.data.testing import tiny_encoder_tokenizer

# --------------------------------------------------------------------------------------------
# Polarity


@pytest.fixture(scope="module")
def polarity_file() -> Path:
    return assets.resolve("polarity")


@pytest.fixture(scope="module")
def splits():
    return polarity_splits(seed=0)


def raw_nonzero_rows(path: Path) -> dict[int, int]:
    """id -> label, parsed independently of the code under test."""
    rows = {}
    for line in path.read_bytes().decode("utf-8").split("\r\n"):
        if line:
            row_id, rating, _ = line.split("\t", 2)
            if float(rating) != 0:
                rows[int(row_id)] = int(float(rating) > 0)
    return rows


def test_polarity_splits_partition_all_nonzero_rows(splits, polarity_file):
    raw = raw_nonzero_rows(polarity_file)
    ids = {name: [r["id"] for r in records] for name, records in splits.items()}
    assert set(splits) == {"train", "validation", "test"}
    all_ids = [i for split_ids in ids.values() for i in split_ids]
    assert len(all_ids) == len(set(all_ids)) == len(raw) == 10605 - 37  # disjoint, complete
    assert set(all_ids) == set(raw)
    for records in splits.values():
        for record in records:
            assert record["label"] == raw[record["id"]]
            assert isinstance(record["text"], str) and record["text"]
            assert "\r" not in record["text"] and "\n" not in record["text"]


def test_polarity_splits_stratified_sized_and_documented(splits, polarity_file):
    raw = raw_nonzero_rows(polarity_file)
    overall = np.mean(list(raw.values()))
    for records in splits.values():
        assert abs(np.mean([r["label"] for r in records]) - overall) < 0.01
    sizes = {name: len(records) for name, records in splits.items()}
    assert sizes == {"train": 8455, "validation": 1057, "test": 1056}  # as in the docstring
    for name, records in splits.items():
        assert abs(len(records) / len(raw) - {"train": 0.8}.get(name, 0.1)) < 0.001


def test_polarity_splits_deterministic_per_seed(splits):
    again = polarity_splits(seed=0)
    assert again == splits
    other = polarity_splits(seed=1)
    assert [r["id"] for r in other["test"]] != [r["id"] for r in splits["test"]]
    assert {k: len(v) for k, v in other.items()} == {k: len(v) for k, v in splits.items()}


def test_polarity_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(MissingFileError, match=str(missing)):
        polarity_splits(path=missing)
    with pytest.raises(DataError, match="sum to 1"):
        polarity_splits(fractions=(0.5, 0.1, 0.1))
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(b"1\t1.5\tgood\r\n2\t-2.0\tbad\r\n3\t0\tmeh\r\n")
    with pytest.raises(EmptySplitError, match="'validation'.*tiny.txt"):
        polarity_splits(path=tiny)
    broken = tmp_path / "broken.txt"
    broken.write_bytes(b"1\t1.5\tgood\r\n2\tbad line\r\n")
    with pytest.raises(DataError, match="broken.txt:2"):
        polarity_splits(path=broken)


# --------------------------------------------------------------------------------------------
# Local files


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_local_file_formats_agree(tmp_path):
    expected = [{"text": "fine, really", "label": 1}, {"text": "two\nlines", "label": 0}]
    csv_file = write(tmp_path / "a.csv", '\ufeffsentence,y\n"fine, really",1\n"two\nlines",0\n')
    tsv_file = write(tmp_path / "a.tsv", "sentence\ty\nfine, really\t1\ntwo\\nlines\t0\n")
    jsonl_file = write(tmp_path / "a.jsonl", "".join(
        json.dumps({"sentence": r["text"], "y": r["label"]}) + "\n" for r in expected) + "\n")
    json_file = write(tmp_path / "a.json", json.dumps(
        [{"sentence": r["text"], "y": float(r["label"])} for r in expected]))
    for file in (csv_file, jsonl_file, json_file):
        assert local_file(file, text_column="sentence", label_column="y", num_labels=2) == expected
    tsv = local_file(tsv_file, text_column="sentence", label_column="y")
    assert [r["label"] for r in tsv] == [1, 0] and tsv[0]["text"] == "fine, really"
    assert local_file(csv_file, text_column="sentence") == [{"text": r["text"]} for r in expected]


def test_local_file_errors_name_file_column_row_and_range(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(MissingFileError, match="missing.csv"):
        local_file(missing, text_column="text")
    table = write(tmp_path / "t.csv", "sentence,label\nok,0\nbad,7\n")
    with pytest.raises(MissingColumnError, match=r"'text'.*t.csv.*\['label', 'sentence'\]"):
        local_file(table, text_column="text")
    out_of_range = r"label 7 in column 'label' of row 1 .*t.csv.*\[0, 2\)"
    with pytest.raises(LabelOutOfRangeError, match=out_of_range):
        local_file(table, text_column="sentence", label_column="label", num_labels=2)
    words = write(tmp_path / "w.jsonl", '{"text": "a", "label": "pos"}\n')
    not_integer = r"'pos' in column 'label' of row 0 \(line 1\).*w.jsonl"
    with pytest.raises(LabelOutOfRangeError, match=not_integer):
        local_file(words, text_column="text", label_column="label")
    empty = write(tmp_path / "empty.csv", "text,label\n")
    with pytest.raises(EmptySplitError, match="empty.csv"):
        local_file(empty, text_column="text")
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        local_file(write(tmp_path / "a.xml", "<a/>"), text_column="text")


# --------------------------------------------------------------------------------------------
# HF datasets


def test_hf_dataset_local_csv_and_jsonl(tmp_path):
    rows = [{"text": f"w{i} w{i + 1}", "label": i % 2} for i in range(6)]
    csv_file = write(tmp_path / "train.csv", "text,label\n" + "".join(
        f"{r['text']},{r['label']}\n" for r in rows))
    jsonl_file = write(tmp_path / "valid.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    cache = str(tmp_path / "hf_cache")
    from_csv = hf_dataset(csv_file, "train", columns=("text", "label"), cache_dir=cache)
    from_jsonl = hf_dataset(jsonl_file, "validation", cache_dir=cache)
    by_builder = hf_dataset("json", "test", data_files={"test": str(jsonl_file)}, cache_dir=cache)
    for ds in (from_csv, from_jsonl, by_builder):
        assert len(ds) == 6 and [ds[i] for i in range(6)] == rows
    tok = tiny_encoder_tokenizer([f"w{i}" for i in range(8)])
    task = SequenceClassification("text", "label", num_labels=2, max_length=6)
    batches = list(make_eval_batches(from_csv, task, tok, batch_size=4))
    assert sum(b["example_mask"].sum() for b in batches) == 6
    assert np.concatenate([b["labels"] for b in batches])[:6].tolist() == [r["label"] for r in rows]


def test_hf_dataset_errors(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    cache = str(tmp_path / "hf_cache")
    with pytest.raises(MissingFileError, match="nope.csv"):
        hf_dataset(tmp_path / "nope.csv", "train", cache_dir=cache)
    with pytest.raises(MissingFileError, match="gone.jsonl"):
        hf_dataset("json", "train", data_files=[str(tmp_path / "gone.jsonl")], cache_dir=cache)
    table = write(tmp_path / "t.csv", "sentence,label\nw1,0\n")
    with pytest.raises(MissingColumnError, match=r"\['text'\].*t.csv.*\['sentence', 'label'\]"):
        hf_dataset(table, "train", columns=("text",), cache_dir=cache)
    empty = write(tmp_path / "empty.jsonl", "")
    with pytest.raises(EmptySplitError, match="empty.jsonl.*'train'"):
        hf_dataset(empty, "train", cache_dir=cache)
    # Offline, a hub name fails at once with a message that says what to do instead.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"'stanfordnlp/imdb' split 'train'.*local file"):
        hf_dataset("stanfordnlp/imdb", "train", cache_dir=cache)


# --------------------------------------------------------------------------------------------
# tensorflow-datasets


def test_tfds_mock_source_offline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        source = tfds_source("imdb_reviews", "train")
        records = [source[i] for i in range(len(source))]
    assert len(records) == 12
    for record in records:
        assert isinstance(record["text"], str) and type(record["label"]) is int
        assert record["label"] in (0, 1)
    tok = tiny_encoder_tokenizer([])  # mock text is random letters: all [UNK], fine here
    task = SequenceClassification("text", "label", num_labels=2, max_length=16)
    batches = make_eval_batches(records, task, tok, batch_size=5)
    assert sum(b["example_mask"].sum() for b in batches) == 12


def test_tfds_unprepared_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"'imdb_reviews'.*not prepared.*tfds build"):
        tfds_source("imdb_reviews", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match="no dataset named 'no_such_dataset'"):
        tfds_source("no_such_dataset", "train", data_dir=tmp_path)
