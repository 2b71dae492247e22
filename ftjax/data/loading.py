"""One data source of a run (a ``SourceConfig``) loaded into canonical records, checked before
the first train step.

A canonical record holds the source's columns under fixed names, whatever the file calls them:

  "text"       str   the text (``text_column``)
  "text_pair"  str   a second text, when ``text_pair_column`` is set
  "prompt"     str   a prompt, when ``prompt_column`` is set
  "label"      int   the class id, when the task needs labels (``ftjax.data.labels``)
  <keep_columns>     copied as they are

so tasks read ``SequenceClassification("text", "label", ...)`` for every source. The polarity
kind returns its own records ``{"text", "label", "id"}`` unchanged.

Local files are read whole and every row is checked here: a missing file or split, an empty
one, a missing column, undecodable bytes, a malformed row, a label outside the label set.
hf and tfds splits stay lazy (records are mapped when read); their columns are checked here,
and their labels too: hf through the label column's distinct values, tfds on the first record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftjax.data.config import SPLIT_PLACEHOLDER, SourceConfig
from ftjax.data.errors import (
    DataError,
    EmptySplitError,
    LabelOutOfRangeError,
    MissingSplitError,
)
from ftjax.data.extractive_qa import read_squad
from ftjax.data.labels import LabelSet, label_text
from ftjax.data.readers import ParsedRow, is_pattern, one_file, read_rows
from ftjax.data.records import as_int, messages_field, require_column, text_field
from ftjax.data.sources import hf_dataset, polarity_splits, tfds_source
from ftjax.data.splitting import grouped_split, stratified_split, subsample
from ftjax.data.types import Record, RecordSource

ROLES = ("train", "validation", "test")
POLARITY_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class LoadedSource:
    """A source's records per role ("train", "validation", "test"; roles the source has no
    split for are absent) and its label names (None: labels are integer ids without names, or
    the task has no labels)."""

    name: str
    splits: dict[str, RecordSource]
    label_names: tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which columns of a source's rows make a canonical record."""

    text: str
    text_pair: str | None = None
    prompt: str | None = None
    label: str | None = None
    keep: tuple[str, ...] = ()
    messages: str | None = None  # a conversation column (instruction tuning) instead of text

    @classmethod
    def of(cls, config: SourceConfig, needs_labels: bool) -> "Columns":
        return cls(config.text_column, config.text_pair_column, config.prompt_column,
                   config.label_column if needs_labels else None, tuple(config.keep_columns),
                   config.messages_column)

    def needed(self) -> tuple[str, ...]:
        if self.messages is not None:
            return (self.messages, *self.keep)
        named = (self.text, self.text_pair, self.prompt, self.label, *self.keep)
        return tuple(dict.fromkeys(c for c in named if c is not None))

    def raw_label(self, row: Record, where: str) -> Any:
        return require_column(row, self.label, where)

    def record(self, row: Record, where: str, labels: LabelSet | None) -> dict[str, Any]:
        """The canonical record of ``row``; ``where`` locates the row in errors."""
        if self.messages is not None:
            return {"messages": messages_field(row, self.messages, where),
                    **{column: require_column(row, column, where) for column in self.keep}}
        record: dict[str, Any] = {"text": text_field(row, self.text, where)}
        if self.text_pair is not None:
            record["text_pair"] = text_field(row, self.text_pair, where)
        if self.prompt is not None:
            record["prompt"] = text_field(row, self.prompt, where)
        if self.label is not None:
            record["label"] = labels.id_of(self.raw_label(row, where),
                                           f"column {self.label!r} of {where}")
        for column in self.keep:
            record[column] = require_column(row, column, where)
        return record


class CanonicalRecords:
    """Random access to canonical records of a lazy source (an hf or tfds split): each record
    is mapped when read."""

    def __init__(self, source: RecordSource, columns: Columns, labels: LabelSet | None,
                 description: str):
        self._source, self._columns, self._labels = source, columns, labels
        self.description = description

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._columns.record(self._source[index], f"row {index} of {self.description}",
                                    self._labels)

    def __repr__(self) -> str:
        return f"CanonicalRecords({self.description}, {len(self)} records)"


