"""Translation with a decoder: Spanish -> English Bible verses, SmolLM2-135M-Instruct with LoRA.

Run:
  python -m ftjax.assets fetch bible-es-en smollm2-135m-instruct
  ftjax train experiments/translate_es_en_smollm2.py --workdir workdirs/translate --record

Data: asset bible-es-en (Reina-Valera 1909 -> King James Version, 30,489 aligned verses in 66
books, ftjax.assets.bible). Held out BY BOOK: the 66 books are permuted with seed 0 and split
80/10/10 (split_group_column="book"), so no verse of a validation or test book is trained on.
Each verse is a user turn of SmolLM2's own ChatML template ("Translate this Spanish Bible verse
into English. Reply with the translation only." after a short system turn); the loss counts only on the English verse and its <|im_end|>; documents are
packed whole into rows of 256 tokens (segment ids keep them apart).

Evaluation: the GenerationEval hook decodes every example of the evaluated splits greedily from
the same prompt ids (at most 128 new tokens) and scores sacrebleu corpus BLEU and chrF against
the KJV verse; validation and test are both evaluated at step 0 (zero-shot: the instruct model
as it ships) and at the end (fine-tuned), on seeded subsets of 100 verses each. The best
checkpoint is chosen by validation BLEU.

Measured (2-core CPU shared with up to four other runs, 2026-12-06, the config as written: 200
steps of 4 packed rows of 256 tokens, LoRA r=8, AdamW 1e-3 cosine, 4,868 s wall, most of it
the four generation passes; experiments/results/translate_es_en_smollm2.json):
  ftjax train experiments/translate_es_en_smollm2.py --workdir workdirs/translate --record
                      zero-shot (step 0)              fine-tuned (step 200)
  validation (100)    BLEU 0.48  chrF 14.6  ppl 30.7   BLEU 7.38  chrF 28.0  ppl 10.0
  test (100)          BLEU 0.83  chrF 16.3  ppl 20.4   BLEU 9.77  chrF 32.1  ppl 7.59
Zero-shot, the 135M instruct model mostly copies the Spanish or announces a translation; after
200 steps it writes KJV-style English ("But Anna did not go up to him, but said, I will not go
up ..."), still far from the reference's content. (The run predates `generation_metrics`: its
hook scored BLEU and chrF on every prompt / target source, the same figures.)
"""

import ml_collections

from ftjax import assets
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "smollm2-135m-instruct"
    c.head.kind = "lm"
    c.method = "lora"
    c.task.kind = "causal_lm"
    c.task.max_length = 256
    c.task.template = ("Translate this Spanish Bible verse into English. Reply with the "
                       "translation only.\n\n{text}")
    c.task.chat = True
    c.task.system_prompt = "You are a translator."
    c.sources.bible = ml_collections.ConfigDict({
        "kind": "local", "format": "jsonl", "path": str(assets.resolve("bible-es-en")),
        "prompt_column": "es", "text_column": "en", "label_column": None,
        "keep_columns": ("book",),
        "split_fractions": (0.8, 0.1, 0.1), "split_group_column": "book", "split_seed": 0,
        "max_eval_examples": 100, "generation_metrics": ("bleu", "chrf"),
    })
    c.hooks = ("ftjax.generate.evaluation:GenerationEval",)
    c.eval_splits = ("validation", "test")
    c.eval_at_start = True
    c.steps = 200
    c.batch_size = 4
    c.eval_batch_size = 8
    c.eval_every = 200
    c.checkpoint_every = 100
    c.log_every = 20
    c.best_metric = "bleu"
    c.best_mode = "max"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.schedule = "cosine"
    return c
