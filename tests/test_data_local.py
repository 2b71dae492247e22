"""Local data a user actually has: SourceConfig + load_source (ftjax.data.loading), the file
readers (ftjax.data.readers), label sets and seeded splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ftjax.assets import resolve
from ftjax.data import (
    DataError,
    EmptySplitError,
    LabelOutOfRangeError,
    MalformedRowError,
    MissingColumnError,
    MissingSplitError,
    SequenceClassification,
    SourceConfig,
    UndecodableFileError,
    load_source,
    make_eval_batches,
    polarity_splits,
)
from ftjax.data.readers import one_file
from ftjax.data.testing import tiny_encoder_tokenizer


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


ROWS = [
    {"review": "fine, really", "stars": "pos", "other": "a b", "id": 1},
    {"review": "two\nlines", "stars": "neg", "other": "c", "id": 2},
    {"review": "meh", "stars": "neg", "other": "d e f", "id": 3},
]
EXPECTED = [
    {"text": "fine, really", "text_pair": "a b", "label": 1, "id": "1"},
    {"text": "two\nlines", "text_pair": "c", "label": 0, "id": "2"},
    {"text": "meh", "text_pair": "d e f", "label": 0, "id": "3"},
]
COLUMNS = dict(text_column="review", text_pair_column="other", label_column="stars",
               keep_columns=("id",), validation_split=None, test_split=None)


def table_files(tmp_path: Path) -> dict[str, Path]:
    def csv_field(value) -> str:
        value = str(value)
        return f'"{value}"' if any(c in value for c in ',"\n') else value

    header = "review,stars,other,id\n"
    csv_text = header + "".join(",".join(csv_field(r[k]) for k in ROWS[0]) + "\n" for r in ROWS)
    tsv_text = header.replace(",", "\t") + "".join(
        "\t".join(str(r[k]).replace("\n", " ") for k in ROWS[0]) + "\n" for r in ROWS)
    return {
        "csv": write(tmp_path / "reviews.csv", csv_text),
        "tsv": write(tmp_path / "reviews.tsv", tsv_text),
        "jsonl": write(tmp_path / "reviews.jsonl",
                       "".join(json.dumps({**r, "id": str(r["id"])}) + "\n" for r in ROWS)),
        "json": write(tmp_path / "reviews.json",
                      json.dumps([{**r, "id": str(r["id"])} for r in ROWS], indent=2)),
    }


# --------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "json"])
def test_table_formats_give_canonical_records(tmp_path, kind):
    path = table_files(tmp_path)[kind]
    loaded = load_source("reviews", SourceConfig(path=str(path), **COLUMNS))
    expected = EXPECTED
    if kind == "tsv":  # no quoting: the newline was written as a space
        expected = [{**EXPECTED[0]}, {**EXPECTED[1], "text": "two lines"}, EXPECTED[2]]
    assert loaded.splits == {"train": expected}
    assert loaded.label_names == ("neg", "pos")
    # The format can be named instead of read from the extension.
    renamed = path.rename(tmp_path / "reviews.data")
    again = load_source("r", SourceConfig(path=str(renamed), format=kind, **COLUMNS))
    assert again.splits == loaded.splits


def test_txt_units(tmp_path):
    text = "first line\nsecond line\n\n  \nthird, after blanks\r\nfourth\n"
    path = write(tmp_path / "notes.txt", text)

    def load(unit: str) -> list[str]:
        config = SourceConfig(path=str(path), txt_unit=unit, label_column=None,
                              validation_split=None, test_split=None)
        records = load_source("notes", config, needs_labels=False).splits["train"]
        assert all(set(r) == {"text"} for r in records)
        return [r["text"] for r in records]

    assert load("line") == ["first line", "second line", "third, after blanks", "fourth"]
    assert load("paragraph") == ["first line\nsecond line", "third, after blanks\nfourth"]
    assert load("document") == [text]


def test_utf8_bom_and_cp1252(tmp_path):
    text = "text,label\ncafé “naïve”,pos\nplain,neg\n"
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    windows = write(tmp_path / "windows.csv", text, encoding="cp1252")
    single = dict(validation_split=None, test_split=None)
    from_bom = load_source("a", SourceConfig(path=str(bom), **single)).splits["train"]
    from_cp1252 = load_source("b", SourceConfig(path=str(windows), encoding="cp1252",
                                                **single)).splits["train"]
    assert from_bom == from_cp1252 == [{"text": "café “naïve”", "label": 1},
                                       {"text": "plain", "label": 0}]


# --------------------------------------------------------------------------------------------
# Errors: one line each, naming the file and where in it


def test_missing_split_file(tmp_path):
    write(tmp_path / "d_train.csv", "text,label\na,0\n")
    write(tmp_path / "d_validation.csv", "text,label\nb,1\n")
    config = SourceConfig(path=str(tmp_path / "d_{split}.csv"))
    with pytest.raises(MissingSplitError) as err:
        load_source("d", config)
    message = one_line(err)
    assert "the test split 'test'" in message and str(tmp_path / "d_test.csv") in message
    assert "test_split=None" in message
    # A split the config says the source lacks is no error.
    loaded = load_source("d", SourceConfig(path=str(tmp_path / "d_{split}.csv"), test_split=None))
    assert set(loaded.splits) == {"train", "validation"}


def test_empty_file(tmp_path):
    for name, text in [("empty.csv", "text,label\n"), ("empty.jsonl", "\n\n"),
                       ("empty.txt", " \n")]:
        path = write(tmp_path / name, text)
        config = SourceConfig(path=str(path), validation_split=None, test_split=None)
        with pytest.raises(EmptySplitError) as err:
            load_source("e", config, needs_labels=not name.endswith(".txt"))
        assert str(path) in one_line(err)


def test_missing_column(tmp_path):
    path = write(tmp_path / "t.csv", "sentence,label\nok,0\n")
    config = SourceConfig(path=str(path), validation_split=None, test_split=None)
    with pytest.raises(MissingColumnError) as err:
        load_source("t", config)
    message = one_line(err)
    assert f"column 'text' missing in row 0 (line 2) of {path}" in message
    assert "available columns: ['label', 'sentence']" in message
    keep = SourceConfig(path=str(path), text_column="sentence", keep_columns=("id",),
                        validation_split=None, test_split=None)
    with pytest.raises(MissingColumnError, match="'id'"):
        load_source("t", keep)


def test_label_outside_the_set(tmp_path):
    write(tmp_path / "d_train.csv", "text,label\na,pos\nb,neg\n")
    bad = write(tmp_path / "d_test.csv", "text,label\nc,pos\nd,maybe\n")
    config = SourceConfig(path=str(tmp_path / "d_{split}.csv"), validation_split=None)
    with pytest.raises(LabelOutOfRangeError) as err:
        load_source("d", config)
    message = one_line(err)
    assert f"label 'maybe' in column 'label' of row 1 (line 3) of {bad}" in message
    assert "['neg', 'pos']" in message
    # With configured names, an id must lie in [0, len(labels)).
    write(tmp_path / "d_test.csv", "text,label\nc,1\nd,2\n")
    configured = SourceConfig(path=str(tmp_path / "d_{split}.csv"), validation_split=None,
                              labels=("neg", "pos"))
    with pytest.raises(LabelOutOfRangeError) as err:
        load_source("d", configured)
    assert f"label 2 in column 'label' of row 1 (line 3) of {bad}" in one_line(err)
    assert "[0, 2)" in str(err.value)


def test_undecodable_bytes_suggest_an_encoding(tmp_path):
    text = ('text,label\nThe plot was fine,pos\n"A café scene, “naïve” – and dull",neg\n'
            "I didn’t like it,neg\n")
    path = write(tmp_path / "reviews.csv", text, encoding="cp1252")
    config = SourceConfig(path=str(path), validation_split=None, test_split=None)
    with pytest.raises(UndecodableFileError) as err:
        load_source("r", config)
    message = one_line(err)
    assert message.startswith(f"{path} line 3, column 7: byte 0xe9 is not valid utf-8")
    assert message.endswith('the file looks like cp1252: set encoding="cp1252"')
    assert isinstance(err.value, UnicodeError) and isinstance(err.value, DataError)
    fixed = SourceConfig(path=str(path), encoding=err.value.suggested_encoding,
                         validation_split=None, test_split=None)
    records = load_source("r", fixed).splits["train"]
    assert records[1] == {"text": "A café scene, “naïve” – and dull", "label": 0}


def test_malformed_rows(tmp_path):
    cases = {
        "ragged.csv": ("text,label\na,0\nb,1,extra\n",
                       r"row 1 \(line 3\) of .*ragged.csv has 3 fields, the header has 2"),
        "ragged.tsv": ("text\tlabel\na\t0\nb\n", r"row 1 \(line 3\) of .*ragged.tsv has 1 field"),
        "bad.jsonl": ('{"text": "a", "label": 0}\n{"text": "b", label: 1}\n',
                      r"row 1 \(line 2\) of .*bad.jsonl is not valid JSON"),
        "bad.json": ('[\n {"text": "a", "label": 0},\n {"text": "b" "label": 1}\n]',
                     r"bad.json line 3, column 15: not valid JSON"),
        "list.jsonl": ('["a", 0]\n', r"row 0 \(line 1\) of .*list.jsonl is a list, not an object"),
        "number.json": ('[{"text": 3, "label": 0}]',
                        r"column 'text' in row 0 \(line 1\) of .*number.json must hold text"),
    }
    for name, (text, pattern) in cases.items():
        config = SourceConfig(path=str(write(tmp_path / name, text)), validation_split=None,
                              test_split=None)
        with pytest.raises(MalformedRowError, match=pattern) as err:
            load_source("m", config)
        one_line(err)


def test_source_config_checks_its_values():
    bad = [
        (dict(path="a.csv"), "one file, which can only be the train split"),
        (dict(path="a_{split}.csv", split_fractions=(0.8, 0.2, 0.0)), "ONE file"),
        (dict(path="a.csv", split_fractions=(0.8, 0.1)), "3 numbers"),
        (dict(path="a.csv", split_fractions=(0.8, 0.1, 0.2)), "sum to 1"),
        (dict(path="a.csv", split_fractions=(0.9, 0.1, 0.0), validation_split=None),
         "validation_split is None"),
        (dict(path="a_{split}.csv", encoding="utf-99"), "unknown encoding"),
        (dict(path="a_{split}.csv", weight=0.0), "weight must be > 0"),
        (dict(path="a_{split}.csv", keep_columns=("label",)), "overwrite"),
        (dict(path="a_{split}.csv", labels=("a", "a")), "repeats"),
        (dict(kind="hf", path="imdb", split_fractions=(0.8, 0.1, 0.1)), "train\\[:90%\\]"),
        (dict(kind="local"), "needs path"),
    ]
    for kwargs, pattern in bad:
        with pytest.raises(ValueError, match=pattern):
            SourceConfig(**kwargs)
    SourceConfig(path="a.csv", split_fractions=(0.9, 0.1, 0.0), test_split=None)
    SourceConfig(kind="polarity")


# --------------------------------------------------------------------------------------------
# Seeded splits of one file


def labelled_file(tmp_path: Path, counts: dict[str, int]) -> Path:
    rows = [f"t{label}{i},{label}" for label, n in counts.items() for i in range(n)]
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return write(tmp_path / "all.csv", "text,label\n" + "\n".join(rows) + "\n")


def test_split_fractions_stratified_deterministic_partition(tmp_path):
    counts = {"a": 53, "b": 31, "c": 16}
    path = labelled_file(tmp_path, counts)
    fractions = (0.7, 0.2, 0.1)

    def load(seed: int):
        config = SourceConfig(path=str(path), split_fractions=fractions, split_seed=seed)
        return load_source("all", config).splits

    splits = load(0)
    texts = {role: [r["text"] for r in records] for role, records in splits.items()}
    all_texts = [f"t{label}{i}" for label, n in counts.items() for i in range(n)]
    joined = [t for role in ("train", "validation", "test") for t in texts[role]]
    assert sorted(joined) == sorted(all_texts) and len(set(joined)) == len(all_texts)
    file_order = [line.split(",")[0] for line in path.read_text().split("\n")[1:-1]]
    for role, fraction in zip(("train", "validation", "test"), fractions):
        assert texts[role] == [t for t in file_order if t in set(texts[role])]  # file order
        per_label = Counter(t[1] for t in texts[role])
        for label, n in counts.items():  # each label's share within one example of the file's
            assert abs(per_label[label] - fraction * n) <= 1, (role, label)
    assert sum(len(v) for v in texts.values()) == 100
    assert {k: len(v) for k, v in texts.items()} == {"train": 70, "validation": 20, "test": 10}
    assert load(0) == splits
    other = load(1)
    assert [r["text"] for r in other["test"]] != texts["test"]
    assert {k: len(v) for k, v in other.items()} == {k: len(v) for k, v in splits.items()}


def test_split_fractions_zero_fraction_means_no_split(tmp_path):
    path = labelled_file(tmp_path, {"a": 10, "b": 10})
    config = SourceConfig(path=str(path), split_fractions=(0.9, 0.1, 0.0), test_split=None)
    assert {k: len(v) for k, v in load_source("s", config).splits.items()} == {
        "train": 18, "validation": 2}
    tiny = write(tmp_path / "tiny.csv", "text,label\na,x\nb,y\n")
    too_few = SourceConfig(path=str(tiny), split_fractions=(0.8, 0.1, 0.1))
    with pytest.raises(EmptySplitError, match="validation split of .*tiny.csv"):
        load_source("s", too_few)


def test_polarity_kind_keeps_its_splits():
    loaded = load_source("polarity", SourceConfig(kind="polarity"))
    assert loaded.splits == polarity_splits(seed=0) and loaded.label_names is None
    only_eval = load_source("polarity", SourceConfig(kind="polarity", validation_split=None),
                            roles=("validation", "test"))
    assert set(only_eval.splits) == {"test"}


# --------------------------------------------------------------------------------------------
# Labels


def test_label_names_inferred_configured_or_ids(tmp_path):
    write(tmp_path / "n_train.csv", "text,label\na,pos\nb,neutral\nc,neg\nd,pos\n")
    write(tmp_path / "n_test.csv", "text,label\ne,neg\nf,neutral\n")
    pattern = str(tmp_path / "n_{split}.csv")
    inferred = load_source("n", SourceConfig(path=pattern, validation_split=None))
    assert inferred.label_names == ("neg", "neutral", "pos")  # sorted, from train
    assert [r["label"] for r in inferred.splits["train"]] == [2, 1, 0, 2]
    assert [r["label"] for r in inferred.splits["test"]] == [0, 1]

    configured = load_source("n", SourceConfig(path=pattern, validation_split=None,
                                               labels=("pos", "neg", "neutral")))
    assert configured.label_names == ("pos", "neg", "neutral")
    assert [r["label"] for r in configured.splits["train"]] == [0, 2, 1, 0]

    write(tmp_path / "i_train.jsonl", '{"text": "a", "label": 2}\n{"text": "b", "label": "0"}\n')
    write(tmp_path / "i_test.jsonl", '{"text": "c", "label": 1}\n')
    ids = load_source("i", SourceConfig(path=str(tmp_path / "i_{split}.jsonl"),
                                        validation_split=None))
    assert ids.label_names is None
    assert [r["label"] for r in ids.splits["train"] + ids.splits["test"]] == [2, 0, 1]
    with pytest.raises(LabelOutOfRangeError, match=r"label 2 .*i_train.jsonl.*\[0, 2\)"):
        load_source("i", SourceConfig(path=str(tmp_path / "i_{split}.jsonl"),
                                      validation_split=None), num_labels=2)


def test_saved_label_names_reproduce_ids_without_reading_train(tmp_path):
    write(tmp_path / "r_train.csv", "text,label\na,pos\nb,neg\nc,neutral\n")
    write(tmp_path / "r_validation.csv", "text,label\nd,neutral\ne,pos\n")
    write(tmp_path / "r_test.csv", "text,label\nf,neg\n")
    config = SourceConfig(path=str(tmp_path / "r_{split}.csv"))
    trained = load_source("r", config)
    (tmp_path / "r_train.csv").unlink()  # a restored run evaluates without the train data
    restored = load_source("r", config, roles=("validation", "test"),
                           label_names=trained.label_names)
    assert set(restored.splits) == {"validation", "test"}
    for role in ("validation", "test"):
        assert restored.splits[role] == trained.splits[role]
    assert restored.label_names == trained.label_names
    # Without the names, label names cannot be inferred from an unread train split.
    with pytest.raises(LabelOutOfRangeError, match="no label names .*train split is not loaded"):
        load_source("r", config, roles=("validation", "test"))


def test_max_examples_keep_a_seeded_subset_in_order(tmp_path):
    path = labelled_file(tmp_path, {"a": 30, "b": 30})
    config = SourceConfig(path=str(path), split_fractions=(0.5, 0.5, 0.0), test_split=None,
                          max_train_examples=7, max_eval_examples=5)
    full = load_source("s", SourceConfig(path=str(path), split_fractions=(0.5, 0.5, 0.0),
                                         test_split=None)).splits
    small = load_source("s", config).splits
    assert len(small["train"]) == 7 and len(small["validation"]) == 5
    positions = [full["train"].index(r) for r in small["train"]]
    assert positions == sorted(positions)
    assert load_source("s", config).splits == small


# --------------------------------------------------------------------------------------------
# Lazy kinds and the pipeline


def test_hf_kind_maps_columns_lazily_and_checks_labels(tmp_path):
    write(tmp_path / "h_train.csv", "sentence,y\nw1 w2,pos\nw3,neg\n")
    write(tmp_path / "h_test.csv", "sentence,y\nw2,neg\nw1,odd\n")
    config = SourceConfig(kind="hf", path=str(tmp_path / "h_{split}.csv"), text_column="sentence",
                          label_column="y", validation_split=None)
    with pytest.raises(LabelOutOfRangeError, match=r"label 'odd' .*row 1 of split 'test'.*"
                                                    r"h_test.csv.*\['neg', 'pos'\]"):
        load_source("h", config)
    loaded = load_source("h", config, roles=("train",))
    train = loaded.splits["train"]
    assert not isinstance(train, list) and len(train) == 2
    assert [train[i] for i in range(2)] == [{"text": "w1 w2", "label": 1},
                                            {"text": "w3", "label": 0}]
    tok = tiny_encoder_tokenizer(["w1", "w2", "w3"])
    task = SequenceClassification("text", "label", num_labels=2, max_length=8)
    (batch,) = make_eval_batches(train, task, tok, batch_size=2)
    assert batch["labels"].tolist() == [1, 0] and batch["source"].tolist() == [0, 0]


def test_tfds_kind_checks_the_first_record(tmp_path):
    import tensorflow_datasets as tfds

    config = SourceConfig(kind="tfds", path="imdb_reviews", validation_split=None)
    with tfds.testing.mock_data(num_examples=6):
        loaded = load_source("imdb", config, label_names=("neg", "pos"))
        records = [loaded.splits["test"][i] for i in range(6)]
        with pytest.raises(MissingColumnError, match=r"'review'.*row 0 of split 'train' of "
                                                     r"tfds dataset 'imdb_reviews'"):
            load_source("imdb", SourceConfig(kind="tfds", path="imdb_reviews",
                                             text_column="review", validation_split=None))
    assert loaded.label_names == ("neg", "pos") and len(loaded.splits["train"]) == 6
    assert all(set(r) == {"text", "label"} and r["label"] in (0, 1) for r in records)


def test_local_file_path_must_exist_as_the_train_split(tmp_path):
    config = SourceConfig(path=str(tmp_path / "nope_{split}.csv"))
    with pytest.raises(MissingSplitError, match="the train split 'train' has no file"):
        load_source("n", config)
    with pytest.raises(DataError, match="unknown role"):
        load_source("n", config, roles=("dev",))


def test_a_glob_path_reads_every_matching_file_with_its_name(tmp_path):
    from ftjax.data.errors import MissingFileError
    from ftjax.data.readers import read_rows

    (tmp_path / "b.txt").write_text("second file\n\nits paragraph\n")
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "notes.md").write_text("not matched\n")
    rows = read_rows(tmp_path / "*.txt", txt_unit="document")
    assert [(r.fields["file"], r.fields["text"]) for r in rows] == [
        ("a.txt", "first file\n"), ("b.txt", "second file\n\nits paragraph\n")]
    with pytest.raises(MissingFileError, match="matches no file"):
        read_rows(tmp_path / "*.csv")


def test_a_path_inside_a_directory_asset_names_the_asset(tmp_path, monkeypatch):
    assert one_file("sotu/*.txt") == resolve("sotu") / "*.txt"
    assert one_file("sotu") == resolve("sotu")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sotu").mkdir()  # an existing path wins over the asset's name
    assert one_file("sotu") == Path("sotu")
    assert one_file("no-such-asset/*.txt") == Path("no-such-asset/*.txt")