def load_source(
    name: str,
    config: SourceConfig,
    *,
    roles: Sequence[str] = ROLES,
    needs_labels: bool = True,
    label_names: Sequence[str] | None = None,
    num_labels: int | None = None,
) -> LoadedSource:
    """The records of source ``name`` for ``roles``, every check done (see the module doc).

    roles: the splits to load; a run restored for evaluation loads ("validation", "test") and
      never reads the train data.
    needs_labels: whether records get a "label" (classification) or not (language modelling).
    label_names: the names a saved run was trained with; they win over ``config.labels`` and
      over inference, so names map to the ids of training. Without them (and without
      ``config.labels``) names are inferred from the train split, which must then be loaded.
    num_labels: the task's number of labels; ids must lie in ``[0, num_labels)`` and names
      number exactly ``num_labels``.
    """
    roles = tuple(roles)
    unknown = [role for role in roles if role not in ROLES]
    if unknown:
        raise DataError(f"source {name!r}: unknown role(s) {unknown}; roles are {ROLES}")
    columns = Columns.of(config, needs_labels)
    if needs_labels and config.kind != "polarity" and config.label_column is None:
        raise DataError(f"source {name!r}: the task needs labels, but label_column is None")
    names = tuple(label_text(n) for n in (label_names or config.labels))
    wanted = {role: split for role in roles if (split := split_name(config, role)) is not None}
    if config.kind == "polarity":
        splits, labels = _load_polarity(config, wanted, names, num_labels, needs_labels)
    elif config.kind == "local" and config.format == "squad":
        splits = {role: read_squad(_split_file(name, config, role, split))
                  for role, split in wanted.items()}
        labels = None
    elif config.kind == "local":
        splits, labels = _load_local(name, config, wanted, columns, names, num_labels)
    elif config.kind == "hf":
        splits, labels = _load_hf(config, wanted, columns, names, num_labels)
    else:
        splits, labels = _load_tfds(config, wanted, columns, names, num_labels)
    return LoadedSource(name, limit_splits(config, splits),
                        None if labels is None else labels.names)


def limit_splits(config: SourceConfig, splits: dict) -> dict:
    """The splits cut to the config's max_*_examples (a seeded draw, the same every run)."""
    out = dict(splits)
    for role in list(out):
        limit = {"train": config.max_train_examples, "validation": config.max_eval_examples,
                 "test": config.max_eval_examples if config.max_test_examples is None
                 else config.max_test_examples}[role]
        if limit:
            out[role] = subsample(out[role], limit, seed=config.split_seed)
    return out


def split_name(config: SourceConfig, role: str) -> str | None:
    """The split ``role`` reads, or None where the config says the source has none."""
    if config.split_fractions and config.split_fractions[ROLES.index(role)] == 0:
        return None
    return getattr(config, f"{role}_split")


# --------------------------------------------------------------------------------------------
# Kinds


def _load_polarity(config: SourceConfig, wanted: Mapping[str, str], names: tuple[str, ...],
                   num_labels: int | None, needs_labels: bool):
    every = polarity_splits(seed=config.split_seed,
                            fractions=config.split_fractions or POLARITY_FRACTIONS,
                            path=config.path)
    labels = None
    if needs_labels:  # ids 0 (negative) and 1 (positive): the names, if any, must fit them
        labels = LabelSet.of(None, names=names or None, num_labels=num_labels or 2)
        labels.id_of(1, "the polarity corpus")
    return {role: every[role] for role in wanted}, labels


def _load_local(name: str, config: SourceConfig, wanted: Mapping[str, str], columns: Columns,
                names: tuple[str, ...], num_labels: int | None):
    def read(path: Path) -> list[ParsedRow]:
        return read_rows(path, format=config.format, encoding=config.encoding,
                         txt_unit=config.txt_unit)

    if config.split_fractions:
        path = one_file(config.path)
        rows = read(path)
        if config.split_group_column:
            groups = [_group_of(r, config.split_group_column) for r in rows]
            parts = dict(zip(ROLES, grouped_split(groups, config.split_fractions,
                                                  config.split_seed)))
        else:
            strata = None
            if columns.label is not None:
                strata = [label_text(columns.raw_label(r.fields, r.where)) for r in rows]
            parts = dict(zip(ROLES, stratified_split(len(rows), config.split_fractions,
                                                     config.split_seed, strata)))
        raw = {}
        for role in wanted:
            if not parts[role]:
                raise EmptySplitError(
                    f"source {name!r}: split_fractions {tuple(config.split_fractions)} leave "
                    f"the {role} split of {path} ({len(rows)} rows) empty")
            raw[role] = [rows[i] for i in parts[role]]
        train_rows, train_where = [rows[i] for i in parts["train"]], f"of {path}"
    else:
        raw = {role: read(_split_file(name, config, role, split))
               for role, split in wanted.items()}
        train_rows = raw.get("train")
        train_where = f"({_split_path(config, config.train_split)})"
    labels = None
    if columns.label is not None:
        train_labels = None
        if train_rows is not None:
            train_labels = [columns.raw_label(r.fields, r.where) for r in train_rows]
        labels = LabelSet.of(train_labels, names=names, num_labels=num_labels, where=train_where)
    splits = {role: [columns.record(r.fields, r.where, labels) for r in rows]
              for role, rows in raw.items()}
    return splits, labels


