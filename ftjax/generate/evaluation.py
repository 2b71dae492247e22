"""Generation-based evaluation: decode each eval example's target from its prompt and score it.

`GenerationEval` is a Trainer hook (ftjax.train.hooks.base, `extend_eval`). At every evaluation,
for each source that names `generation_metrics` (bleu, chrf, exact_match), it generates the
target of every example of the evaluated splits from exactly the prompt ids training
conditions on (the featurizer's `generation_example`: a causal-LM prompt in its template and
chat framing, or a conversation up to its last assistant turn) and adds the metrics to the
split's results: sacrebleu's corpus BLEU and chrF, and the percentage of generations equal to
the reference after stripping whitespace. Selection (`best_metric = "bleu"`), early
stopping, metrics.jsonl, TensorBoard and the final report treat them like the eval step's
own. Each evaluation's generations are also written to
`<workdir>/generations/<split>[-<source>]-<step>.jsonl` (prompt, reference, hypothesis).

A config names it with its defaults (`hooks = ("ftjax.generate.evaluation:GenerationEval",)`);
Python passes one with other settings (`train(cfg, workdir, hooks=[GenerationEval(
num_beams=4)])`). Decoding runs the whole model on this process's devices, so a run over
several processes evaluates by generation on none of them (the hook says so).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax

from ftjax.generate.api import decode_prompts
from ftjax.generate.scoring import bleu_chrf
from ftjax.train.evaluation import add_source_metrics
from ftjax.train.hooks import Hook


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Percent of hypotheses equal to their reference, surrounding whitespace ignored."""
    if not references:
        return 0.0
    same = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
    return 100.0 * same / len(references)


def score_generations(metrics: Sequence[str], hypotheses: Sequence[str],
                      references: Sequence[str]) -> dict[str, float]:
    """The named generation metrics (ftjax.data.config.GENERATION_METRICS)."""
    out = {}
    if {"bleu", "chrf"} & set(metrics):
        out.update({k: v for k, v in bleu_chrf(hypotheses, references).items() if k in metrics})
    if "exact_match" in metrics:
        out["exact_match"] = exact_match(hypotheses, references)
    return out


class GenerationEval(Hook):
    """Generation metrics of every source with `generation_metrics`, on each evaluated split.

    max_new_tokens: the longest generated target; num_beams > 1: beam search with
    `length_penalty` (score sum(log p) / length ** length_penalty), else greedy decoding;
    batch_size: prompts decoded together; max_examples: n > 0 scores the first n examples of
    each split (the source's max_eval_examples draws a random subset instead).
    """

    eval_metric_names = ("bleu", "chrf", "exact_match")

    def __init__(self, *, max_new_tokens: int = 128, num_beams: int = 1,
                 length_penalty: float = 1.0, batch_size: int = 32, max_examples: int = 0):
        if max_new_tokens < 1 or num_beams < 1 or batch_size < 1 or max_examples < 0:
            raise ValueError(f"GenerationEval needs max_new_tokens, num_beams, batch_size >= 1 "
                             f"and max_examples >= 0, got {max_new_tokens}, {num_beams}, "
                             f"{batch_size}, {max_examples}")
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams
        self.length_penalty, self.batch_size = length_penalty, batch_size
        self.max_examples = max_examples

    def extend_eval(self, trainer, results: dict) -> None:
        exp = trainer.exp
        if not any(s.generation_metrics for s in exp.sources):
            return
        if jax.process_count() > 1:
            trainer.say("generation eval: skipped (the run spans several processes)")
            return
        for split in [key for key in results if "/" not in key]:
            per_source = {s.name: self._score(trainer, s, split) for s in exp.sources
                          if s.generation_metrics and split in s.splits}
            if per_source:
                add_source_metrics(exp, results, split, per_source)

    def _score(self, trainer, source, split: str) -> dict[str, float]:
        exp = trainer.exp
        records = list(source.splits[split])
        if self.max_examples:
            records = records[: self.max_examples]
        featurizer = source.task.featurizer(exp.tokenizer)
        examples = [featurizer.generation_example(r, f"{source.name} {split} example {i}")
                    for i, r in enumerate(records)]
        prompts = [prompt for prompt, _ in examples]
        references = [reference for _, reference in examples]
        hypotheses = self.decode(exp.model, trainer.state.params, exp.tokenizer, prompts)
        if trainer.primary:
            self._write(trainer, source.name, split, prompts, references, hypotheses)
        return score_generations(source.generation_metrics, hypotheses, references)

    def decode(self, model, params, tokenizer, prompts: Sequence[Sequence[int]]) -> list[str]:
        """Each prompt's generated text, stripped, in `batch_size` chunks."""
        return decode_prompts(model, params, tokenizer, prompts, batch_size=self.batch_size,
                              max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                              length_penalty=self.length_penalty)

    def _write(self, trainer, source: str, split: str, prompts, references, hypotheses):
        name = split if len(trainer.exp.sources) == 1 else f"{split}-{source}"
        path = trainer.workdir / "generations" / f"{name}-{int(trainer.state.step)}.jsonl"
        path.parent.mkdir(exist_ok=True)
        tokenizer = trainer.exp.tokenizer
        with open(path, "w", encoding="utf-8") as f:
            for prompt, reference, hypothesis in zip(prompts, references, hypotheses):
                f.write(json.dumps({"prompt": tokenizer.decode(prompt, skip_special_tokens=False),
                                    "reference": reference, "hypothesis": hypothesis},
                                   ensure_ascii=False) + "\n")
