"""Augmentation as deterministic record transforms, WordNet synonyms from the real asset, and
the robustness evaluation (perturbed accuracy, the greedy word-substitution attack)."""

import json
from collections import Counter

import numpy as np
import pytest

from ftjax.assets import resolve
from ftjax.cli import main
from ftjax.data.augment import (
    NEIGHBOURS,
    AugmentConfig,
    AugmentedRecords,
    PerturbedRecords,
    char_noise,
    delete_words,
    draws,
    perturb_text,
    replace_synonyms,
    swap_words,
)
from ftjax.data.errors import DataError
from ftjax.data.wordnet import Synonyms
from ftjax.settings import ConfigError
from ftjax.train.config import load_config
from ftjax.train.loop import train
from ftjax.train.robustness import RobustnessConfig, attack

TEXT = "The movie is a wonderful, funny and moving story about a boring town."


@pytest.fixture(scope="module")
def synonyms():
    return Synonyms(resolve("wordnet"))


def test_wordnet_synonyms_come_from_the_words_most_used_senses(synonyms):
    assert {"film", "picture", "flick"} <= set(synonyms("movie"))
    assert {"dull", "tedious"} <= set(synonyms("boring"))
    assert synonyms("Movie") == synonyms("movie")
    assert synonyms("the") == () and synonyms("qwxzv") == ()
    # Fewer senses, fewer synonyms: the first sense's lemmas come first.
    one = Synonyms(resolve("wordnet"), senses=1)
    assert set(one("funny")) < set(synonyms("funny"))
    assert synonyms("funny")[:len(one("funny"))] == one("funny")


def test_word_operations_keep_what_they_promise(synonyms):
    words = TEXT.split()
    rng = draws(0, 0, 0)
    swapped = swap_words(words, 0.2, rng)
    assert Counter(swapped) == Counter(words) and swapped != words
    for seed in range(20):
        kept = delete_words(words, 0.3, draws(seed, 0, 0))
        assert kept and all(w in words for w in kept)
        rest = iter(words)
        assert all(any(w == v for v in rest) for w in kept)  # a subsequence: order kept
    assert delete_words(["alone"], 0.9, rng) == ["alone"]
    replaced = replace_synonyms(words, 0.2, draws(1, 0, 0), synonyms)
    assert len(replaced) == len(words)
    changed = [(a, b) for a, b in zip(words, replaced) if a != b]
    assert len(changed) == round(0.2 * len(words))
    for old, new in changed:  # a WordNet synonym, punctuation and case kept
        core = old.strip(",.")
        assert new.strip(",.").lower() in {s.lower() for s in synonyms(core)}
        assert new.endswith(",") == old.endswith(",")


def test_character_noise_hits_letters_at_its_rate():
    text = "abcdefghij klmnopqrst " * 50
    letters = sum(c.isalpha() for c in text)
    dropped = char_noise(text, "char_drop", 0.1, draws(0, 0, 0))
    assert 0.07 < 1 - sum(c.isalpha() for c in dropped) / letters < 0.13
    assert dropped.count(" ") == text.count(" ")  # only letters are hit
    typos = char_noise(text, "typo", 0.1, draws(0, 0, 0))
    assert len(typos) == len(text)
    for a, b in zip(text, typos):
        assert a == b or b in NEIGHBOURS[a]
    swapped = char_noise(text, "char_swap", 0.1, draws(0, 0, 0))
    assert sorted(swapped) == sorted(text) and swapped != text
    assert char_noise(text, "chars", 0.1, draws(3, 0, 0)) != text


def test_augmented_records_are_random_access_and_the_same_every_time(synonyms):
    base = [{"text": f"{TEXT} number {i}", "label": i % 2} for i in range(7)]
    config = AugmentConfig(ops=("eda", "chars"), copies=3, seed=5)
    first = AugmentedRecords(base, config, synonyms)
    again = AugmentedRecords(base, config, synonyms)
    assert len(first) == 28
    assert [first[i] for i in range(28)] == [again[i] for i in reversed(range(28))][::-1]
    assert [first[i * 4] for i in range(7)] == base  # each record itself, then its copies
    copies = [first[i] for i in range(28) if i % 4]
    assert all(c["label"] == base[i // 4]["label"] for i, c in zip(
        [i for i in range(28) if i % 4], copies))
    assert sum(c["text"] != base[0]["text"] for c in copies[:3]) >= 2
    other_seed = AugmentedRecords(base, AugmentConfig(ops=("eda", "chars"), copies=3, seed=6),
                                  synonyms)
    assert [other_seed[i] for i in range(28)] != [first[i] for i in range(28)]
    without = AugmentedRecords(base, AugmentConfig(ops=("swap",), copies=2,
                                                   keep_original=False))
    assert len(without) == 14 and without[0] != base[0]
    with pytest.raises(DataError, match="text fields"):
        AugmentedRecords([{"tokens": ["a"], "tags": ["O"]}], AugmentConfig(ops=("swap",)))[1]
    with pytest.raises(ValueError, match="synonyms"):
        AugmentedRecords(base, AugmentConfig(ops=("synonym",)))
    # Perturbed copies for evaluation: one per record, seeded per record.
    perturbed = PerturbedRecords(base, "typo", 0.2, seed=1)
    assert len(perturbed) == 7 and perturbed[3] == PerturbedRecords(base, "typo", 0.2, 1)[3]
    assert perturb_text("", "swap", 0.5, draws(0, 0, 0)) == ""