def _group_of(row: ParsedRow, column: str) -> str:
    if column not in row.fields:
        raise DataError(f"{row.where}: no {column!r} column to group the split by "
                        f"(split_group_column); the row has {sorted(row.fields)}")
    return str(row.fields[column])


def _split_path(config: SourceConfig, split: str) -> str:
    return config.path.replace(SPLIT_PLACEHOLDER, split)


def _split_file(name: str, config: SourceConfig, role: str, split: str) -> Path:
    path = Path(_split_path(config, split))
    if is_pattern(path):  # several files; read_rows names a pattern that matches none
        return path
    if path.is_dir():
        raise MissingSplitError(f"source {name!r}: the {role} split {split!r} reads {path}, a "
                                f"directory: give a file, or a pattern with {SPLIT_PLACEHOLDER}")
    if not path.is_file():
        hint = "" if role == "train" else (
            f"; set {role}_split=None if the source has no {role} split")
        raise MissingSplitError(f"source {name!r}: the {role} split {split!r} has no file: "
                                f"{path} does not exist{hint}")
    return path


def _load_hf(config: SourceConfig, wanted: Mapping[str, str], columns: Columns,
             names: tuple[str, ...], num_labels: int | None):
    datasets, descriptions = {}, {}
    for role, split in wanted.items():
        path = _split_path(config, split)
        datasets[role] = hf_dataset(path, split, columns=columns.needed())
        descriptions[role] = f"split {split!r} of HF dataset {path!r}"
    labels = None
    if columns.label is not None:
        column = columns.label
        # A ClassLabel column holds ids and knows their names.
        feature_names = next((tuple(names_) for ds in datasets.values()
                              if (names_ := getattr(ds.features.get(column), "names", None))),
                             None)
        train_labels = datasets["train"].unique(column) if "train" in datasets else None
        labels = LabelSet.of(train_labels, names=names or feature_names, num_labels=num_labels,
                             where=descriptions.get("train", ""))
        for role, ds in datasets.items():
            _check_label_column(ds, column, labels, descriptions[role])
    splits = {role: CanonicalRecords(ds, columns, labels, descriptions[role])
              for role, ds in datasets.items()}
    return splits, labels


def _check_label_column(ds, column: str, labels: LabelSet, description: str) -> None:
    """Every distinct label of an hf split (the column's values, not the records) is valid."""
    for value in ds.unique(column):
        try:
            labels.id_of(value, description)
        except LabelOutOfRangeError:
            row = list(ds[column]).index(value)
            labels.id_of(value, f"column {column!r} of row {row} of {description}")  # raises


def _load_tfds(config: SourceConfig, wanted: Mapping[str, str], columns: Columns,
               names: tuple[str, ...], num_labels: int | None):
    sources, descriptions = {}, {}
    for role, split in wanted.items():
        sources[role] = tfds_source(config.path, split)
        descriptions[role] = f"split {split!r} of tfds dataset {config.path!r}"
    labels = None
    if columns.label is not None:
        first = None
        if "train" in sources:
            first = [columns.raw_label(sources["train"][0], f"row 0 of {descriptions['train']}")]
            if not names and as_int(first[0]) is None:
                raise DataError(f"{descriptions['train']} holds label names ({first[0]!r}); "
                                f"set labels to their names in id order")
        labels = LabelSet.of(first, names=names, num_labels=num_labels)
    for role, source in sources.items():  # columns and label of the first record
        columns.record(source[0], f"row 0 of {descriptions[role]}", labels)
    splits = {role: CanonicalRecords(source, columns, labels, descriptions[role])
              for role, source in sources.items()}
    return splits, labels
