"""Spanish -> English Bible verse pairs read out of two SWORD modules (pysword).

The Reina-Valera 1909 (`spaRV1909eb`) and the King James Version (`engKJV2006eb`) are keyed by
the same (book, chapter, verse) references, but the alignment has two traps (checked against
the whole text):

- Markup: every word sits in a `<w lemma=...>` element, both add `transChange` (the Spanish
  without spaces around it), the KJV `divineName`, `title`, `note` and the pilcrow. pysword's own cleaning also drops the KJV's
  Psalm titles and epistle subscriptions, which the Spanish has as text, so notes are removed
  with their contents and every other tag is stripped, keeping its text.
- Versification: the Spanish keeps its own verse splits in KJV slots. After each of its empty
  verses the rest of the chapter, or the next chapter, is shifted by one verse (Jonah 2:1 in
  Spanish is KJV 1:17). A chapter holding an empty verse is dropped with the chapter after it.

Pairs whose character lengths differ by more than a factor of two are dropped as misaligned.
Each kept pair is one JSON line: {"book", "testament", "chapter", "verse", "es", "en"}, in
canonical order; `book` is the OSIS name (Gen, Exod, ... Rev), the unit a held-out split uses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pysword.modules import SwordModules

SPANISH, ENGLISH = "spaRV1909eb", "engKJV2006eb"
MAX_LENGTH_RATIO = 2.0
OUTPUT = "bible-es-en.jsonl"


def clean_verse(markup: str) -> str:
    """A verse's text without SWORD markup: notes dropped whole, other tags unwrapped."""
    text = re.sub(r"<note\b.*?</note>", " ", markup, flags=re.S)
    # The Spanish writes translator's additions flush against the words around them.
    text = re.sub(r"</?transChange\b[^>]*>", " ", text)
    text = re.sub(r"<[^>]+>", "", text).replace("\u00b6", "")
    text = re.sub(r"\s+([,.;:!?)])", r"\1", re.sub(r"\s+", " ", text))
    return text.strip()


def aligned_pairs(sword_root: Path):
    """(book, testament, chapter, verse, es, en) of every kept verse, in canonical order."""
    modules = SwordModules(str(sword_root))
    modules.parse_modules()
    spanish, english = (modules.get_bible_from_module(m) for m in (SPANISH, ENGLISH))
    for testament, books in english.get_structure().get_books().items():
        for book in books:
            chapters = []
            for chapter in range(1, book.num_chapters + 1):
                verses = []
                for verse in range(1, book.chapter_lengths[chapter - 1] + 1):
                    es, en = (clean_verse(bible.get(books=[book.name], chapters=[chapter],
                                                    verses=[verse], clean=False))
                              for bible in (spanish, english))
                    verses.append((verse, es, en))
                chapters.append(verses)
            shifted = set()
            for index, verses in enumerate(chapters):
                if any(not es for _, es, _ in verses):
                    shifted |= {index, index + 1}
            for index, verses in enumerate(chapters):
                if index in shifted:
                    continue
                for verse, es, en in verses:
                    if es and en and 1 / MAX_LENGTH_RATIO <= len(es) / len(en) <= MAX_LENGTH_RATIO:
                        yield book.osis_name, testament, index + 1, verse, es, en


def build_bible_pairs(tree: Path) -> None:
    """Write `tree`/bible-es-en.jsonl from the SWORD modules unpacked under `tree`/usr/share/sword."""
    keys = ("book", "testament", "chapter", "verse", "es", "en")
    with open(tree / OUTPUT, "w", encoding="utf-8") as out:
        for pair in aligned_pairs(tree / "usr" / "share" / "sword"):
            out.write(json.dumps(dict(zip(keys, pair)), ensure_ascii=False) + "\n")
