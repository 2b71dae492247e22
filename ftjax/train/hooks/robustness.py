"""Robustness metrics in evaluation: perturbed accuracies and a word-substitution attack
(ftjax.train.robustness) on the splits a run's `robustness` block lists, each time they are
evaluated (the test split: once, at the end)."""

from __future__ import annotations

from ftjax.assets import resolve
from ftjax.data.wordnet import Synonyms
from ftjax.train.hooks.base import Hook
from ftjax.train.robustness import Classifier, RobustnessConfig, robustness_metrics


class RobustnessEval(Hook):
    """Adds `robust/<op>@<rate>/accuracy` and `attack/*` to the listed splits' results."""

    def __init__(self, config: RobustnessConfig):
        self.config = config
        self._classifier = None
        self._synonyms = None
        names = [f"robust/{p}/accuracy" for p in config.perturbations]
        if config.attack_examples:
            names += ["attack/accuracy", "attack/success_rate", "attack/words_changed",
                      "attack/queries", "attack/examples"]
        self.eval_metric_names = tuple(names)

    def synonyms(self):
        if self._synonyms is None and self.config.needs_synonyms:
            self._synonyms = Synonyms(resolve(self.config.wordnet), self.config.senses)
        return self._synonyms

    def measure(self, exp, params, split: str) -> dict[str, float]:
        if self._classifier is None:
            self._classifier = Classifier(exp)
        return robustness_metrics(self._classifier, params, exp.sources[0].splits[split],
                                  self.config, self.synonyms())

    def extend_eval(self, trainer, results: dict) -> None:
        for split in self.config.splits:
            if split in results:
                results[split].update(self.measure(trainer.exp, trainer.state.params, split))
