"""Robustness of a trained classifier: accuracy on perturbed copies of a split, and a greedy
word-substitution attack with a query budget.

Perturbed accuracy: every record of the split perturbed once (ftjax.data.augment: character
noise at a rate, synonym swaps ...), seeded per record, scored like the clean split.

The attack (in the manner of TextFooler, Jin et al. 2020, with WordNet synonyms): for each
correctly classified example, every word's importance is the drop of the true class's
probability when the word is deleted; words are visited from the most important, each replaced
by the synonym that lowers that probability most, until the prediction changes (success) or
the query budget (texts scored, deletions included) is spent or the words run out (failure).
Reported: accuracy under attack (examples still right after it, over all attacked), the attack
success rate (flipped over those right before it), the mean share of words changed and the
mean queries of successful attacks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import parallel
from ftjax.data import make_eval_batches
from ftjax.data.augment import OPS, PerturbedRecords, SynonymLookup, split_word, with_case
from ftjax.data.bucketing import cut_to_bucket
from ftjax.data.stop_words import is_stop_word
from ftjax.objectives.inputs import model_inputs
from ftjax.settings import ConfigError, setting


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
    """Robustness evaluation of a classifier (the `robustness` block): run on the listed splits
    at every evaluation of them, and by `ftjax robustness` on a finished run."""

    perturbations: tuple[str, ...] = setting(
        (), "OP@RATE each (ops of ftjax.data.augment: chars@0.05, typo@0.1, synonym@0.2 ...):"
        " accuracy on a perturbed copy of the split")
    attack_examples: int = setting(0, "the first n examples of the split attacked by greedy "
                                   "word substitution (0: no attack)")
    attack_budget: int = setting(200, "texts the attack may score per example")
    splits: tuple[str, ...] = setting(("test",), "the splits measured")
    seed: int = setting(0, "the perturbations' draws (per record)")
    wordnet: str = setting("wordnet", "synonyms' WordNet database: asset name or directory")
    senses: int = setting(2, "a word's synonyms come from its most used senses, this many")

    def __post_init__(self):
        for entry in self.perturbations:
            self.parse(entry)
        if self.attack_examples < 0 or self.attack_budget < 1:
            raise ValueError(f"attack_examples must be >= 0 and attack_budget >= 1, got "
                             f"{self.attack_examples}, {self.attack_budget}")

    @staticmethod
    def parse(entry: str) -> tuple[str, float]:
        op, _, rate = entry.partition("@")
        try:
            value = float(rate)
        except ValueError:
            value = math.nan
        if op not in OPS or not 0 < value <= 1:
            raise ValueError(f"perturbation {entry!r}: expected OP@RATE with OP one of {OPS} "
                             f"and 0 < RATE <= 1")
        return op, value

    @property
    def enabled(self) -> bool:
        return bool(self.perturbations) or self.attack_examples > 0

    @property
    def needs_synonyms(self) -> bool:
        return self.attack_examples > 0 or any(
            self.parse(p)[0] in ("synonym", "insert", "eda") for p in self.perturbations)


class Classifier:
    """Class probabilities of records under given parameters, batched like evaluation (one
    compiled program per bucket length)."""

    def __init__(self, exp):
        if len(exp.sources) != 1 or exp.cfg.task.kind != "classification":
            raise ConfigError("robustness evaluation measures a single-source classification "
                              "run")
        self.exp = exp
        model = exp.model
        self._logits = jax.jit(lambda params, batch: model.apply(
            {"params": params}, batch["input_ids"], **model_inputs(batch, model)).logits)

    def __call__(self, params, records) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, C), label ids (N,)) of `records`, in their order."""
        exp = self.exp
        probs, labels = [], []
        # The attack scores a few texts at a time: batches of the next power of two (up to the
        # eval batch size) keep that cheap with a handful of compiled shapes.
        size = min(exp.cfg.eval_batch_size, max(1 << max(len(records) - 1, 0).bit_length(),
                                                 jax.device_count()))
        for batch in make_eval_batches(records, exp.sources[0].task, exp.tokenizer,
                                       batch_size=size):
            keep = np.asarray(batch["example_mask"]) > 0
            placed = parallel.place_batch(cut_to_bucket(batch, exp.buckets), exp.plan.batch,
                                          per_process=False)
            logits = np.asarray(parallel.fetch(self._logits(params, placed)))
            probs.append(np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))[keep])
            labels.append(np.asarray(batch["labels"])[keep])
        if not probs:
            return np.zeros((0, 0)), np.zeros((0,), np.int64)
        return np.concatenate(probs), np.concatenate(labels)


