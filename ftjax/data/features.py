"""Fixed-length rows: the feature names, dtypes and padding conventions every task shares.

A batch is a dict of numpy arrays, B rows of length T:

  input_ids       int32   (B, T)  token ids, ``pad_id`` on padding
  attention_mask  int32   (B, T)  1 on real tokens
  positions       int32   (B, T)  0.. within each document (restarting per packed document);
                                  0 on padding
  segment_ids     int32   (B, T)  1.. = document index within the row, 0 on padding
  token_type_ids  int32   (B, T)  sentence A = 0 / sentence B = 1 (encoders); zeros otherwise
  source          int32   (B,)    which data source the row comes from: its index in the
                                  train mixture's sources (eval batches: ``source_index``)
  example_id      int32   (B,)    the record the row was made from (its index in the split;
                                  several rows of one record, e.g. QA windows, share it);
                                  -1 on filler rows and on packed rows, which hold several
  first_piece_record int32 (B, T) packed rows only: on the tokens of a document's first piece,
                                  the document's record (as example_id); -1 elsewhere
plus, per task, either
  labels          int32   (B,)    class ids            } sequence classification
  example_mask    float32 (B,)    0 on filler rows      }
or
  labels          int32   (B, T)  target ids            } causal / masked LM
  loss_mask       float32 (B, T)  1 where the loss counts }

and, from a teacher cache (ftjax.data.teacher_cache), a teacher's outputs: all of its logits
or its top K, with which outputs they are
  teacher_values        float32 (B, K)     per example (never cut to a bucket: no token axis)
  teacher_ids           int32   (B, K)
  teacher_token_values  float32 (B, T, K)  per token
  teacher_token_ids     int32   (B, T, K)

In a multi-task batch (ftjax.data.multitask) each task's own features carry its name after
TASK_SEPARATOR ("labels@ner", "example_mask@topic"); the shared ones above keep theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

Row = dict[str, np.ndarray]
Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]

TOKEN_FEATURES = ("input_ids", "attention_mask", "positions", "segment_ids", "token_type_ids")
MASK_FEATURES = ("example_mask", "loss_mask")
SOURCE_FEATURE = "source"
EXAMPLE_FEATURE = "example_id"
TASK_ID_FEATURE = "task_id"  # a multi-task row's task, by its index in the run's tasks
TASK_SEPARATOR = "@"
TEACHER_FEATURES = {False: ("teacher_values", "teacher_ids"),  # per example: (values, ids)
                    True: ("teacher_token_values", "teacher_token_ids")}  # per token
# 2-D per-row features without a token axis, which bucketing never cuts.
UNCUT_FEATURES = frozenset(TEACHER_FEATURES[False])


def base_feature(name: str) -> str:
    """A feature's name without its task ("loss_mask@ner" -> "loss_mask")."""
    return name.split(TASK_SEPARATOR, 1)[0]


class IndexedRecord(NamedTuple):
    """A record with where it came from, as it travels through the pipeline.

    record_index: position in the record source (for error messages).
    example_index: position in the example stream (train: across epochs and shards; eval: the
      record index). Randomness inside a task (MLM masking) is seeded by it, so a resumed run
      reproduces it exactly.
    source: index of the record's source among the train mixture's sources (row feature
      "source").
    """

    record_index: int
    example_index: int
    record: object
    source: int = 0


def token_shapes(max_length: int) -> Shapes:
    return {name: ((max_length,), np.dtype(np.int32)) for name in TOKEN_FEATURES}


def source_shapes() -> Shapes:
    """The row shapes of the "source" and "example_id" features, which every pipeline adds to
    a task's rows."""
    return {SOURCE_FEATURE: ((), np.dtype(np.int32)), EXAMPLE_FEATURE: ((), np.dtype(np.int32))}


def with_source(row: Row, source: int, example_id: int = -1) -> Row:
    """``row`` with its "source" and "example_id" features set (in place; returned for
    chaining); a task that sets example_id itself keeps its own."""
    row[SOURCE_FEATURE] = np.asarray(source, np.int32)
    row.setdefault(EXAMPLE_FEATURE, np.asarray(example_id, np.int32))
    return row


def single_row(
    tokens: Sequence[int],
    max_length: int,
    pad_id: int,
    token_type_ids: Sequence[int] | None = None,
) -> Row:
    """One unpacked row: ``tokens`` (at most ``max_length``) right-padded with ``pad_id``."""
    n = len(tokens)
    if n > max_length:
        raise ValueError(f"{n} tokens do not fit a row of {max_length}")
    input_ids = np.full(max_length, pad_id, np.int32)
    input_ids[:n] = tokens
    attention_mask = np.zeros(max_length, np.int32)
    # A row attends to at least one token: softmax over an all-masked row is NaN, and NaN
    # survives multiplication by a zero loss mask. An empty text thus becomes one pad token.
    attention_mask[: max(n, 1)] = 1
    positions = np.zeros(max_length, np.int32)
    positions[:n] = np.arange(n, dtype=np.int32)
    type_ids = np.zeros(max_length, np.int32)
    if token_type_ids is not None:
        type_ids[:n] = token_type_ids
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "positions": positions,
        "segment_ids": attention_mask.copy(),
        "token_type_ids": type_ids,
    }


def filler_like(row: Row) -> Row:
    """A copy of ``row`` that contributes nothing: its example/loss masks are zero.

    A copy of a real row, not zeros, so the model never sees an all-masked row (see
    ``single_row``).
    """
    filler = {name: value.copy() for name, value in row.items()}
    for name in filler:
        if base_feature(name) in MASK_FEATURES:
            filler[name] = np.zeros_like(filler[name])
    if EXAMPLE_FEATURE in filler:
        filler[EXAMPLE_FEATURE] = np.full_like(filler[EXAMPLE_FEATURE], -1)
    return filler


def stack_rows(rows: Sequence[Row]) -> Row:
    return {name: np.stack([row[name] for row in rows]) for name in rows[0]}


class SpecialTokenTemplate(NamedTuple):
    """The special tokens a tokenizer wraps a text in: ``prefix + text + suffix``.

    Found by encoding a probe text with and without special tokens, so it works for any
    tokenizer honouring the protocol: BERT gives ([CLS], [SEP]), Llama-style ones (BOS,) or ().
    A sentence pair is ``prefix + a + suffix + b + suffix`` (BERT's layout).
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> "SpecialTokenTemplate":
        probe = "hello world"
        content = list(tokenizer.encode(probe, add_special_tokens=False))
        full = list(tokenizer.encode(probe, add_special_tokens=True))
        for start in range(len(full) - len(content) + 1):
            if full[start : start + len(content)] == content:
                return cls(tuple(full[:start]), tuple(full[start + len(content) :]))
        raise ValueError(
            f"cannot find the special-token template: encoding {probe!r} with special tokens "
            f"({full}) does not contain its encoding without them ({content})"
        )


def truncate_pair(
    a: Sequence[int], b: Sequence[int], budget: int
) -> tuple[Sequence[int], Sequence[int]]:
    """Cut the longer of ``a``/``b`` first until both fit ``budget`` (HF "longest_first")."""
    if len(a) + len(b) <= budget:
        return a, b
    keep_b = min(len(b), max(budget // 2, budget - len(a)))
    keep_a = min(len(a), budget - keep_b)
    return a[:keep_a], b[:keep_b]