def test_bad_augment_and_robustness_settings_are_refused(tiny_config_file):
    for override, message in [("data.augment.ops=('shuffle',)", "ops"),
                              ("data.augment.rate=0", "rate"),
                              ("data.augment.copies=0", "copies"),
                              ("robustness.perturbations=('chars',)", "OP@RATE"),
                              ("robustness.perturbations=('chars@2',)", "OP@RATE")]:
        with pytest.raises(ConfigError, match=message):
            load_config(tiny_config_file, [override])


class _Keyword:
    """A stand-in classifier: positive exactly when the text holds one of `words`."""

    def __init__(self, words):
        self.words, self.calls = set(words), 0

    def __call__(self, params, records):
        self.calls += len(records)
        pos = np.array([any(w.strip(",.").lower() in self.words for w in r["text"].split())
                        for r in records], np.float64)
        probs = np.stack([1 - 0.8 * pos - 0.1, 0.8 * pos + 0.1], -1)
        return probs, np.array([r["label"] for r in records])


def test_the_attack_swaps_the_most_important_word_within_its_budget():
    lookup = {"good": ("full", "estimable"), "film": ("movie",)}.get

    def synonyms(word):
        return lookup(word.lower(), ())

    record = {"text": "The film was good.", "label": 1}
    classify = _Keyword({"good"})
    result = attack(classify, None, [record, {"text": "a film", "label": 0}], synonyms,
                    budget=50)
    # Deleting each word (4 queries) finds "good"; its first synonym flips the prediction.
    assert result.right_before == 2 and result.flipped == 1
    assert result.queries == [4 + 2] and result.changed_share == [0.25]
    metrics = result.metrics()
    assert metrics["attack/accuracy"] == 0.5 and metrics["attack/success_rate"] == 0.5
    # Within a budget of the deletions alone there is no substitution: no success.
    assert attack(_Keyword({"good"}), None, [record], synonyms, budget=4).flipped == 0
    # A word without synonyms cannot be attacked.
    assert attack(_Keyword({"was"}), None, [{"text": "it was", "label": 1}], synonyms,
                  budget=50).flipped == 0


def test_a_run_trains_on_augmented_data_and_reports_robustness(tiny_config_file, tmp_path):
    workdir = tmp_path / "run"
    result = train(load_config(tiny_config_file, [
        "steps=2", "eval_every=2", "checkpoint_every=2", "data.augment.ops=('swap', 'chars')",
        "data.augment.copies=2", "robustness.perturbations=('chars@0.1', 'swap@0.3')",
        "robustness.attack_examples=4"]), workdir, quiet=True)
    source = result.experiment.sources[0]
    assert len(source.splits["train"]) == 3 * 96 == source.num_train
    test = json.loads((workdir / "results.json").read_text())["eval"]["test"]
    for key in ("robust/chars@0.1/accuracy", "robust/swap@0.3/accuracy", "attack/accuracy",
                "attack/success_rate"):
        assert 0.0 <= test[key] <= 1.0
    assert test["attack/examples"] == 4.0
    assert "robust/chars@0.1/accuracy" not in json.loads(
        (workdir / "results.json").read_text())["eval"]["validation"]  # test split only
    # The command measures a finished run again, the same way.
    code = main(["robustness", str(tiny_config_file), "--workdir", str(workdir),
                 "--perturb", "chars@0.1"])
    assert code == 0
    again = json.loads((workdir / "robustness-test.json").read_text())["metrics"]
    assert again["robust/chars@0.1/accuracy"] == test["robust/chars@0.1/accuracy"]
