"""Generation-based evaluation: decode each eval example's target from its prompt and score it.

`GenerationEval` is a Trainer hook (ftjax.train.hooks.base, `extend_eval`): at every evaluation
it generates the target of every example of the evaluated splits of each prompt / target
source (task kind causal_lm with a prompt field, e.g. translation), from exactly the prompt ids
training conditions on (`CausalLM` featurizer's `prompt_ids`, template and chat framing
included), and adds sacrebleu's corpus `bleu` and `chrf` to the split's metrics. Selection
(`best_metric = "bleu"`), early stopping, metrics.jsonl, TensorBoard and the final report then
treat them like the eval step's own. Each evaluation's generations are also written to
`<workdir>/generations/<split>-<step>.jsonl` (prompt, reference, hypothesis) for reading.

A config names it with its defaults (`hooks = ("ftjax.generate.evaluation:GenerationEval",)`);
Python passes one with other settings (`train(cfg, workdir, hooks=[GenerationEval(
num_beams=4)])`). Decoding runs the whole model on this process's devices, so a run over
several processes evaluates by generation on none of them (the hook says so once).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax

from ftjax.generate.api import complete_ids
from ftjax.generate.sampling import SamplingConfig
from ftjax.generate.scoring import bleu_chrf
from ftjax.train.hooks import Hook


class GenerationEval(Hook):
    """BLEU / chrF of generated targets on every evaluated split of prompt / target sources.

    max_new_tokens: the longest generated target; num_beams > 1: beam search with
    `length_penalty` (score sum(log p) / length ** length_penalty), else greedy decoding;
    batch_size: prompts decoded together; max_examples: n > 0 scores the first n examples of
    each split (the data block's max_eval_examples draws a random subset instead).
    """

    eval_metric_names = ("bleu", "chrf")

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
        if jax.process_count() > 1:
            trainer.say("generation eval: skipped (the run spans several processes)")
            return
        exp = trainer.exp
        for split in [key for key in results if "/" not in key]:
            scored = {}
            for source in exp.sources:
                if split in source.splits and getattr(source.task, "prompt_key", None):
                    scored[source.name] = self._score(trainer, source, split)
            if not scored:
                continue
            if len(exp.sources) == 1:
                results[split].update(next(iter(scored.values())))
                continue
            for name, metrics in scored.items():
                results[f"{split}/{name}"].update(metrics)
            # The split's average follows the trained sources, as evaluate_splits' does.
            averaged = [scored[s.name] for s in exp.sources if s.name in scored and s.trained]
            averaged = averaged or list(scored.values())
            results[split].update({metric: sum(m[metric] for m in averaged) / len(averaged)
                                   for metric in self.eval_metric_names})

    def _score(self, trainer, source, split: str) -> dict[str, float]:
        exp = trainer.exp
        records = list(source.splits[split])
        if self.max_examples:
            records = records[: self.max_examples]
        featurizer = source.task.featurizer(exp.tokenizer)
        prompts = [featurizer.prompt_ids(r, f"{source.name} {split} example {i}")
                   for i, r in enumerate(records)]
        references = [r[source.task.text_key] for r in records]
        hypotheses = self.decode(exp.model, trainer.state.params, exp.tokenizer, prompts)
        if trainer.primary:
            self._write(trainer, source, split, records, references, hypotheses)
        return bleu_chrf(hypotheses, references)

    def decode(self, model, params, tokenizer, prompts: Sequence[Sequence[int]]) -> list[str]:
        """Each prompt's generated text, stripped, in `batch_size` chunks."""
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts, _ = complete_ids(model, params, tokenizer,
                                    prompts[start : start + self.batch_size],
                                    sampling=SamplingConfig(greedy=True),
                                    max_new_tokens=self.max_new_tokens,
                                    num_beams=self.num_beams,
                                    length_penalty=self.length_penalty)
            out.extend(text.strip() for text in texts)
        return out

    def _write(self, trainer, source, split: str, records, references, hypotheses):
        name = split if len(trainer.exp.sources) == 1 else f"{split}-{source.name}"
        path = trainer.workdir / "generations" / f"{name}-{int(trainer.state.step)}.jsonl"
        path.parent.mkdir(exist_ok=True)
        prompt_key = source.task.prompt_key
        with open(path, "w", encoding="utf-8") as f:
            for record, reference, hypothesis in zip(records, references, hypotheses):
                f.write(json.dumps({"prompt": record[prompt_key], "reference": reference,
                                    "hypothesis": hypothesis}, ensure_ascii=False) + "\n")
