"""Task types: how records become fixed-length rows (see ``features`` for the row layout).

A task is a frozen spec. ``task.featurizer(tokenizer, seed=...)`` binds it to a tokenizer and
returns a picklable callable over ``IndexedRecord``:
- row tasks (``task.packed`` False) return one row dict of fixed shapes;
- packed tasks return a list of variable-length document pieces (1-D ``input_ids``,
  ``labels``, ``loss_mask``) that ``packing.pack_documents`` packs into rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import jax.numpy as jnp
import numpy as np

from ftjax.data.errors import DataError, TokenizerError
from ftjax.data.features import (
    IndexedRecord,
    Row,
    Shapes,
    SpecialTokenTemplate,
    single_row,
    token_shapes,
    truncate_pair,
)
from ftjax.data.metrics import ClassificationMetric
from ftjax.data.prompting import PromptTemplate, label_token_ids
from ftjax.data.records import label_field, text_field
from ftjax.data.types import TokenizerLike


class Task(Protocol):
    """What every task gives; a task with a metric of its own also gives
    `predict(logits) -> {name: array}` (pure, run inside the jitted eval step) and
    `metric(records, tokenizer) -> ftjax.data.metrics.TaskMetric`."""

    max_length: int

    @property
    def packed(self) -> bool: ...

    def row_shapes(self) -> Shapes: ...

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> Any: ...


def _where(item: IndexedRecord) -> str:
    return f"record {item.record_index}"


def _check_max_length(max_length: int, reserved: int, what: str) -> None:
    if max_length <= reserved:
        raise DataError(
            f"max_length={max_length} leaves no room for text: {what} takes {reserved} tokens"
        )


# --------------------------------------------------------------------------------------------
# Sequence classification


@dataclasses.dataclass(frozen=True)
class SequenceClassification:
    """One label per text (or text pair).

    Texts are truncated before the special tokens are added, so the final special token
    (BERT's [SEP]) always survives; pairs are cut longest-first. Right padding.

    prompt: wrap each text in an instruction (``ftjax.data.prompting``); only the text is
      truncated, so the prompt's tail (where a decoder answers) is always the row's last token.
    label_words: the words that name the labels after the prompt (a verbalizer head scores
      them); ``label_token_ids(tokenizer)`` checks each is one token there.
    """

    text_key: str
    label_key: str
    num_labels: int
    max_length: int
    text_pair_key: str | None = None
    prompt: PromptTemplate | None = None
    label_words: tuple[str, ...] = ()

    def __post_init__(self):
        if self.prompt is not None and self.text_pair_key is not None:
            raise DataError("a prompt template wraps one text; text pairs are not supported "
                            "with a prompt")
        if self.label_words and self.prompt is None:
            raise DataError("label words answer a prompt: give a prompt template whose end the "
                            "words follow")
        if self.label_words and len(self.label_words) != self.num_labels:
            raise DataError(f"{len(self.label_words)} label words {list(self.label_words)} for "
                            f"num_labels={self.num_labels}: give one word per label")

    @property
    def packed(self) -> bool:
        return False

    def predict(self, logits_BC) -> dict:
        return {"label": jnp.argmax(logits_BC, axis=-1).astype(jnp.int32)}

    def metric(self, records, tokenizer) -> ClassificationMetric:
        return ClassificationMetric(self.num_labels)

    def label_token_ids(self, tokenizer: TokenizerLike) -> tuple[int, ...]:
        """Token id of each label word right after the prompt (one token each, else an error)."""
        return label_token_ids(tokenizer, self.prompt, self.label_words)

    def row_shapes(self) -> Shapes:
        return {
            **token_shapes(self.max_length),
            "labels": ((), np.dtype(np.int32)),
            "example_mask": ((), np.dtype(np.float32)),
        }

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_ClassificationFeaturizer":
        del seed  # deterministic: nothing random here
        text_lead = ""
        if self.prompt is None:
            template = SpecialTokenTemplate.of(tokenizer)
        else:  # the prompt's pieces take the place of the special tokens around the text
            ids = self.prompt.encode(tokenizer, answer_follows=bool(self.label_words))
            template = SpecialTokenTemplate(tuple(ids.prefix), tuple(ids.suffix))
            text_lead = ids.text_lead
        if self.label_words:
            self.label_token_ids(tokenizer)  # fail before the first batch, not in the head init
        return _ClassificationFeaturizer(self, tokenizer, template, text_lead)


class _ClassificationFeaturizer:
    def __init__(self, task: SequenceClassification, tokenizer: TokenizerLike,
                 template: SpecialTokenTemplate, text_lead: str = ""):
        self.task, self.tokenizer, self.template = task, tokenizer, template
        self.text_lead = text_lead  # spaces the prompt puts before the text (prompting.py)
        n_suffixes = 2 if task.text_pair_key else 1
        reserved = len(template.prefix) + n_suffixes * len(template.suffix)
        what = "the prompt" if task.prompt is not None else "the special tokens"
        _check_max_length(task.max_length, reserved, what)
        self.budget = task.max_length - reserved

    def __call__(self, item: IndexedRecord) -> Row:
        task, template, where = self.task, self.template, _where(item)
        label = label_field(item.record, task.label_key, where, task.num_labels)
        a = self.tokenizer.encode(self.text_lead + text_field(item.record, task.text_key, where),
                                  add_special_tokens=False)
        b: list[int] = []
        if task.text_pair_key is not None:
            b = self.tokenizer.encode(text_field(item.record, task.text_pair_key, where),
                                      add_special_tokens=False)
        a, b = truncate_pair(a, b, self.budget)
        first = [*template.prefix, *a, *template.suffix]
        second = [*b, *template.suffix] if task.text_pair_key is not None else []
        row = single_row(first + second, task.max_length, self.tokenizer.pad_id,
                         token_type_ids=[0] * len(first) + [1] * len(second))
        row["labels"] = np.asarray(label, np.int32)
        row["example_mask"] = np.asarray(1.0, np.float32)
        return row


# --------------------------------------------------------------------------------------------
# Causal LM


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Next-token prediction over documents, packed or one per row.

    Each document is ``encode(text)`` (special tokens as the tokenizer adds them, e.g. BOS)
    followed by EOS when ``add_eos`` (unless the tokenizer already ended it with EOS). A
    document of n tokens has n - 1 targets: labels[t] = token t+1 of the same document; the
    last token of each document has loss_mask 0.

    With ``prompt_key`` a document is ``prompt ids + encode(text, no specials) + EOS`` and
    the loss counts only on predictions of text (target) tokens and the EOS. The prompt ids are
    ``encode(prompt)``, or with a ``prompt`` template (ftjax.data.prompting) the prompt field
    placed in the template, chat framing and the assistant's generation prompt included: a
    translation or instruction prompt. ``prompt_ids`` gives them alone, so that generation
    (ftjax.generate.evaluation) decodes from exactly what training conditioned on.

    packing=True: documents are packed whole into rows of exactly ``max_length`` by grain's
    first-fit packer (``packing.pack_documents``); ``segment_ids`` number the documents in a
    row, ``positions`` restart at 0 for each. A plain document longer than ``max_length`` is
    first split into pieces of ``max_length`` tokens; each piece is its own segment (positions
    restart) and keeps the targets of its document, so the last token of a piece predicts the
    first token of the next piece and the n - 1 targets of the document are all counted. A
    prompt/target document is truncated to ``max_length`` instead (a piece without its prompt
    would be a different task). packing=False: one document per row, truncated to its first
    ``max_length`` tokens (the last kept token still predicts the next document token).
    """

    language_model: ClassVar[bool] = True  # evaluation reports perplexity

    text_key: str
    max_length: int
    packing: bool = True
    add_eos: bool = True
    prompt_key: str | None = None
    prompt: PromptTemplate | None = None

    def __post_init__(self):
        if self.prompt is not None and self.prompt_key is None:
            raise DataError("a prompt template wraps the prompt field: set prompt_key (the "
                            "source's prompt_column)")

    @property
    def packed(self) -> bool:
        return self.packing

    def row_shapes(self) -> Shapes:
        return lm_shapes(self.max_length)

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_CausalLMFeaturizer":
        del seed  # deterministic: nothing random here
        if self.add_eos and tokenizer.eos_id is None:
            raise TokenizerError("CausalLM(add_eos=True) needs a tokenizer with an eos_id")
        if self.max_length < 2:
            raise DataError(f"CausalLM needs max_length >= 2 (a token and its target), "
                            f"got {self.max_length}")
        return _CausalLMFeaturizer(self, tokenizer)


def lm_shapes(max_length: int) -> Shapes:
    return {
        **token_shapes(max_length),
        "labels": ((max_length,), np.dtype(np.int32)),
        "loss_mask": ((max_length,), np.dtype(np.float32)),
    }


class _CausalLMFeaturizer:
    def __init__(self, task: CausalLM, tokenizer: TokenizerLike):
        self.task, self.tokenizer = task, tokenizer
        self.template = None
        if task.prompt is not None:
            self.template = task.prompt.encode(tokenizer, answer_follows=True)

    def prompt_ids(self, record, where: str = "") -> list[int]:
        """The ids a record's target follows (the prompt, in its template if any)."""
        text = text_field(record, self.task.prompt_key, where)
        if self.template is None:
            return self.tokenizer.encode(text, add_special_tokens=True)
        return [*self.template.prefix,
                *self.tokenizer.encode(self.template.text_lead + text, add_special_tokens=False),
                *self.template.suffix]

    def generation_example(self, record, where: str = "") -> tuple[list[int], str]:
        """(prompt ids, reference) to score generation: the prompt as training conditions on
        it, and the target text."""
        if self.task.prompt_key is None:
            raise DataError("generation is scored on prompt / target data: this causal LM "
                            "source has no prompt_column")
        return self.prompt_ids(record, where), text_field(record, self.task.text_key, where)

    def document(self, item: IndexedRecord) -> dict[str, np.ndarray]:
        """The whole document: input_ids, labels (next token, pad at the end), loss_mask."""
        task, tokenizer, where = self.task, self.tokenizer, _where(item)
        text = text_field(item.record, task.text_key, where)
        if task.prompt_key is None:
            n_prompt = 0
            tokens = tokenizer.encode(text, add_special_tokens=True)
        else:
            prompt = self.prompt_ids(item.record, where)
            n_prompt = len(prompt)
            tokens = prompt + tokenizer.encode(text, add_special_tokens=False)
        if task.add_eos and (not tokens or tokens[-1] != tokenizer.eos_id):
            tokens = [*tokens, tokenizer.eos_id]
        n = len(tokens)
        input_ids = np.asarray(tokens, np.int32)
        labels = np.full(n, tokenizer.pad_id, np.int32)
        labels[:-1] = input_ids[1:]
        # Target t (predicting token t+1) counts when token t+1 is a text token, not a prompt one.
        loss_mask = np.zeros(n, np.float32)
        loss_mask[max(n_prompt - 1, 0) : n - 1] = 1.0
        return {"input_ids": input_ids, "labels": labels, "loss_mask": loss_mask}

    def __call__(self, item: IndexedRecord) -> Row | list[dict[str, np.ndarray]]:
        return document_rows(self.document(item), self.task.max_length, self.tokenizer.pad_id,
                             packing=self.task.packing,
                             split_long=self.task.prompt_key is None)


def document_rows(doc: dict[str, np.ndarray], length: int, pad_id: int, *, packing: bool,
                  split_long: bool) -> Row | list[dict[str, np.ndarray]]:
    """A causal-LM document (input_ids, labels, loss_mask) as the row layout wants it: pieces
    of at most `length` tokens to pack (split_long: a longer document is cut into several;
    otherwise truncated, as a prompt without its answer or a chat without its start would be
    a different task), or one padded row truncated to `length`."""
    if packing:
        n = len(doc["input_ids"])
        if not split_long:
            n = min(n, length)
        return [{k: v[start : min(start + length, n)] for k, v in doc.items()}
                for start in range(0, n, length)]
    kept = {k: v[:length] for k, v in doc.items()}
    row = single_row(kept["input_ids"], length, pad_id)
    row["labels"] = np.full(length, pad_id, np.int32)
    row["labels"][: len(kept["labels"])] = kept["labels"]
    row["loss_mask"] = np.zeros(length, np.float32)
    row["loss_mask"][: len(kept["loss_mask"])] = kept["loss_mask"]
    return row


# --------------------------------------------------------------------------------------------
# Masked LM


@dataclasses.dataclass(frozen=True)
class MaskedLM:
    """BERT masked-LM: each real, non-special token is selected with ``mask_prob``; a selected
    token becomes ``mask_token`` (80%), a random non-special token (10%) or stays (10%).

    Special tokens (``tokenizer.special_ids``) and padding are never selected. labels are the
    original ids everywhere; loss_mask is 1 exactly on the selected positions. The draw is
    seeded by (seed, example index), so a resumed run re-masks identically while each epoch
    masks afresh (the example index keeps growing across epochs). Texts are truncated like in
    ``SequenceClassification`` (special tokens kept), one text per row.

    whole_word: select whole words (whitespace-separated) instead of tokens, as BERT's
    whole-word-masking models: a word is selected with ``mask_prob`` and then every one of its
    tokens is (each with its own 80/10/10 draw). The text is encoded word by word so that each
    token's word is known; for WordPiece tokenizers (BERT, MiniLM), which split on whitespace
    first, that is the same token sequence as encoding the whole text.
    """

    language_model: ClassVar[bool] = True  # evaluation reports perplexity

    text_key: str
    max_length: int
    mask_prob: float = 0.15
    mask_token: str = "[MASK]"
    whole_word: bool = False

    @property
    def packed(self) -> bool:
        return False

    def row_shapes(self) -> Shapes:
        return lm_shapes(self.max_length)

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_MaskedLMFeaturizer":
        if not 0.0 <= self.mask_prob <= 1.0:
            raise DataError(f"mask_prob must lie in [0, 1], got {self.mask_prob}")
        mask_id = tokenizer.token_to_id(self.mask_token)
        if mask_id is None:
            raise TokenizerError(
                f"MaskedLM: the tokenizer has no mask token {self.mask_token!r}; "
                f"pass mask_token=<its mask token>"
            )
        return _MaskedLMFeaturizer(self, tokenizer, SpecialTokenTemplate.of(tokenizer),
                                   mask_id, seed)


class _MaskedLMFeaturizer:
    def __init__(self, task: MaskedLM, tokenizer: TokenizerLike,
                 template: SpecialTokenTemplate, mask_id: int, seed: int):
        self.task, self.tokenizer, self.template = task, tokenizer, template
        self.mask_id, self.seed = mask_id, seed
        reserved = len(template.prefix) + len(template.suffix)
        _check_max_length(task.max_length, reserved, "the special tokens")
        self.budget = task.max_length - reserved
        self.special_ids = np.asarray(sorted(tokenizer.special_ids | {tokenizer.pad_id}),
                                      np.int64)
        self.replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), self.special_ids)
        if self.replacement_ids.size == 0:
            raise TokenizerError("MaskedLM: the vocabulary has no non-special token")

    def __call__(self, item: IndexedRecord) -> Row:
        task = self.task
        row, real, word_starts = self._unmasked(item.record, _where(item))
        original = row["labels"]
        maskable = real & ~np.isin(original, self.special_ids)

        # Fixed-size draws, independent of the text, so the stream of random numbers for an
        # example depends only on (seed, example_index).
        rng = np.random.default_rng([self.seed, item.example_index])
        draw = rng.random(task.max_length) < task.mask_prob
        if task.whole_word:
            # A word is selected by the draw at its first token; its other tokens follow it.
            word_of = np.full(task.max_length, -1)
            offset = len(self.template.prefix)
            word_of[offset: offset + len(word_starts)] = np.cumsum(word_starts) - 1
            first = np.flatnonzero(np.asarray(word_starts)) + offset
            chosen_words = np.flatnonzero(draw[first])
            draw = np.isin(word_of, chosen_words) & (word_of >= 0)
        selected = maskable & draw
        action = rng.random(task.max_length)
        random_ids = rng.choice(self.replacement_ids, size=task.max_length)
        input_ids = original.copy()
        to_mask = selected & (action < 0.8)
        to_random = selected & (action >= 0.8) & (action < 0.9)
        input_ids[to_mask] = self.mask_id
        input_ids[to_random] = random_ids[to_random]

        row["input_ids"] = input_ids
        row["loss_mask"] = selected.astype(np.float32)
        return row

    def unmasked_row(self, record, where: str = "") -> Row:
        """The record's row with nothing masked (labels: the original ids, loss_mask 0), and
        `real`: which positions hold the text's tokens."""
        row, real, _ = self._unmasked(record, where)
        row["real"] = real
        return row

    def _unmasked(self, record, where: str) -> tuple[Row, np.ndarray, list[bool]]:
        """The unmasked row, its real-token positions (not attention_mask: an empty row attends
        to one pad) and, per content token, whether it starts a word."""
        text = text_field(record, self.task.text_key, where)
        content, word_starts = self._encode(text)
        tokens = [*self.template.prefix, *content, *self.template.suffix]
        row = single_row(tokens, self.task.max_length, self.tokenizer.pad_id)
        row["labels"] = row["input_ids"].copy()
        row["loss_mask"] = np.zeros(self.task.max_length, np.float32)
        return row, np.arange(self.task.max_length) < len(tokens), word_starts

    def _encode(self, text: str) -> tuple[list[int], list[bool]]:
        """The text's tokens (truncated to the budget) and, per token, whether it starts a
        word (whole-word masking only; otherwise every token is its own word)."""
        if not self.task.whole_word:
            content = self.tokenizer.encode(text, add_special_tokens=False)[: self.budget]
            return content, [True] * len(content)
        content, starts = [], []
        for word in text.split():
            ids = self.tokenizer.encode(word, add_special_tokens=False)
            content += ids
            starts += [True] + [False] * (len(ids) - 1)
        return content[: self.budget], starts[: self.budget]


