"""ftjax.generate.scoring against sacrebleu's documented example (its README)."""

from __future__ import annotations

import pytest

from ftjax.generate.scoring import bleu_chrf

# sacrebleu README: refs are given there as streams (one per reference slot).
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]


def test_documented_example_values():
    per_hypothesis = [list(refs) for refs in zip(*REFS)]
    scores = bleu_chrf(HYPS, per_hypothesis)
    assert round(scores["bleu"], 2) == 48.53  # "BLEU = 48.53 82.4/50.0/45.5/37.5 ..."
    assert round(scores["chrf"], 2) == 59.73  # "chrF2 = 59.73"


def test_single_references_and_errors():
    perfect = bleu_chrf(["a b c d e"], ["a b c d e"])
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    with pytest.raises(ValueError, match="hypotheses but"):
        bleu_chrf(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="same number"):
        bleu_chrf(["a", "b"], [["a"], ["b", "c"]])
    with pytest.raises(TypeError):
        bleu_chrf("a b", ["a b"])
