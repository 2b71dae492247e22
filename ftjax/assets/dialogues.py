"""Chitchat dialogues (chitchat-dataset, MIT) as chat conversations, one JSON line each.

The package's `dataset.json` maps a conversation id to `messages`: a list of turns, each a list of
utterances by one sender, senders alternating. A conversation becomes
`{"id", "messages": [{"role", "content"}, ...]}`: the first sender is the user, the other the
assistant, each turn's utterances joined by newlines (empty ones dropped). Conversations with
fewer than two turns (3,150 are one "hi there") have no reply to learn and are left out; a
conversation that ends on the user's turn loses that last turn, so every one ends with the
assistant's (generation is scored against it).
"""

from __future__ import annotations

import json
from pathlib import Path

OUTPUT = "chitchat.jsonl"


def conversation(turns: list[list[dict]]) -> list[dict]:
    """Chat messages of one conversation's turns (see the module doc)."""
    messages = []
    for i, turn in enumerate(turns):
        text = "\n".join(u["text"].strip() for u in turn if u.get("text", "").strip())
        if text:
            messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    # Dropped empty turns may leave two turns of one role together: merge them.
    merged: list[dict] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n" +
                          message["content"]}
        else:
            merged.append(message)
    while merged and merged[-1]["role"] != "assistant":
        merged.pop()
    return merged


def build_chitchat(tree: Path) -> None:
    """Write `tree`/chitchat.jsonl from the unpacked wheel's chitchat_dataset/dataset.json."""
    data = json.loads((tree / "chitchat_dataset" / "dataset.json").read_text(encoding="utf-8"))
    with open(tree / OUTPUT, "w", encoding="utf-8") as out:
        for uuid in sorted(data):
            messages = conversation(data[uuid]["messages"])
            if len(messages) >= 2:
                out.write(json.dumps({"id": uuid, "messages": messages}, ensure_ascii=False)
                          + "\n")
