"""Turning user text into prompt token ids: plain completion or a chat turn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class PromptTokenizer(Protocol):
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]: ...
    def apply_chat_template(self, messages: list[dict], *,
                            add_generation_prompt: bool = True) -> str: ...


def chat_messages(text: str, system: str | None = None) -> list[dict]:
    """One user turn, after an optional system message."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    return messages + [{"role": "user", "content": text}]


def encode_prompts(tokenizer: PromptTokenizer, texts: Sequence[str], *, chat: bool = False,
                   system: str | None = None) -> list[list[int]]:
    """Token ids for each text.

    chat=False: `encode(text)` with the tokenizer's own special-token policy (BOS or not).
    chat=True: the text becomes a user message (after `system`, if given), rendered by the
      tokenizer's chat template with the assistant generation prompt; the template writes every
      special token itself, so encoding adds none (no second BOS).
    """
    if system is not None and not chat:
        raise ValueError("system= only applies to chat prompts; pass chat=True")
    if chat:
        return [tokenizer.encode(tokenizer.apply_chat_template(chat_messages(t, system),
                                                               add_generation_prompt=True),
                                 add_special_tokens=False) for t in texts]
    return [tokenizer.encode(t) for t in texts]
