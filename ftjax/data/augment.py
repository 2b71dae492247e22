"""Text augmentation and perturbation as deterministic record transforms.

Word operations (EDA, Wei & Zou 2019), each changing about `rate` of a text's words (at least
one):
  synonym  replace words by a WordNet synonym (stop words and words without one are kept)
  insert   insert a synonym of a random word at a random place
  swap     swap two random words
  delete   delete each word with probability `rate` (one word always stays)
  eda      one of the four above, drawn per copy
Character operations (noise: typing errors), each letter hit with probability `rate`:
  typo     replaced by a neighbour on a QWERTY keyboard (case kept)
  char_drop / char_swap  dropped / swapped with the next letter
  chars    one of the three, drawn per letter

Every draw comes from a generator seeded by (seed, record index, copy), so an augmented split is
random access and the same in every run and every resumed run: `AugmentedRecords` holds
`copies` augmented versions of each record (and the record itself unless keep_original is
False), each built when read. The same operations perturb evaluation splits
(`PerturbedRecords`: one perturbed copy per record), for robustness evaluation.

Augmentation changes the `text` and `text_pair` fields of classification and language-model
records; whether a label survives the change is the user's call (EDA's finding: it mostly does
at small rates).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ftjax.data.errors import DataError
from ftjax.data.stop_words import is_stop_word
from ftjax.data.types import Record, RecordSource
from ftjax.settings import setting

WORD_OPS = ("synonym", "insert", "swap", "delete")
CHAR_OPS = ("typo", "char_drop", "char_swap")
OPS = (*WORD_OPS, "eda", *CHAR_OPS, "chars")
TEXT_FIELDS = ("text", "text_pair")
_NEEDS_SYNONYMS = ("synonym", "insert", "eda")
_KEYBOARD = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_WORD = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def _keyboard_neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row and the rows above / below)."""
    where = {c: (r, i) for r, row in enumerate(_KEYBOARD) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in where.items():
        out[c] = "".join(d for d, (r2, i2) in where.items()
                         if d != c and abs(r2 - r) <= 1 and abs(i2 - i) <= 1)
    return out


NEIGHBOURS = _keyboard_neighbours()


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmented copies of a source's train records (the `augment` block of a source)."""

    ops: tuple[str, ...] = setting((), "the operations a copy is drawn from: synonym | insert "
                                   "| swap | delete | eda | typo | char_drop | char_swap | "
                                   "chars (ftjax.data.augment); () augments nothing")
    rate: float = setting(0.1, "the share of words (word operations) or the probability per "
                          "letter (character operations) changed")
    copies: int = setting(1, "augmented copies of each train record")
    keep_original: bool = setting(True, "keep each record beside its copies")
    seed: int = setting(0, "the draws of every copy come from (seed, record, copy)")
    wordnet: str = setting("wordnet", "synonyms' WordNet database: the asset name or a "
                           "directory holding its files")
    senses: int = setting(2, "a word's synonyms come from its most used senses, this many")

    def __post_init__(self):
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"ops {unknown} are not among {OPS}")
        if not (math.isfinite(self.rate) and 0 < self.rate <= 1):
            raise ValueError(f"rate must lie in (0, 1], got {self.rate}")
        if self.copies < 1:
            raise ValueError(f"copies must be >= 1, got {self.copies}")
        if self.senses < 1:
            raise ValueError(f"senses must be >= 1, got {self.senses}")

    @property
    def enabled(self) -> bool:
        return bool(self.ops)

    @property
    def needs_synonyms(self) -> bool:
        return any(op in _NEEDS_SYNONYMS for op in self.ops)


SynonymLookup = Callable[[str], tuple[str, ...]]


def split_word(word: str) -> tuple[str, str, str]:
    """(leading punctuation, the word, trailing punctuation)."""
    return _WORD.match(word).groups()


def with_case(new: str, old: str) -> str:
    return new[:1].upper() + new[1:] if old[:1].isupper() else new


def _candidates(words: list[str], synonyms: SynonymLookup) -> list[int]:
    """Indices of words that are not stop words and have a synonym."""
    out = []
    for i, word in enumerate(words):
        core = split_word(word)[1]
        if core.isalpha() and not is_stop_word(core) and synonyms(core):
            out.append(i)
    return out


def _count(words: list[str], rate: float) -> int:
    return max(1, int(round(rate * len(words))))


def replace_synonyms(words, rate, rng, synonyms) -> list[str]:
    words = list(words)
    candidates = _candidates(words, synonyms)
    chosen = rng.permutation(len(candidates))[:_count(words, rate)] if candidates else []
    for c in chosen:
        i = candidates[c]
        lead, core, trail = split_word(words[i])
        options = synonyms(core)
        words[i] = lead + with_case(options[rng.integers(len(options))], core) + trail
    return words


def insert_synonyms(words, rate, rng, synonyms) -> list[str]:
    words = list(words)
    candidates = _candidates(words, synonyms)
    if not candidates:
        return words
    for _ in range(_count(words, rate)):
        options = synonyms(split_word(words[candidates[rng.integers(len(candidates))]])[1])
        words.insert(int(rng.integers(len(words) + 1)), options[rng.integers(len(options))])
        candidates = _candidates(words, synonyms)  # the insertion moved them
    return words


