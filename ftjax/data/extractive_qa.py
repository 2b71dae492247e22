"""Extractive question answering (SQuAD v1.1 / v2.0): reading, windowing, decoding, scoring.

Records: ``{"id", "question", "context", "answers": [{"text", "answer_start"}]}``; a v2.0
unanswerable question (``is_impossible``) has no answers.

Windowing: a row is ``prefix + question + suffix + context window + suffix`` (BERT: [CLS] q
[SEP] c [SEP]). A context longer than the room left is split into windows that overlap by
``doc_stride`` tokens. Each row keeps the character span of each of its context tokens in
``offsets`` (T, 2) (-1 for every other token) and its gold ``start_positions`` /
``end_positions`` (token indices in the row; 0, the first token, when the answer is not
inside the window or there is none).

Decoding (``best_answer``): over every window of a question, the best span of context tokens
among the top-k starts x top-k ends with end >= start and at most ``max_answer_length``
tokens, scored start + end logit; with ``null_threshold`` (v2.0) the empty answer wins when
the null score (first token's start + end logits, the smallest over windows) exceeds the best
span's score by more than the threshold.

Scoring (``exact_match`` / ``f1_score``): the official SQuAD evaluation: answers are lowercased,
stripped of punctuation, of the articles a/an/the and of extra whitespace; token F1; the max
over the gold answers; an unanswerable question's gold is the empty answer (v2.0).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ftjax.data.errors import DataError, MalformedRowError, MissingFileError
from ftjax.data.features import (
    IndexedRecord,
    Row,
    Shapes,
    SpecialTokenTemplate,
    single_row,
    token_shapes,
)
from ftjax.data.metrics import real_rows
from ftjax.data.types import TokenizerLike

# --------------------------------------------------------------------------------------------
# Reading SQuAD JSON


def read_squad(path: str | Path) -> list[dict]:
    """The questions of a SQuAD v1.1 / v2.0 JSON file as records, in file order."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such SQuAD file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise MalformedRowError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                                f"{e.msg}") from None
    return squad_records(doc, str(path))


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, Mapping) or key not in obj:
        raise MalformedRowError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedRowError(f"{where}.{key}: expected {kind.__name__}, got "
                                f"{type(value).__name__}")
    return value


def squad_records(doc: Any, name: str = "<squad>") -> list[dict]:
    """Records from a parsed SQuAD document (``{"data": [{"paragraphs": [...]}]}``)."""
    records = []
    for a, article in enumerate(_need(doc, "data", list, name)):
        for p, para in enumerate(_need(article, "paragraphs", list, f"{name}: data[{a}]")):
            where_p = f"{name}: data[{a}].paragraphs[{p}]"
            context = _need(para, "context", str, where_p)
            for q, qa in enumerate(_need(para, "qas", list, where_p)):
                where = f"{where_p}.qas[{q}]"
                question = _need(qa, "question", str, where)
                qid = str(qa.get("id", len(records)))
                impossible = bool(qa.get("is_impossible", False))
                answers = []
                for i, ans in enumerate([] if impossible else _need(qa, "answers", list, where)):
                    text = _need(ans, "text", str, f"{where}.answers[{i}]")
                    start = _need(ans, "answer_start", int, f"{where}.answers[{i}]")
                    if not 0 <= start <= len(context) - len(text):
                        raise DataError(f"{where}.answers[{i}]: answer_start={start} with "
                                        f"{len(text)} chars lies outside the context "
                                        f"({len(context)} chars)")
                    answers.append({"text": text, "answer_start": start})
                records.append({"id": qid, "question": question, "context": context,
                                "answers": answers})
    return records


# --------------------------------------------------------------------------------------------
# Official evaluation (SQuAD v1.1 evaluate script; v2.0's rule for empty answers)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:  # v2.0: an empty answer matches only an empty answer
        return float(pred == ref)
    same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_texts(record: Mapping) -> list[str]:
    """The gold answers' texts; [""] for an unanswerable question."""
    return [a["text"] for a in record["answers"]] or [""]


def score(predictions: Mapping[str, str], records: Sequence[Mapping]) -> dict[str, float]:
    """``exact_match`` and ``f1`` in percent, max over gold answers, mean over ``records``
    (a question without a prediction scores as the empty answer)."""
    em = f1 = 0.0
    for record in records:
        pred = predictions.get(record["id"], "")
        golds = gold_texts(record)
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = max(len(records), 1)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