@dataclasses.dataclass(frozen=True)
class PseudoLikelihood:
    """Pseudo-log-likelihood rows of a masked LM (Salazar et al., 2020): for each record, one
    row per real non-special token with that token alone replaced by the mask token, its
    loss on it. The eval step's mean loss over these rows is then -PLL per token, and
    exp(loss) the pseudo-perplexity. Deterministic (nothing is drawn)."""

    masked_lm: MaskedLM
    multi_row: ClassVar[bool] = True

    @property
    def packed(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return self.masked_lm.max_length

    def row_shapes(self) -> Shapes:
        return self.masked_lm.row_shapes()

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_PseudoLikelihoodRows":
        return _PseudoLikelihoodRows(self.masked_lm.featurizer(tokenizer, seed=seed))


class _PseudoLikelihoodRows:
    def __init__(self, masked: _MaskedLMFeaturizer):
        self.masked = masked

    def __call__(self, item: IndexedRecord) -> list[Row]:
        row = self.masked.unmasked_row(item.record, _where(item))
        real = row.pop("real")
        positions = np.flatnonzero(real & ~np.isin(row["input_ids"], self.masked.special_ids))
        rows = []
        for t in positions:
            one = {name: value.copy() for name, value in row.items()}
            one["input_ids"][t] = self.masked.mask_id
            one["loss_mask"][t] = 1.0
            rows.append(one)
        return rows


__all__ = ["Task", "SequenceClassification", "CausalLM", "MaskedLM", "PseudoLikelihood",
           "document_rows", "lm_shapes"]
