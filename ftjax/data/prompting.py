"""Classification as instruction following: a prompt around each text, labels as words.

A `PromptTemplate` wraps each text in an instruction (`"Review: {text}\\nPositive or negative?"`),
optionally rendered as a user turn through the tokenizer's chat template, so a decoder's next
token after the prompt is the answer. `label_token_ids` finds the one token each label word is at
that position; a verbalizer head (ftjax.models.verbalizer_from_lm) starts from the LM head's rows
of those tokens, so classifying starts at the model's zero-shot answer.

The prompt is encoded in three pieces, `before + text + after`, and only the text is truncated:
the instruction and the assistant turn that the label word follows must survive every cut.
Encoding the pieces apart equals encoding the whole string when the pieces meet where the
tokenizer splits anyway: a newline, or a space that starts the text's first word (a trailing
space of `before` is moved onto the text for that). Elsewhere a merge across a boundary can
differ from whole-string tokenization, identically in training and evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

from ftjax.data.chat import chat_messages
from ftjax.data.errors import DataError, TokenizerError
from ftjax.data.features import SpecialTokenTemplate
from ftjax.data.types import TokenizerLike

TEXT_FIELD = "{text}"


class PromptIds(NamedTuple):
    """A prompt encoded around a text: `prefix + encode(text_lead + text) + suffix`."""

    prefix: list[int]
    suffix: list[int]
    text_lead: str


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """`template` holds `{text}` once; `chat` renders it as one user message through the
    tokenizer's chat template (after the `system` message, if given) with the assistant's
    generation prompt appended, so what follows the prompt is the assistant's answer."""

    template: str
    chat: bool = False
    system: str | None = None

    def __post_init__(self):
        count = self.template.count(TEXT_FIELD)
        if count != 1:
            raise DataError(f"prompt template must contain {TEXT_FIELD} exactly once, found it "
                            f"{count} times in {self.template!r}")
        if self.system is not None and not self.chat:
            raise DataError("a system prompt applies only to chat templates (set chat=True)")

    def render(self, tokenizer: TokenizerLike) -> tuple[str, str]:
        """(before, after): the strings around the text, chat framing included."""
        if not self.chat:
            rendered = self.template
        else:
            if not hasattr(tokenizer, "apply_chat_template"):
                raise TokenizerError("chat prompts need a tokenizer with apply_chat_template")
            rendered = tokenizer.apply_chat_template(
                chat_messages(self.template, self.system), add_generation_prompt=True)
            if rendered.count(TEXT_FIELD) != 1:
                raise TokenizerError(f"the chat template rendered {TEXT_FIELD} "
                                     f"{rendered.count(TEXT_FIELD)} times, expected once: "
                                     f"{rendered!r}")
        before, after = rendered.split(TEXT_FIELD)
        return before, after

    def encode(self, tokenizer: TokenizerLike, *, answer_follows: bool = False) -> PromptIds:
        """The ids that go before and after each text's, and what the text is prefixed with.

        A plain template gets the tokenizer's own special tokens around the whole prompt (BOS,
        or BERT's [CLS] ... [SEP]); a chat template writes every special token itself, so
        nothing is added (as ftjax.data.chat.encode_prompts does). `answer_follows`
        (label words are scored after the prompt) drops closing special tokens: the answer must
        directly follow the prompt's last token, not an end-of-text marker.

        Spaces that end the text before {text} ("Review: {text}") move to the text: byte-level
        BPE tokenizers attach a space to the word after it, so "Review:" + " The" encodes as
        the whole string does, where "Review: " + "The" would give a lone space token.
        """
        before, after = self.render(tokenizer)
        stripped = before.rstrip(" ")
        specials = SpecialTokenTemplate((), ()) if self.chat else SpecialTokenTemplate.of(tokenizer)
        prefix = [*specials.prefix, *tokenizer.encode(stripped, add_special_tokens=False)]
        suffix = tokenizer.encode(after, add_special_tokens=False)
        if not answer_follows:
            suffix = [*suffix, *specials.suffix]
        return PromptIds(prefix, suffix, before[len(stripped):])


def label_token_ids(tokenizer: TokenizerLike, prompt: PromptTemplate | None,
                    label_words: Sequence[str]) -> tuple[int, ...]:
    """The token id of each label word where the answer goes: right after the prompt.

    A word must be exactly one token there (scoring a multi-token word would need a sequence
    of predictions, not one logit), known to the vocabulary and distinct; otherwise a
    TokenizerError names the word and the tokens it became. Without a prompt the word follows
    the text directly.
    """
    if not label_words:
        raise DataError("label_token_ids needs at least one label word")
    after = prompt.render(tokenizer)[1] if prompt is not None else ""
    context = tokenizer.encode(after, add_special_tokens=False)
    unk_id = getattr(tokenizer, "unk_id", None)
    ids = []
    for word in label_words:
        tokens = tokenizer.encode(after + word, add_special_tokens=False)
        added = tokens[len(context):]
        if tokens[: len(context)] != context:
            raise TokenizerError(
                f"label word {word!r} merges with the end of the prompt ({after[-20:]!r}) into "
                f"other tokens; end the prompt with whitespace or change the word")
        if len(added) != 1 or added[0] == unk_id:
            pieces = [tokenizer.id_to_token(t) if hasattr(tokenizer, "id_to_token") else t
                      for t in added]
            what = "unknown to the tokenizer" if added == [unk_id] else "not a single token"
            raise TokenizerError(
                f"label word {word!r} is {what} after the prompt (it becomes {pieces}, ids "
                f"{added}); choose a word the tokenizer keeps whole, e.g. with or without a "
                f"leading space")
        ids.append(added[0])
    if len(set(ids)) != len(ids):
        raise TokenizerError(f"label words {list(label_words)} map to repeated tokens {ids}")
    return tuple(ids)
