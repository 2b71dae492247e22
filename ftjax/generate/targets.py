"""Sequence-level knowledge distillation (Kim & Rush 2016): a teacher's generations become the
targets a student trains on.

`teacher_targets(model, params, tokenizer, source, split)` decodes, for every record of a
prompt / target source (a causal LM task with a prompt column, or conversations), the
teacher's answer to the prompt exactly as the teacher's own run conditions on it (its
template, chat framing and tokenizer: the featurizer's `generation_example`), and returns the
records with the answer as their target text. `write_targets` stores them as a JSONL data
source (`prompt`, `text`, or `messages` with the last assistant turn replaced), which any
student then trains on with its own tokenizer and template: the exchange is text, so teacher
and student need not share a vocabulary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftjax.generate.api import decode_prompts
from ftjax.io.atomic_dir import atomic_file


def teacher_targets(model, params, tokenizer: Any, source, split: str, *, batch_size: int = 32,
                    max_new_tokens: int = 128, num_beams: int = 1, length_penalty: float = 1.0,
                    limit: int = 0) -> list[dict]:
    """The records of `source`'s `split` (the first `limit`; 0: all) with their target text
    replaced by the teacher's greedy (or beam-searched) answer."""
    if split not in source.splits:
        raise ValueError(f"source {source.name!r} has no {split!r} split (it has "
                         f"{sorted(source.splits)})")
    records = list(source.splits[split])
    if limit:
        records = records[:limit]
    featurizer = source.task.featurizer(tokenizer)
    prompts = [featurizer.generation_example(r, f"{source.name} {split} record {i}")[0]
               for i, r in enumerate(records)]
    answers = decode_prompts(model, params, tokenizer, prompts, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, num_beams=num_beams,
                             length_penalty=length_penalty)
    return [_with_target(dict(record), answer) for record, answer in zip(records, answers)]


def _with_target(record: dict, answer: str) -> dict:
    if "messages" in record:  # a conversation: the teacher speaks its last turn
        messages = [dict(m) for m in record["messages"]]
        messages[-1]["content"] = answer
        return {**record, "messages": messages}
    return {**record, "text": answer}


def write_targets(rows: Sequence[dict], out: str | os.PathLike, *,
                  overwrite: bool = False) -> Path:
    """The rows as a JSONL data source at `out`, written whole or not at all."""
    out = Path(out)
    with atomic_file(out, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out
