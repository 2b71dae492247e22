"""Synonyms from WordNet 3.0 (the `wordnet` asset: Debian's wordnet-base database files), read
by nltk's WordNet reader in place.

A word's synonyms are the lemmas of its most used senses: all of a word's senses together are
noisy ("good" -> commodity, dear), so the senses are ranked by how often the word was tagged
with each (WordNet's cntlist counts, which nltk exposes as Lemma.count()) and the first
`senses` that offer another lemma are kept. Multi-word lemmas ("motion_picture") are given with spaces.
"""

from __future__ import annotations

import functools
import threading
import warnings
from pathlib import Path

from ftjax.data.errors import DataError

@functools.cache
def _reader_class() -> type:
    """nltk's WordNet reader, without the Open Multilingual Wordnet.

    nltk is imported here, when a run first asks for synonyms, not with the data package: with
    the scikit-learn and scipy it imports it takes about 1.2 s, which every start would
    otherwise pay.
    """
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNetReader(WordNetCorpusReader):
        # nltk maps synsets to the release of its own downloadable `wordnet` corpus for OMW's
        # multilingual data, which needs that corpus installed; no OMW reader is given here,
        # so there is nothing to map.
        def map_wn(self, version="wordnet"):
            return None

    return WordNetReader


def _open_wordnet(root: Path):
    """A reader of the WordNet database files in `root` (checked by the caller)."""
    import nltk.data  # see _reader_class

    # nltk reads corpora only under the roots listed in nltk.data.path (its path sandbox):
    # the database directory is authorized once, by its resolved path.
    resolved = str(root.resolve())
    if resolved not in nltk.data.path:
        nltk.data.path.append(resolved)
    with warnings.catch_warnings():  # "multilingual functions are not available": none asked
        warnings.simplefilter("ignore", UserWarning)
        return _reader_class()(resolved, None)


WORDNET_FILES = ("index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj")


class Synonyms:
    """word -> synonyms (most used senses first), cached per word."""

    def __init__(self, root: str | Path, senses: int = 2):
        root = Path(root)
        missing = [name for name in WORDNET_FILES if not (root / name).is_file()]
        if missing:
            raise DataError(f"{root}: not a WordNet database directory (missing "
                            f"{', '.join(missing)}); fetch the `wordnet` asset")
        if senses < 1:
            raise ValueError(f"senses must be >= 1, got {senses}")
        self._reader = _open_wordnet(root)
        self.senses = senses
        # The reader seeks in shared file handles: the data pipeline's reader threads take
        # turns with it.
        self._lock = threading.Lock()
        self._lookup = functools.lru_cache(maxsize=65536)(self._synonyms)

    def __call__(self, word: str) -> tuple[str, ...]:
        return self._lookup(word.lower())

    def _synonyms(self, word: str) -> tuple[str, ...]:
        with self._lock:
            synsets = self._reader.synsets(word)
            lemmas = [[(lemma.name(), lemma.count()) for lemma in s.lemmas()] for s in synsets]
        ranked = []
        for order, names in enumerate(lemmas):
            count = sum(c for name, c in names if name.lower() == word)
            ranked.append((-count, order, names))
        out: dict[str, None] = {}
        used = 0
        for _, _, names in sorted(ranked, key=lambda r: r[:2]):
            names = [name.replace("_", " ") for name, _ in names]
            names = [name for name in names if name.lower() != word]
            if names:  # a sense whose only lemma is the word itself offers nothing
                out.update(dict.fromkeys(names))
                used += 1
                if used == self.senses:
                    break
        return tuple(out)
