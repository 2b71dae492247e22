"""Scoring generated text against references with sacrebleu: corpus BLEU and chrF.

sacrebleu's defaults (13a tokenization, exponential smoothing; chrF with n-gram order 6 and
beta 2, no word n-grams) make the numbers comparable with papers that report sacrebleu.
"""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def _reference_streams(hypotheses: Sequence[str],
                       references: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout, one stream per reference slot: streams[j][i] is hypothesis i's j-th
    reference. `references[i]` is one string or a list of strings (the same count for every
    hypothesis)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: give "
                         f"one reference (or one list of references) per hypothesis")
    per_hypothesis = [[r] if isinstance(r, str) else list(r) for r in references]
    counts = {len(refs) for refs in per_hypothesis}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"every hypothesis needs the same number (>= 1) of references, got "
                         f"{sorted(counts)}")
    return [list(stream) for stream in zip(*per_hypothesis)]


def bleu_chrf(hypotheses: Sequence[str],
              references: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, float]:
    """{"bleu": corpus BLEU, "chrf": corpus chrF}, both on sacrebleu's 0-100 scale.

    hypotheses: one generated string per example.
    references: per example, its reference string or a list of references.
    """
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of strings, not one string")
    hypotheses = list(hypotheses)
    streams = _reference_streams(hypotheses, references)
    return {
        "bleu": float(sacrebleu.corpus_bleu(hypotheses, streams).score),
        "chrf": float(sacrebleu.corpus_chrf(hypotheses, streams).score),
    }
