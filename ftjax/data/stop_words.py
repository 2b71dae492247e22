"""English stop words: the words synonym replacement and synonym attacks leave alone.

The list is scikit-learn's (the Glasgow Information Retrieval Group's 318 words). Importing
scikit-learn takes about 0.9 s (it loads scipy and pandas), paid by every `ftjax` start that
imports the data package; most runs replace no synonyms, so the list is read on first use.
"""

from __future__ import annotations

import functools


@functools.cache
def english_stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS  # first use only (see above)

    return frozenset(ENGLISH_STOP_WORDS)


def is_stop_word(word: str) -> bool:
    """Whether `word` (any case) is an English stop word."""
    return word.lower() in english_stop_words()
