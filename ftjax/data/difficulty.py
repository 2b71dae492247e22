"""Difficulty scores of train records for curriculum learning, and the ranks they give.

A score is a number per record, higher = harder:

  length            tokens of the record's text fields by the run's tokenizer (no special
                    tokens): longer is harder (Spitkovsky et al. 2010, Platanios et al. 2019)
  rarity            Platanios et al. 2019's word rarity: the sum over the record's words of
                    -log p(word), p the unigram frequency over the same train split (lowercased
                    word tokens \\w+); long texts of rare words are hard
  column            a numeric column of the data (a kept column: annotators' difficulty, a
                    grade level)
  reference_loss    -log softmax(logits)[label] of a reference model (a short run, a teacher),
                    from a teacher cache (ftjax teacher-cache) of this train split
  reference_margin  minus the margin logit[label] - max other logit of that cache: a small or
                    negative margin is hard
  random            a seeded uniform draw: the "random order with the same pacing" baseline

``difficulty_ranks`` turns scores into ranks 0..N-1 (0 = the first record a curriculum shows):
``easy_first`` sorts by ascending score (the curriculum), ``hard_first`` by descending score
(anti-curriculum). Ties are broken by a seeded random permutation, not by record order, so a
score with many ties (lengths) does not also order records by their place in the file.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.teacher_cache import TeacherCache
from ftjax.data.types import Record, RecordSource, TokenizerLike

SCORES = ("none", "length", "rarity", "column", "reference_loss", "reference_margin",
          "random")
REFERENCE_SCORES = ("reference_loss", "reference_margin")
ORDERS = ("easy_first", "hard_first")
# The string fields a task reads, in every task kind's canonical records.
TEXT_FIELDS = ("prompt", "text", "text_pair", "question", "context")
SALT = 0xD1FF  # keeps these draws apart from the shuffles' and the schedules' seeds
_WORD = re.compile(r"\w+")


def record_texts(record: Record, where: str) -> Iterator[str]:
    """The texts of a record a task reads: its text fields, the contents of its messages (chat)
    and its words (token classification)."""
    found = False
    for field in TEXT_FIELDS:
        if isinstance(record.get(field), str):
            found = True
            yield record[field]
    for turn in record.get("messages") or ():
        found = True
        yield str(turn.get("content", ""))
    if record.get("tokens"):
        found = True
        yield " ".join(record["tokens"])
    if not found:
        raise DataError(f"{where} has no text field ({', '.join(TEXT_FIELDS)}, messages or "
                        f"tokens) to score")


def length_scores(records: RecordSource, tokenizer: TokenizerLike, where: str) -> np.ndarray:
    """Tokens of each record's texts (special tokens left out)."""
    out = np.zeros(len(records))
    for i in range(len(records)):
        texts = list(record_texts(records[i], f"{where} record {i}"))
        out[i] = sum(len(ids) for ids in tokenizer.encode_batch(texts, add_special_tokens=False))
    return out


def record_words(record: Record, where: str) -> list[str]:
    return [w for text in record_texts(record, where) for w in _WORD.findall(text.lower())]


def rarity_scores(records: RecordSource, where: str) -> np.ndarray:
    """sum -log p(word) over each record's words, p counted over ``records``."""
    words = [record_words(records[i], f"{where} record {i}") for i in range(len(records))]
    counts = Counter(w for ws in words for w in ws)
    total = sum(counts.values())
    if not total:
        raise DataError(f"{where}: no record has a word to count (rarity scores)")
    surprise = {w: math.log(total / c) for w, c in counts.items()}
    return np.array([sum(surprise[w] for w in ws) for ws in words], np.float64)


def column_scores(records: RecordSource, column: str, where: str) -> np.ndarray:
    """The number each record holds in ``column``."""
    out = np.zeros(len(records))
    for i in range(len(records)):
        value = records[i].get(column)
        if isinstance(value, str):  # csv columns arrive as text
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value):
            hint = "" if column in records[i] else " (name it in the source's keep_columns)"
            raise DataError(f"{where} record {i}: curriculum column {column!r} must hold a "
                            f"finite number, got {value!r}{hint}")
        out[i] = value
    return out


def reference_scores(cache: TeacherCache, records: RecordSource, kind: str,
                     where: str) -> np.ndarray:
    """Loss (``reference_loss``) or minus margin (``reference_margin``) of a reference model's
    cached logits against each record's label. The cache must hold every logit of one label
    per example (``ftjax teacher-cache`` with top_k 0 on a classification source), and the
    caller checks it was made from these records (TeacherCache.check_source)."""
    if cache.per_token:
        raise DataError(f"{where}: curriculum reference {cache.path} holds per-token outputs; "
                        f"reference scores need one label per example (classification)")
    values = np.asarray(cache.values, np.float64)
    ids = np.asarray(cache.ids)
    if values.shape[1] < 2 or not np.array_equal(ids, np.broadcast_to(
            np.arange(values.shape[1]), ids.shape)):
        raise DataError(f"{where}: curriculum reference {cache.path} keeps only the top "
                        f"{values.shape[1]} logits; reference scores need all of them "
                        f"(ftjax teacher-cache with --top-k 0)")
    labels = np.zeros(len(records), np.int64)
    for i in range(len(records)):
        label = records[i].get("label")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or \
                not 0 <= label < values.shape[1]:
            raise DataError(f"{where} record {i}: reference scores need a class label in "
                            f"[0, {values.shape[1]}), got {label!r}")
        labels[i] = label
    rows = np.arange(len(labels))
    mine = values[rows, labels]
    if kind == "reference_loss":
        top = values.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(values - top).sum(axis=1))
        return log_z - mine
    others = values.copy()
    others[rows, labels] = -np.inf
    return others.max(axis=1) - mine  # -(margin)


def random_scores(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, SALT, 1]).random(n)


def difficulty_ranks(scores: np.ndarray, order: str, seed: int) -> np.ndarray:
    """Each record's place (0 = first shown) when sorted by ``order``, ties in a seeded random
    order."""
    if order not in ORDERS:
        raise DataError(f"order must be one of {ORDERS}, got {order!r}")
    scores = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise DataError("difficulty scores must be finite numbers")
    tie_break = np.random.default_rng([seed, SALT, 0]).permutation(len(scores))
    keys = scores[tie_break] if order == "easy_first" else -scores[tie_break]
    by_rank = tie_break[np.argsort(keys, kind="stable")]
    ranks = np.empty(len(scores), np.int64)
    ranks[by_rank] = np.arange(len(scores))
    return ranks


__all__ = ["ORDERS", "REFERENCE_SCORES", "SCORES", "column_scores", "difficulty_ranks",
           "length_scores", "rarity_scores", "record_texts", "reference_scores",
           "random_scores"]