# --------------------------------------------------------------------------------------------
# Windowing


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` (no special tokens) and each token's character span.

    Needs a fast tokenizer: ftjax's ``Tokenizer`` (its ``backend``), a ``tokenizers.Tokenizer``
    or any object with ``encode_with_offsets(text)``.
    """
    if hasattr(tokenizer, "encode_with_offsets"):
        return tokenizer.encode_with_offsets(text)
    backend = getattr(tokenizer, "backend", tokenizer)
    if not hasattr(backend, "encode"):
        raise DataError(f"{type(tokenizer).__name__} gives no character offsets: extractive QA "
                        f"needs a fast tokenizer")
    enc = backend.encode(text, add_special_tokens=False)
    return list(enc.ids), [tuple(o) for o in enc.offsets]


def char_to_token_span(offsets: Sequence[tuple[int, int]], start: int, end: int
                       ) -> tuple[int, int] | None:
    """The first and last token (indices into ``offsets``) overlapping chars [start, end)."""
    first = last = None
    for i, (s, e) in enumerate(offsets):
        if e > start and s < end and e > s:
            if first is None:
                first = i
            last = i
    return None if first is None else (first, last)


def window_starts(n_context: int, room: int, doc_stride: int) -> list[int]:
    """Start of each window of ``room`` context tokens, consecutive ones overlapping by
    ``doc_stride`` tokens; the last ends at the context's end."""
    starts = [0]
    while starts[-1] + room < n_context:
        starts.append(starts[-1] + room - doc_stride)
    return starts


@dataclasses.dataclass(frozen=True)
class ExtractiveQA:
    """Span extraction: (B, T, 2) logits (head.kind="span"), one row per context window.

    max_query_length: questions are cut to this many tokens.
    doc_stride: tokens of overlap between consecutive windows of one context.
    n_best: starts and ends tried per window when decoding.
    null_threshold: None for SQuAD v1.1 (always answer); a number for v2.0 (answer "" when the
      null score exceeds the best span's score by more than it).
    """

    max_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    null_threshold: float | None = None
    question_key: str = "question"
    context_key: str = "context"
    answers_key: str = "answers"

    @property
    def packed(self) -> bool:
        return False

    @property
    def multi_row(self) -> bool:
        """The featurizer returns a list of rows (the windows of one record)."""
        return True

    def row_shapes(self) -> Shapes:
        return {
            **token_shapes(self.max_length),
            "start_positions": ((), np.dtype(np.int32)),
            "end_positions": ((), np.dtype(np.int32)),
            "offsets": ((self.max_length, 2), np.dtype(np.int32)),
            "example_mask": ((), np.dtype(np.float32)),
        }

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_QAFeaturizer":
        del seed  # deterministic
        return _QAFeaturizer(self, tokenizer)

    def predict(self, logits_BT2) -> dict:
        """The start and end logits (float32 (B, T) each); decoding runs on the host."""
        logits = logits_BT2.astype(jnp.float32)
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}

    def metric(self, records, tokenizer=None) -> "ExtractiveQAMetric":
        return ExtractiveQAMetric(self, records)


class _QAFeaturizer:
    def __init__(self, task: ExtractiveQA, tokenizer: TokenizerLike):
        self.task, self.tokenizer = task, tokenizer
        self.template = SpecialTokenTemplate.of(tokenizer)
        encode_with_offsets(tokenizer, "probe")  # fail now on a tokenizer without offsets
        reserved = len(self.template.prefix) + 2 * len(self.template.suffix)
        room = task.max_length - reserved - task.max_query_length
        if room <= task.doc_stride:
            raise DataError(f"max_length={task.max_length} leaves {room} context tokens after "
                            f"the question (max_query_length={task.max_query_length}) and the "
                            f"special tokens: need more than doc_stride={task.doc_stride}")

    def __call__(self, item: IndexedRecord) -> list[Row]:
        return self.windows(item.record, f"record {item.record_index}")

    def windows(self, record: Mapping, where: str = "record") -> list[Row]:
        task, template = self.task, self.template
        for key in (task.question_key, task.context_key):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: {key!r} must be text")
        context = record[task.context_key]
        q_ids, _ = encode_with_offsets(self.tokenizer, record[task.question_key])
        q_ids = q_ids[: task.max_query_length]
        c_ids, c_offsets = encode_with_offsets(self.tokenizer, context)
        first = [*template.prefix, *q_ids, *template.suffix]
        room = task.max_length - len(first) - len(template.suffix)
        gold = None
        answers = record.get(task.answers_key) or []
        if answers:
            start = int(answers[0]["answer_start"])
            gold = char_to_token_span(c_offsets, start, start + len(answers[0]["text"]))
        rows = []
        for w0 in window_starts(len(c_ids), room, task.doc_stride):
            w1 = min(w0 + room, len(c_ids))
            tokens = first + c_ids[w0:w1] + list(template.suffix)
            row = single_row(tokens, task.max_length, self.tokenizer.pad_id,
                             token_type_ids=[0] * len(first) + [1] * (len(tokens) - len(first)))
            offsets = np.full((task.max_length, 2), -1, np.int32)
            offsets[len(first): len(first) + w1 - w0] = np.asarray(c_offsets[w0:w1],
                                                                   np.int32).reshape(-1, 2)
            s = e = 0
            if gold is not None and w0 <= gold[0] and gold[1] < w1:
                s, e = gold[0] - w0 + len(first), gold[1] - w0 + len(first)
            row["start_positions"] = np.asarray(s, np.int32)
            row["end_positions"] = np.asarray(e, np.int32)
            row["offsets"] = offsets
            row["example_mask"] = np.asarray(1.0, np.float32)
            rows.append(row)
        return rows


# --------------------------------------------------------------------------------------------
# Decoding


def best_span(start_logits, end_logits, offsets, *, n_best: int = 20,
              max_answer_length: int = 30) -> tuple[float, int, int] | None:
    """(score, start token, end token) of the best span of context tokens in one window."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    is_context = np.asarray(offsets)[:, 0] >= 0
    if not is_context.any():
        return None
    masked_s = np.where(is_context, start_logits, -np.inf)
    masked_e = np.where(is_context, end_logits, -np.inf)
    k = min(n_best, int(is_context.sum()))
    starts = np.argsort(-masked_s, kind="stable")[:k]
    ends = np.argsort(-masked_e, kind="stable")[:k]
    best = None
    for s in starts:
        for e in ends:
            if e < s or e - s + 1 > max_answer_length:
                continue
            value = float(start_logits[s] + end_logits[e])
            if best is None or value > best[0]:
                best = (value, int(s), int(e))
    return best


def best_answer(windows: Sequence[tuple[Any, Any, Any]], context: str, *, n_best: int = 20,
                max_answer_length: int = 30, null_threshold: float | None = None) -> str:
    """The answer text over all windows ``(start_logits, end_logits, offsets)`` of a question."""
    best, null = None, None
    for start_logits, end_logits, offsets in windows:
        span = best_span(start_logits, end_logits, offsets, n_best=n_best,
                         max_answer_length=max_answer_length)
        if span is not None and (best is None or span[0] > best[0]):
            best = (*span, np.asarray(offsets))
        window_null = float(start_logits[0] + end_logits[0])
        null = window_null if null is None else min(null, window_null)
    if best is None:
        return ""
    if null_threshold is not None and null - best[0] > null_threshold:
        return ""
    _, s, e, offsets = best
    return context[int(offsets[s, 0]): int(offsets[e, 1])]


class ExtractiveQAMetric:
    """EM and F1 (percent) of the decoded answers, per question over all its windows."""

    names = ("exact_match", "f1")

    def __init__(self, task: ExtractiveQA, records):
        self.task, self.records = task, records
        self.windows: dict[int, list] = collections.defaultdict(list)

    def update(self, batch, predictions) -> None:
        rows = np.flatnonzero(real_rows(batch))
        ids = np.asarray(batch["example_id"])
        offsets = np.asarray(batch["offsets"])
        starts = np.asarray(predictions["start_logits"])
        ends = np.asarray(predictions["end_logits"])
        for r in rows:
            self.windows[int(ids[r])].append((starts[r], ends[r], offsets[r]))

    def predictions(self) -> dict[str, str]:
        task, out = self.task, {}
        for index, windows in sorted(self.windows.items()):
            record = self.records[index]
            out[record["id"]] = best_answer(windows, record[task.context_key],
                                            n_best=task.n_best,
                                            max_answer_length=task.max_answer_length,
                                            null_threshold=task.null_threshold)
        return out

    def result(self) -> dict[str, float]:
        scored = [self.records[i] for i in sorted(self.windows)]
        return score(self.predictions(), scored)
