"""English Bible paraphrase pairs: King James Version against World English Bible (pysword).

Sentence-pair classification rows {"text": KJV verse, "text_pair": WEB text, "label", "book",
"chapter", "verse"}: for each kept reference a positive (label 1: the WEB text of the same verse)
and a negative (label 0: the WEB text of another verse of the same book, drawn with
`np.random.default_rng(0)`, so topic words overlap and the task is not trivial). The KJV text
always comes first; `book` (OSIS name) is the unit a held-out split groups by.

Traps (checked against both whole modules):

- Versification: `engKJV2006eb` has the 66 books of the KJV, `engWEB2015eb` NRSVA with the
  deuterocanon (+6,689 references). Only references both have are read, so the 66 books.
- Markup: pysword's `clean=True` glues words where the WEB has a footnote ("Godcreated"), so
  verses are read raw and cleaned here (`clean_verse`: notes dropped with their contents, other
  tags unwrapped). Before that, text one Bible has and the other lacks is cut: the KJV's
  epistle subscriptions (non-canonical titles), Psalm 119's acrostic letters (titles in
  capitals, spelt "ב BETH." in one and "BETH" in the other), the WEB's speaker labels in the
  Song of Songs, and the WEB's glossary, which sits in Rev 22:21. The Psalms' superscriptions
  ("A Psalm of David, ...") are verse text in both and are kept.
- Empty verses: the WEB leaves 7 verses empty that the KJV has (Luke 17:36, Acts 8:37, 15:34,
  24:7, Rom 16:25-27): 31,095 references have text in both.
- Misalignment: pairs whose lengths differ by more than a factor of 2.5 are dropped. That drops
  2: 1 John 5:7 (the KJV's Comma Johanneum) and Rom 14:23 (the WEB ends it with the doxology the
  KJV has as Rom 16:25-27).

Result: 31,093 references in 66 books, 62,186 rows: 31,093 positives and 31,093 negatives (a
negative's WEB text is never one that a verse with the same KJV text pairs with, so verses
repeated word for word do not make a false negative).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pysword.modules import SwordModules

from ftjax.assets.bible import clean_verse

KJV, WEB = "engKJV2006eb", "engWEB2015eb"
MAX_LENGTH_RATIO = 2.5
SEED = 0
OUTPUT = "bible-paraphrase.jsonl"


class Verse(NamedTuple):
    book: str  # OSIS name
    chapter: int
    verse: int
    kjv: str
    web: str


def _superscription_only(title: re.Match) -> str:
    """A title kept if it is a Psalm's superscription (canonical, in words), else a space."""
    words = re.sub(r"<[^>]+>", "", title.group(0))
    keep = 'canonical="true"' in title.group(1) and re.search(r"[a-z]", words)
    return title.group(0) if keep else " "


def paraphrase_text(markup: str) -> str:
    """A verse's plain text without what only one of the two Bibles has (see the module doc)."""
    text = re.sub(r'<div\b[^>]*type="glossary".*', " ", markup, flags=re.S)
    text = re.sub(r"<title\b([^>]*)>.*?</title>", _superscription_only, text, flags=re.S)
    text = re.sub(r"<speaker\b.*?</speaker>", " ", text, flags=re.S)
    return clean_verse(text)


def _references(bible) -> dict:
    """{(book name, chapter, verse): the book's OSIS name} of every reference in a Bible's
    versification."""
    refs = {}
    for books in bible.get_structure().get_books().values():
        for book in books:
            for chapter, length in enumerate(book.chapter_lengths, 1):
                for verse in range(1, length + 1):
                    refs[book.name, chapter, verse] = book.osis_name
    return refs


def read_verses(sword_root: Path):
    """Every reference both Bibles have, with text in both, in the KJV's canonical order."""
    modules = SwordModules(str(sword_root))
    modules.parse_modules()
    kjv, web = (modules.get_bible_from_module(m) for m in (KJV, WEB))
    web_refs = _references(web)
    for (name, chapter, verse), osis in _references(kjv).items():
        if (name, chapter, verse) not in web_refs:
            continue
        texts = [paraphrase_text(bible.get(books=[name], chapters=[chapter], verses=[verse],
                                           clean=False)) for bible in (kjv, web)]
        if all(texts):
            yield Verse(osis, chapter, verse, *texts)


def similar_length(verse: Verse, max_ratio: float = MAX_LENGTH_RATIO) -> bool:
    """Whether the two texts' character lengths are within a factor `max_ratio`: a larger
    difference means one holds text the other lacks (another verse, back matter)."""
    return 1 / max_ratio <= len(verse.web) / len(verse.kjv) <= max_ratio


def pair_rows(verses: list[Verse], rng: np.random.Generator):
    """A positive and a negative row per verse (see the module doc), in the verses' order.

    The negative's WEB text comes from another verse of the same book, and is never a WEB text
    that some verse pairs with this verse's KJV text (a refrain repeated word for word would
    otherwise make a false negative); a verse with no such partner gets no negative.
    """
    by_book: dict[str, list[Verse]] = {}
    translations: dict[tuple[str, str], set[str]] = {}
    for verse in verses:
        by_book.setdefault(verse.book, []).append(verse)
        translations.setdefault((verse.book, verse.kjv), set()).add(verse.web)
    for book_verses in by_book.values():
        for verse in book_verses:
            ref = {"book": verse.book, "chapter": verse.chapter, "verse": verse.verse}
            yield {"text": verse.kjv, "text_pair": verse.web, "label": 1, **ref}
            same = translations[verse.book, verse.kjv]
            others = [o for o in book_verses if o.web not in same]
            if others:
                other = others[rng.integers(len(others))]
                yield {"text": verse.kjv, "text_pair": other.web, "label": 0, **ref}


def build_bible_paraphrase(tree: Path) -> None:
    """Write `tree`/bible-paraphrase.jsonl from the SWORD modules under `tree`/usr/share/sword."""
    verses = [v for v in read_verses(tree / "usr" / "share" / "sword") if similar_length(v)]
    with open(tree / OUTPUT, "w", encoding="utf-8") as out:
        for row in pair_rows(verses, np.random.default_rng(SEED)):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
