"""Domain-adaptive continued pretraining (masked LM): all-MiniLM-L6-v2 on King James English.

Run:
  python -m ftjax.assets fetch bible-es-en all-minilm-l6-v2 polarity
  ftjax train experiments/dapt_mlm_minilm.py --workdir workdirs/dapt_mlm --record

Data: the English side of asset bible-es-en (KJV verses), held out by book (66 books permuted
with seed 0, 90/5/5): a domain of archaic English far from the sentence-embedding data MiniLM was
trained on. The general-text source is the movie-review sentences of asset polarity, evaluated
only (train=False), to see what the adaptation forgets. Rows of 64 tokens, 15% of tokens
selected (80% [MASK], 10% random, 10% kept), whole words.

The checkpoint has no MLM head (sentence-transformers ships the encoder only), so the head is
BERT's: a new dense + GELU + LayerNorm transform and a new bias, the decoder tied to the input
embeddings (ftjax.models.heads.MaskedLMHead). Step 0 therefore measures an untrained transform;
the figures that matter are the end's, and general vs domain text.

Metrics (validation of each source at step 0 and at the end, test at the end): `accuracy`
(masked-token accuracy), `perplexity` (of the masked tokens), `pseudo_perplexity` (every token
masked alone, Salazar et al. 2020, over the first 32 texts of each split:
ftjax.train.hooks.PseudoPerplexity).

Measured (2-core CPU shared with four other runs, 2026-12-06, the config as written: 300 steps
of 16 rows, full fine-tuning, AdamW 1e-4, 2,449 s wall; experiments/results/dapt_mlm_minilm.json):
  ftjax train experiments/dapt_mlm_minilm.py --workdir workdirs/dapt_mlm --record
                         step 0 (new head)                 step 300
  KJV validation         acc 0.000  ppl 60,754  PPPL 60,830  acc 0.282  ppl 103  PPPL 131
  reviews validation     acc 0.000  ppl 60,075  PPPL 62,973  acc 0.132  ppl 1,820  PPPL 1,961
  KJV test (end)                                           acc 0.252  ppl 119  PPPL 106
  reviews test (end)                                       acc 0.123  ppl 1,950  PPPL 1,844
With no pretrained MLM head, step 0 is chance (the vocabulary has 30,522 tokens): the general
text improves too as the head learns, so this run shows domain adaptation (KJV pseudo-
perplexity 15x below the never-trained general text's) but cannot show forgetting; that needs a
checkpoint with its MLM head.
"""

import ml_collections

from ftjax import assets
from ftjax.train.config import base_config


def get_config():
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.head.kind = "mlm"
    c.method = "full"
    c.task.kind = "masked_lm"
    c.task.max_length = 64
    c.task.whole_word = True
    c.sources.kjv = ml_collections.ConfigDict({
        "kind": "local", "format": "jsonl", "path": str(assets.resolve("bible-es-en")),
        "text_column": "en", "label_column": None,
        "split_fractions": (0.9, 0.05, 0.05), "split_group_column": "book", "split_seed": 0,
        "max_eval_examples": 500,
    })
    c.sources.general = ml_collections.ConfigDict({
        "kind": "polarity", "label_column": None, "train": False, "max_eval_examples": 500,
    })
    c.data.source = "polarity"
    c.hooks = ("ftjax.train.hooks:PseudoPerplexity",)
    c.eval_splits = ("validation",)  # the test split once, at the end
    c.eval_at_start = True
    c.steps = 300
    c.batch_size = 16
    c.eval_batch_size = 64
    c.eval_every = 300
    c.checkpoint_every = 100
    c.log_every = 20
    c.best_metric = "perplexity"
    c.best_mode = "min"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 30
    c.optimizer.schedule = "linear"
    return c
