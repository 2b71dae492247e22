"""Pseudo-perplexity of a masked LM (Salazar et al., 2020), added to every evaluation.

Each token of a text is masked alone and scored given all the others; the pseudo-log-
likelihood of the text is the sum of those log-probabilities, and the pseudo-perplexity
exp(-PLL / tokens) over a split. Rows come from `ftjax.data.PseudoLikelihood` (one per real
non-special token) and go through the run's own eval step, whose mean masked-token loss over
them is -PLL per token. A text of n tokens costs n forward passes, so `max_examples` (the
first n records of each split, 32 by default) bounds the cost.
"""

from __future__ import annotations

from ftjax.data import PseudoLikelihood
from ftjax.train.evaluation import add_source_metrics, evaluate, perplexity_of
from ftjax.train.hooks.base import Hook


class PseudoPerplexity(Hook):
    """`pseudo_perplexity` of every masked-LM source on each evaluated split."""

    eval_metric_names = ("pseudo_perplexity",)

    def __init__(self, max_examples: int = 32):
        if max_examples < 1:
            raise ValueError(f"PseudoPerplexity needs max_examples >= 1, got {max_examples}")
        self.max_examples = max_examples

    def extend_eval(self, trainer, results: dict) -> None:
        exp = trainer.exp
        for split in [key for key in results if "/" not in key]:
            per_source = {s.name: {"pseudo_perplexity": self._measure(trainer, s, split)}
                          for s in exp.sources
                          if split in s.splits and hasattr(s.task, "mask_prob")}
            if per_source:
                add_source_metrics(exp, results, split, per_source)

    def _measure(self, trainer, source, split: str) -> float:
        batches = trainer.exp.placed_eval_batches(split, source.name,
                                                  task=PseudoLikelihood(source.task),
                                                  max_records=self.max_examples)
        metrics = evaluate(trainer.eval_step, trainer.state, batches)
        # The masked-token loss alone (other terms, if any, are not the likelihood).
        task_term = trainer.eval_step.terms[0].name
        loss = metrics.get(f"loss/{task_term}", metrics["loss"])
        return perplexity_of(loss)
