"""WordNet 3.0 from Debian's wordnet-base, completed for nltk's reader.

The package holds the database (`usr/share/wordnet`: data.*, index.*, *.exc, cntlist.rev) but
not `lexnames`, the list of the 45 lexicographer files that every WordNet reader opens
(nltk's included). The package's own manual page `lexnames.5WN` lists them, one table row
each (`NN<TAB>name<TAB>description`); the build step writes them in the database's format
(`NN name category`, category 1..4 for noun, verb, adj, adv).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

DATABASE = Path("usr") / "share" / "wordnet"
MANUAL = Path("usr") / "share" / "man" / "man5" / "lexnames.5WN.gz"
CATEGORIES = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_ROW = re.compile(r"^(\d\d)\t((noun|verb|adj|adv)\.\w+)\s*\t")


def lexnames_rows(manual_text: str) -> list[str]:
    """The `lexnames` lines from the manual page's table, in file-number order."""
    rows = [m.groups() for line in manual_text.splitlines() if (m := _ROW.match(line))]
    numbers = [int(number) for number, _, _ in rows]
    if numbers != list(range(len(rows))) or len(rows) != 45:
        raise ValueError(f"lexnames.5WN: expected files 00..44 in order, found {numbers}")
    return [f"{number}\t{name}\t{CATEGORIES[pos]}" for number, name, pos in rows]


def build_wordnet(root: Path) -> None:
    with gzip.open(root / MANUAL, "rt", encoding="utf-8") as f:
        rows = lexnames_rows(f.read())
    (root / DATABASE / "lexnames").write_text("\n".join(rows) + "\n", encoding="utf-8")