def perturbed_accuracy(classify: Classifier, params, records, op: str, rate: float,
                       seed: int, synonyms: SynonymLookup | None) -> float:
    probs, labels = classify(params, PerturbedRecords(records, op, rate, seed, synonyms))
    return float(np.mean(np.argmax(probs, -1) == labels)) if len(labels) else math.nan


@dataclasses.dataclass
class AttackResult:
    attacked: int = 0
    right_before: int = 0
    flipped: int = 0
    changed_share: list = dataclasses.field(default_factory=list)
    queries: list = dataclasses.field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {
            "attack/accuracy": (self.right_before - self.flipped) / max(self.attacked, 1),
            "attack/success_rate": self.flipped / max(self.right_before, 1),
            "attack/words_changed": float(np.mean(self.changed_share)) if self.changed_share
            else 0.0,
            "attack/queries": float(np.mean(self.queries)) if self.queries else 0.0,
            "attack/examples": float(self.attacked),
        }


def _candidates(word: str, synonyms: SynonymLookup) -> tuple[str, ...]:
    """The word's one-word synonyms, with its punctuation and capital kept."""
    lead, core, trail = split_word(word)
    if not core.isalpha() or is_stop_word(core):
        return ()
    return tuple(lead + with_case(s, core) + trail for s in synonyms(core) if " " not in s)


def attack(classify: Classifier, params, records: Sequence, synonyms: SynonymLookup,
           budget: int) -> AttackResult:
    """The greedy word-substitution attack on `records` (their `text` field)."""
    result = AttackResult()
    for record in records:
        result.attacked += 1
        probs, labels = classify(params, [record])
        label = int(labels[0])
        if int(np.argmax(probs[0])) != label:
            continue
        result.right_before += 1
        words = record["text"].split()
        # Importance: the true class's probability without each word.
        queries = len(words)
        if queries > budget:
            continue
        without = [{**record, "text": " ".join(words[:i] + words[i + 1:])}
                   for i in range(len(words))]
        drop = probs[0, label] - classify(params, without)[0][:, label] if words else []
        current, best_p, changed = list(words), probs[0, label], 0
        for i in np.argsort(-np.asarray(drop), kind="stable"):
            options = _candidates(words[i], synonyms)[:max(budget - queries, 0)]
            if not options:
                continue
            texts = [{**record, "text": " ".join(current[:i] + [o] + current[i + 1:])}
                     for o in options]
            p, _ = classify(params, texts)
            queries += len(options)
            flips = np.argmax(p, -1) != label
            pick = int(np.argmin(p[:, label]))
            if flips.any() or p[pick, label] < best_p:
                current[i], best_p = options[pick], p[pick, label]
                changed += 1
            if flips.any():
                result.flipped += 1
                result.changed_share.append(changed / len(words))
                result.queries.append(queries)
                break
            if queries >= budget:
                break
    return result


def robustness_metrics(classify: Classifier, params, records, config: RobustnessConfig,
                       synonyms: SynonymLookup | None) -> dict[str, float]:
    """Perturbed accuracies (`robust/<op>@<rate>/accuracy`) and the attack's figures."""
    out = {}
    for entry in config.perturbations:
        op, rate = config.parse(entry)
        out[f"robust/{entry}/accuracy"] = perturbed_accuracy(classify, params, records, op,
                                                             rate, config.seed, synonyms)
    if config.attack_examples:
        chosen = [records[i] for i in range(min(config.attack_examples, len(records)))]
        out.update(attack(classify, params, chosen, synonyms, config.attack_budget).metrics())
    return out
