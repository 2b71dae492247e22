"""Instruction tuning: conversations rendered with the model's own chat template, the loss on
the assistant's turns only.

A record holds ``messages``, a list of ``{"role", "content"}`` turns (system / user /
assistant, any number, multi-turn). The whole conversation is rendered once with the
tokenizer's chat template (SmolLM2's ChatML from its GGUF metadata, or a template given in the
config); each assistant turn's span is found by rendering the conversation up to that turn with
the generation prompt (what a model sees before it answers) and up to its end. The span is the
turn's content and the template's end-of-turn marker (``<|im_end|>``), so a trained model
learns to stop; the whitespace the template writes after the marker is not trained. Segments
are encoded one by one without added special tokens (the template writes them), so the token
boundaries are those of the rendered text.

Rows are causal-LM rows (``tasks.document_rows``): packed whole into rows with segment ids, or
one conversation per row; a conversation longer than ``max_length`` is truncated.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from ftjax.data.errors import DataError, TokenizerError
from ftjax.data.features import IndexedRecord, Row, Shapes
from ftjax.data.records import messages_field
from ftjax.data.tasks import document_rows, lm_shapes
from ftjax.data.types import TokenizerLike


@dataclasses.dataclass(frozen=True)
class Conversation:
    language_model: ClassVar[bool] = True  # evaluation reports perplexity

    messages_key: str
    max_length: int
    packing: bool = True

    @property
    def packed(self) -> bool:
        return self.packing

    def row_shapes(self) -> Shapes:
        return lm_shapes(self.max_length)

    def featurizer(self, tokenizer: TokenizerLike, *, seed: int = 0) -> "_ConversationFeaturizer":
        del seed  # deterministic
        if getattr(tokenizer, "chat_template", None) is None:
            raise TokenizerError("instruction tuning renders conversations with the tokenizer's "
                                 "chat template, and this tokenizer has none")
        if self.max_length < 2:
            raise DataError(f"Conversation needs max_length >= 2, got {self.max_length}")
        return _ConversationFeaturizer(self, tokenizer)


def assistant_segments(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant) segments that join to the whole."""
    if not any(m.get("role") == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn to learn from")
    whole = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    segments, done = [], 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) \
            if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (whole.startswith(through) and through.startswith(before)
                and len(before) >= done):
            raise DataError(f"{where}: the chat template does not render turn {i} as a prefix "
                            f"of the whole conversation, so its tokens cannot be located")
        turn = through[len(before):].rstrip()
        segments += [(whole[done:len(before)], False), (turn, True)]
        done = len(before) + len(turn)
    segments.append((whole[done:], False))
    return [(text, trained) for text, trained in segments if text]


class _ConversationFeaturizer:
    def __init__(self, task: Conversation, tokenizer: TokenizerLike):
        self.task, self.tokenizer = task, tokenizer

    def document(self, item: IndexedRecord) -> dict[str, np.ndarray]:
        where = f"record {item.record_index}"
        messages = messages_field(item.record, self.task.messages_key, where)
        tokens: list[int] = []
        trained: list[bool] = []
        for text, is_assistant in assistant_segments(self.tokenizer, messages, where):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            tokens += ids
            trained += [is_assistant] * len(ids)
        input_ids = np.asarray(tokens, np.int32)
        labels = np.full(len(tokens), self.tokenizer.pad_id, np.int32)
        labels[:-1] = input_ids[1:]
        # Target t predicts token t+1: it counts when token t+1 is the assistant's.
        loss_mask = np.zeros(len(tokens), np.float32)
        loss_mask[:-1] = np.asarray(trained[1:], np.float32)
        return {"input_ids": input_ids, "labels": labels, "loss_mask": loss_mask}

    def __call__(self, item: IndexedRecord) -> Row | list[dict[str, np.ndarray]]:
        return document_rows(self.document(item), self.task.max_length, self.tokenizer.pad_id,
                             packing=self.task.packing, split_long=False)

    def generation_example(self, record, where: str = "") -> tuple[list[int], str]:
        """(prompt ids, reference) to score generation: the conversation up to its last
        assistant turn, rendered with the generation prompt, and that turn's text."""
        messages = messages_field(record, self.task.messages_key, where)
        if not messages or messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: generation is scored against the conversation's last "
                            f"turn, which must be the assistant's")
        rendered = self.tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
        return (self.tokenizer.encode(rendered, add_special_tokens=False),
                messages[-1]["content"])
