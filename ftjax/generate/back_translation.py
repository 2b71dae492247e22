"""Back-translation (Sennrich et al. 2016; as augmentation, Xie et al. 2020 "UDA"): each text
translated into a pivot language and back by models of the library, giving a paraphrase that
keeps the record's label.

A `Translator` is a decoder with its prompt (`PromptTemplate`: "{text}" in a template, chat
framing for instruct models); `back_translate` decodes every text forward, then every
translation backward (greedy or beam search, in batches; the first line of each answer), and
returns the records with their text fields replaced. Where the way back gives nothing, the record keeps its text (counted).
`write_targets` (ftjax.generate.targets) stores the result as a JSONL source to train on beside
the original records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ftjax.data.prompting import PromptTemplate
from ftjax.generate.api import decode_prompts


@dataclasses.dataclass(frozen=True)
class Translator:
    model: Any
    params: Any
    tokenizer: Any
    prompt: PromptTemplate

    def __call__(self, texts: Sequence[str], *, batch_size: int = 32,
                 max_new_tokens: int = 128, num_beams: int = 1) -> list[str]:
        ids = self.prompt.encode(self.tokenizer)
        prompts = [[*ids.prefix, *self.tokenizer.encode(ids.text_lead + text,
                                                        add_special_tokens=False), *ids.suffix]
                   for text in texts]
        return [answer.split("\n")[0].strip() for answer in decode_prompts(
            self.model, self.params, self.tokenizer, prompts, batch_size=batch_size,
            max_new_tokens=max_new_tokens, num_beams=num_beams)]


def back_translate(records: Sequence[dict], forward: Translator, backward: Translator, *,
                   fields: Sequence[str] = ("text",), batch_size: int = 32,
                   max_new_tokens: int = 128, num_beams: int = 1) -> tuple[list[dict], int]:
    """(the records with each of `fields` translated forward and back, how many texts came
    back empty and were kept as they were)."""
    out = [dict(r) for r in records]
    kept = 0
    options = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, num_beams=num_beams)
    for field in fields:
        where = [i for i, r in enumerate(records) if isinstance(r.get(field), str)]
        pivot = forward([records[i][field] for i in where], **options)
        back = backward(pivot, **options)
        for i, text in zip(where, back):
            if text:
                out[i][field] = text
            else:
                kept += 1
    return out, kept