def swap_words(words, rate, rng, synonyms=None) -> list[str]:
    words = list(words)
    if len(words) < 2:
        return words
    for _ in range(_count(words, rate)):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def delete_words(words, rate, rng, synonyms=None) -> list[str]:
    if len(words) <= 1:
        return list(words)
    keep = rng.random(len(words)) >= rate
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return [w for w, k in zip(words, keep) if k]


WORD_FUNCTIONS = {"synonym": replace_synonyms, "insert": insert_synonyms, "swap": swap_words,
                  "delete": delete_words}


def _typo(c: str, rng) -> str:
    options = NEIGHBOURS.get(c.lower())
    if not options:
        return c
    new = options[rng.integers(len(options))]
    return new.upper() if c.isupper() else new


def char_noise(text: str, op: str, rate: float, rng) -> str:
    """Each letter of `text` hit with probability `rate` by `op` (typo, char_drop, char_swap,
    or chars: one of them per letter)."""
    chars, out, i = list(text), [], 0
    hits = rng.random(len(chars)) < rate
    kinds = rng.integers(len(CHAR_OPS), size=len(chars))
    while i < len(chars):
        c = chars[i]
        if not (hits[i] and c.isalpha()):
            out.append(c)
            i += 1
            continue
        kind = CHAR_OPS[kinds[i]] if op == "chars" else op
        if kind == "typo":
            out.append(_typo(c, rng))
        elif kind == "char_swap" and i + 1 < len(chars) and chars[i + 1].isalpha():
            out += [chars[i + 1], c]
            i += 1
        elif kind == "char_swap":
            out.append(c)
        # char_drop: nothing appended
        i += 1
    return "".join(out)


def perturb_text(text: str, op: str, rate: float, rng: np.random.Generator,
                 synonyms: SynonymLookup | None = None) -> str:
    """`text` changed by one operation (see the module docstring)."""
    if op == "eda":
        op = WORD_OPS[rng.integers(len(WORD_OPS))]
    if op in WORD_FUNCTIONS:
        if op in _NEEDS_SYNONYMS and synonyms is None:
            raise ValueError(f"operation {op!r} needs synonyms (a WordNet database)")
        words = text.split()
        return " ".join(WORD_FUNCTIONS[op](words, rate, rng, synonyms)) if words else text
    if op in CHAR_OPS or op == "chars":
        return char_noise(text, op, rate, rng)
    raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")


def draws(seed: int, index: int, copy: int) -> np.random.Generator:
    """The generator of copy `copy` of record `index`: the same in every run."""
    return np.random.default_rng([seed, index, copy])


def perturb_record(record: Record, ops: tuple[str, ...], rate: float,
                   rng: np.random.Generator, synonyms: SynonymLookup | None) -> dict:
    """The record with its text fields perturbed by one operation drawn from `ops`."""
    fields = [f for f in TEXT_FIELDS if isinstance(record.get(f), str)]
    if not fields:
        raise DataError(f"augmentation changes the text fields {TEXT_FIELDS}; a record has "
                        f"{sorted(record)}")
    op = ops[rng.integers(len(ops))]
    return {**record, **{f: perturb_text(record[f], op, rate, rng, synonyms) for f in fields}}


class AugmentedRecords:
    """`base` with `copies` augmented copies of every record, built when read: index
    i * per + 0 is record i itself (keep_original), the others its copies."""

    def __init__(self, base: RecordSource, config: AugmentConfig,
                 synonyms: SynonymLookup | None = None):
        if config.needs_synonyms and synonyms is None:
            raise ValueError(f"ops {config.ops} need synonyms (a WordNet database)")
        self.base, self.config, self.synonyms = base, config, synonyms
        self.per = config.copies + int(config.keep_original)

    def __len__(self) -> int:
        return len(self.base) * self.per

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < len(self):
            raise IndexError(index)
        record, slot = divmod(int(index), self.per)
        original = self.base[record]
        if self.config.keep_original and slot == 0:
            return original
        copy = slot - int(self.config.keep_original)
        cfg = self.config
        return perturb_record(original, cfg.ops, cfg.rate, draws(cfg.seed, record, copy),
                              self.synonyms)


class PerturbedRecords:
    """One perturbed copy of every record of `base` (robustness evaluation)."""

    def __init__(self, base: RecordSource, op: str, rate: float, seed: int = 0,
                 synonyms: SynonymLookup | None = None):
        self.base, self.op, self.rate, self.seed, self.synonyms = base, op, rate, seed, synonyms

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Record:
        return perturb_record(self.base[index], (self.op,), self.rate,
                              draws(self.seed, int(index), 0), self.synonyms)


def check_augmentable(records: Mapping[str, Any], where: str) -> None:
    """A source whose records have no text field to augment, named before training."""
    if not any(isinstance(records.get(f), str) for f in TEXT_FIELDS):
        raise DataError(f"{where}: augmentation changes the text fields {TEXT_FIELDS}; its "
                        f"records have {sorted(records)}")
