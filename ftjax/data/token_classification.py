"""Token classification (named-entity recognition): one tag per word, scored per entity.

Records are ``{"tokens": [word, ...], "tags": [tag id, ...]}``, read from CoNLL-style files
(``SourceConfig(format="conll")``, ``ftjax.data.readers``) by ``load_tagged_source``. The tag
set is ``SourceConfig.labels`` (or a saved run's names), else the sorted distinct train tags
with "O" first; a tag outside it raises a ``DataError`` naming the file and line.

Rows: each word is tokenized on its own (``encode(word, add_special_tokens=False)``) and the
row is ``prefix + sub-tokens + suffix`` (BERT: [CLS] ... [SEP]). A word's first sub-token
carries its tag (loss_mask 1) and ``word_index`` = the word's position in the sentence; the
other sub-tokens get loss_mask 0 and word_index -1, unless ``label_all_subtokens``, where they
are trained on the I- tag of the word's type (word_index stays -1: one prediction per word).
Words that do not fit ``max_length`` are cut; at scoring time they are predicted "O" (and
counted as ``truncated_words``), so seqeval always sees each sentence's full gold sequence.

Metric (``NerMetric``): entity-level precision / recall / F1 with seqeval, in its default
(conlleval) mode and in strict mode with the task's scheme (IOB2 or IOBES; ``f1_strict``), and
``f1/<type>`` per entity type (default mode).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ftjax.data.config import SPLIT_PLACEHOLDER, SourceConfig
from ftjax.data.errors import DataError, LabelOutOfRangeError
from ftjax.data.features import IndexedRecord, Row, Shapes, SpecialTokenTemplate, single_row, \
    token_shapes
from ftjax.data.loading import ROLES, LoadedSource, limit_splits, split_name
from ftjax.data.metrics import real_rows
from ftjax.data.readers import ParsedRow, one_file, read_rows
from ftjax.data.sources import hf_dataset
from ftjax.data.splitting import stratified_split
from ftjax.data.types import TokenizerLike

OUTSIDE = "O"
# A scheme's names -> the seqeval.scheme class that checks it in strict mode.
SCHEMES = {"IOB2": "IOB2", "BIO": "IOB2", "IOBES": "IOBES", "BIOES": "IOBES"}
WORD_INDEX = "word_index"


# --------------------------------------------------------------------------------------------
# Loading


def tag_set(train_tags: Sequence[Sequence[str]] | None, names: Sequence[str] = ()) -> tuple:
    """``names`` if given, else the sorted distinct train tags with "O" first."""
    if names:
        return tuple(names)
    if train_tags is None:
        raise DataError("the tag set comes from the train split, which was not loaded: set "
                        "the source's labels")
    distinct = sorted({t for tags in train_tags for t in tags} - {OUTSIDE})
    return (OUTSIDE, *distinct)


def tagged_records(rows: Sequence[ParsedRow], names: Sequence[str]) -> list[dict[str, Any]]:
    """Canonical records of parsed CoNLL rows; a tag outside ``names`` raises, naming the
    file and line."""
    ids = {name: i for i, name in enumerate(names)}
    out = []
    for row in rows:
        fields = row.fields
        tags = []
        for tag, line in zip(fields["tags"], fields["lines"]):
            if tag not in ids:
                raise LabelOutOfRangeError(
                    f"line {line} of {row.where.split(' of ', 1)[-1]}: tag {tag!r} is not in "
                    f"the tag set {list(names)}")
            tags.append(ids[tag])
        out.append({"tokens": list(fields["tokens"]), "tags": tags})
    return out


def load_tagged_source(name: str, config: SourceConfig, *, roles: Sequence[str] = ROLES,
                       label_names: Sequence[str] | None = None,
                       num_labels: int | None = None) -> LoadedSource:
    """The records of a source for ``roles``, with its tag names: local CoNLL files, or an hf
    dataset whose ``text_column`` holds each sentence's words and ``label_column`` its tags
    (names, or ids of a ``Sequence(ClassLabel)`` that knows their names)."""
    if config.kind == "hf":
        return _load_hf_tagged(name, config, roles, label_names, num_labels)
    if config.kind != "local":
        raise DataError(f"source {name!r}: token classification reads local CoNLL files "
                        f"(kind='local', format='conll') or hf datasets, not "
                        f"kind={config.kind!r}")

    def read(path: Path) -> list[ParsedRow]:
        fmt = "conll" if config.format == "auto" and path.suffix.lower() != ".conll" \
            else config.format
        return read_rows(path, format=fmt, encoding=config.encoding)

    wanted = {role: split for role in roles if (split := split_name(config, role)) is not None}
    if config.split_fractions:
        rows = read(one_file(config.path))
        parts = dict(zip(ROLES, stratified_split(len(rows), config.split_fractions,
                                                 config.split_seed)))
        raw = {role: [rows[i] for i in parts[role]] for role in wanted}
        train_rows = [rows[i] for i in parts["train"]]
    else:
        raw = {role: read(Path(config.path.replace(SPLIT_PLACEHOLDER, split)))
               for role, split in wanted.items()}
        train_rows = raw.get("train")
    names = tag_set(None if train_rows is None else [r.fields["tags"] for r in train_rows],
                    tuple(label_names or config.labels))
    if num_labels is not None and len(names) != num_labels:
        raise DataError(f"source {name!r}: {len(names)} tags {list(names)} for "
                        f"head.num_labels={num_labels}")
    splits = {role: tagged_records(rows, names) for role, rows in raw.items()}
    return LoadedSource(name, limit_splits(config, splits), names)


def _hf_rows(ds, config: SourceConfig, description: str, names: Sequence[str] | None
             ) -> list[ParsedRow]:
    """An hf split's rows as CoNLL rows (tag names; "lines" are the row numbers)."""
    rows = []
    for i, row in enumerate(ds):
        tokens, tags = row[config.text_column], row[config.label_column]
        where = f"row {i} of {description}"
        if len(tokens) != len(tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        if names is not None:  # ClassLabel ids
            tags = [names[t] if 0 <= t < len(names) else f"id {t}" for t in tags]
        rows.append(ParsedRow(where, {
            "tokens": [str(t) for t in tokens], "tags": [str(t) for t in tags],
            "lines": [i] * len(tokens)}))
    return rows


def _load_hf_tagged(name: str, config: SourceConfig, roles: Sequence[str],
                    label_names: Sequence[str] | None, num_labels: int | None) -> LoadedSource:
    if config.label_column is None:
        raise DataError(f"source {name!r}: token classification needs label_column (the tags)")
    columns = (config.text_column, config.label_column)
    rows, feature_names = {}, None
    for role in roles:
        split = split_name(config, role)
        if split is None:
            continue
        path = config.path.replace(SPLIT_PLACEHOLDER, split)
        ds = hf_dataset(path, split, columns=columns)
        feature = getattr(ds.features.get(config.label_column), "feature", None)
        feature_names = getattr(feature, "names", None) or feature_names
        rows[role] = _hf_rows(ds, config, f"split {split!r} of HF dataset {path!r}",
                              getattr(feature, "names", None))
    train = rows.get("train")
    names = tag_set(None if train is None else [r.fields["tags"] for r in train],
                    tuple(label_names or config.labels or feature_names or ()))
    if num_labels is not None and len(names) != num_labels:
        raise DataError(f"source {name!r}: {len(names)} tags {list(names)} for "
                        f"head.num_labels={num_labels}")
    splits = {role: tagged_records(r, names) for role, r in rows.items()}
    return LoadedSource(name, limit_splits(config, splits), names)




# --------------------------------------------------------------------------------------------
# The task


def continuation_tag(tag: str, names: Sequence[str]) -> str:
    """The tag a word's later sub-tokens train on with label_all_subtokens: I-<type> (O stays
    O; the word's own tag where the set has no I- tag of its type)."""
    if tag == OUTSIDE or "-" not in tag:
        return tag
    inside = "I-" + tag.split("-", 1)[1]
    return inside if inside in names else tag


@dataclasses.dataclass(frozen=True)
class TokenClassification:
    """One tag per word (see the module doc). ``tag_names`` may be empty where only the row
    shapes are needed (a config's task without its data)."""

    num_labels: int
    max_length: int
    tag_names: tuple[str, ...] = ()
    label_all_subtokens: bool = False
    scheme: str = "IOB2"
    tokens_key: str = "tokens"
    tags_key: str = "tags"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise DataError(f"tag scheme {self.scheme!r}: use one of {tuple(SCHEMES)}")
        if self.tag_names and len(self.tag_names) != self.num_labels:
            raise DataError(f"{len(self.tag_names)} tag names for num_labels={self.num_labels}")

    @property
    def packed(self) -> bool:
        return False

    def predict(self, logits_BTC) -> dict:
        return {"tag": jnp.argmax(logits_BTC, axis=-1).astype(jnp.int32)}

    def metric(self, records, tokenizer=None) -> "NerMetric":
        return NerMetric(self.tag_names, records, self.scheme)

    def row_shapes(self) -> Shapes:
        t = self.max_length
        return {
            **token_shapes(t),
            "labels": ((t,), np.dtype(np.int32)),
            "loss_mask": ((t,), np.dtype(np.float32)),
            WORD_INDEX: ((t,), np.dtype(np.int32)),
        }

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "TokenFeaturizer":
        del seed  # deterministic
        return TokenFeaturizer(self, tokenizer)


class TokenFeaturizer:
    def __init__(self, task: TokenClassification, tokenizer: TokenizerLike):
        self.task, self.tokenizer = task, tokenizer
        self.template = SpecialTokenTemplate.of(tokenizer)
        self.budget = task.max_length - len(self.template.prefix) - len(self.template.suffix)
        if self.budget < 1:
            raise DataError(f"max_length={task.max_length} leaves no room for words")
        names = task.tag_names or tuple(str(i) for i in range(task.num_labels))
        self.continuation = [names.index(continuation_tag(n, names)) for n in names]

    def __call__(self, item: IndexedRecord) -> Row:
        task, record = self.task, item.record
        words, tags = list(record[task.tokens_key]), list(record[task.tags_key])
        if len(words) != len(tags):
            raise DataError(f"record {item.record_index}: {len(words)} tokens but {len(tags)} "
                            f"tags")
        pieces = self.tokenizer.encode_batch(words, add_special_tokens=False) if words else []
        prefix = list(self.template.prefix)
        ids, labels, mask, index = prefix[:], [0] * len(prefix), [0.0] * len(prefix), \
            [-1] * len(prefix)
        for w, (sub, tag) in enumerate(zip(pieces, tags)):
            room = self.budget - (len(ids) - len(prefix))
            if room <= 0:
                break
            sub = list(sub)[:room]
            for k, token in enumerate(sub):
                ids.append(token)
                first = k == 0
                labels.append(int(tag) if first else self.continuation[int(tag)])
                mask.append(1.0 if first or task.label_all_subtokens else 0.0)
                index.append(w if first else -1)
        n = len(ids)
        ids += list(self.template.suffix)
        row = single_row(ids, task.max_length, self.tokenizer.pad_id)
        t = task.max_length
        row["labels"] = np.zeros(t, np.int32)
        row["labels"][:n] = labels
        row["loss_mask"] = np.zeros(t, np.float32)
        row["loss_mask"][:n] = mask
        row[WORD_INDEX] = np.full(t, -1, np.int32)
        row[WORD_INDEX][:n] = index
        return row


# --------------------------------------------------------------------------------------------
# The metric


def word_predictions(num_words: int, word_index: np.ndarray, tags: np.ndarray) -> list[int]:
    """A sentence's word-level predicted tag ids from one row: each word's first sub-token's
    tag; words with no sub-token in the row (cut off) are -1."""
    out = [-1] * num_words
    for position in np.flatnonzero(np.asarray(word_index) >= 0):
        word = int(word_index[position])
        if word < num_words:
            out[word] = int(tags[position])
    return out


def entity_scores(gold: list[list[str]], predicted: list[list[str]], scheme: str = "IOB2"
                  ) -> dict[str, float]:
    """seqeval's entity-level scores: default mode, strict mode with ``scheme``, per type."""
    # seqeval is imported at the first evaluation, not with the data package: it imports
    # scikit-learn (about 0.9 s), which every start would otherwise pay.
    from seqeval import metrics as seqeval_metrics
    from seqeval import scheme as seqeval_scheme

    out = {
        "f1": seqeval_metrics.f1_score(gold, predicted, zero_division=0),
        "precision": seqeval_metrics.precision_score(gold, predicted, zero_division=0),
        "recall": seqeval_metrics.recall_score(gold, predicted, zero_division=0),
        "f1_strict": seqeval_metrics.f1_score(gold, predicted, mode="strict",
                                              scheme=getattr(seqeval_scheme, SCHEMES[scheme]),
                                              zero_division=0),
    }
    report = seqeval_metrics.classification_report(gold, predicted, output_dict=True,
                                                   zero_division=0)
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1/{name}"] = row["f1-score"]
    return {k: float(v) for k, v in out.items()}


class NerMetric:
    """Entity-level scores of a split (see the module doc): rows map back to their sentence by
    ``example_id`` and to words by ``word_index``."""

    names = ("f1", "precision", "recall", "f1_strict")

    def __init__(self, tag_names: Sequence[str], records: Sequence[Mapping], scheme: str = "IOB2"):
        self.tag_names, self.records, self.scheme = tuple(tag_names), records, scheme
        self.predicted: dict[int, list[int]] = {}

    def update(self, batch, predictions) -> None:
        rows = np.flatnonzero(real_rows(batch))
        word_index = np.asarray(batch[WORD_INDEX])
        tags = np.asarray(predictions["tag"])
        for r in rows:
            example = int(batch["example_id"][r])
            num_words = len(self.records[example]["tags"])
            self.predicted[example] = word_predictions(num_words, word_index[r], tags[r])

    def result(self) -> dict[str, float]:
        gold, predicted, truncated = [], [], 0
        for example in sorted(self.predicted):
            words = self.predicted[example]
            truncated += sum(1 for t in words if t < 0)
            gold.append([self.tag_names[t] for t in self.records[example]["tags"]])
            predicted.append([OUTSIDE if t < 0 else self.tag_names[t] for t in words])
        if not gold:
            return {}
        out = entity_scores(gold, predicted, self.scheme)
        out["truncated_words"] = float(truncated)
        return out


def most_frequent_tag_baseline(train: Sequence[Mapping], test: Sequence[Mapping],
                               tag_names: Sequence[str], scheme: str = "IOB2"
                               ) -> dict[str, float]:
    """Tag each test word with its most frequent train tag (case-sensitive; unseen words
    "O"): a trivial baseline's entity-level scores."""
    counts: dict[str, Counter] = {}
    for record in train:
        for word, tag in zip(record["tokens"], record["tags"]):
            counts.setdefault(word, Counter())[tag] += 1
    outside = tag_names.index(OUTSIDE) if OUTSIDE in tag_names else 0
    gold, predicted = [], []
    for record in test:
        gold.append([tag_names[t] for t in record["tags"]])
        predicted.append([tag_names[counts[w].most_common(1)[0][0] if w in counts else outside]
                          for w in record["tokens"]])
    return entity_scores(gold, predicted, scheme)
