"""Domain-adaptive continued pretraining (causal LM): SmolLM2-135M-Instruct with LoRA on the US
State of the Union addresses, perplexity on held-out speeches and on general text, before and
after.

Run:
  python -m ftjax.assets fetch sotu smollm2-135m-instruct polarity
  ftjax train experiments/dapt_clm_smollm2.py --workdir workdirs/dapt_clm --record

Data: asset sotu (233 speeches, 1790-2021, one file each: `data/*.txt`, each file one document,
txt_unit="document"), split 90/5/5 by speech with seed 0 (4 of the 12 held-out speeches of each split evaluated); documents are packed whole into rows
of 256 tokens, a long speech cut into pieces that each restart positions and keep their targets
(segment ids: no attention across documents). The general-text source is the movie-review
sentences of asset polarity, evaluated only (train=False): it never trains, and its perplexity
(validation/general, test/general) shows what the domain adaptation forgets. Selection follows
the speeches' validation perplexity.

Measured (2-core CPU shared with up to four other runs, 2026-12-06, the config as written: 80
steps of 4 packed rows of 256 tokens, LoRA r=8, AdamW 5e-4 cosine, 3,320 s wall;
experiments/results/dapt_clm_smollm2.json, "before" = its metrics_at_start):
  ftjax train experiments/dapt_clm_smollm2.py --workdir workdirs/dapt_clm --record
                                     before    after 80 steps
  speeches, validation (4 held out)   30.24     25.50
  speeches, test (4 held out)         36.18     30.21
  movie reviews, validation (never trained)  161.53    159.25
  movie reviews, test                 180.17    173.65
The domain's perplexity falls by a sixth; the general text's does not rise (it falls slightly:
80 LoRA steps on plain English prose also move the instruct model toward plain text without
its chat framing), so this short run shows no forgetting.
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
    c.sources.sotu = ml_collections.ConfigDict({
        "kind": "local", "format": "txt", "txt_unit": "document",
        "path": str(assets.resolve("sotu") / "*.txt"), "label_column": None,
        "split_fractions": (0.9, 0.05, 0.05), "split_seed": 0, "max_eval_examples": 4,
    })
    c.sources.general = ml_collections.ConfigDict({
        "kind": "polarity", "label_column": None, "train": False, "max_eval_examples": 300,
    })
    c.data.source = "polarity"
    c.eval_splits = ("validation", "test")
    c.eval_at_start = True
    c.steps = 80
    c.batch_size = 4
    c.eval_batch_size = 8
    c.eval_every = 80
    c.checkpoint_every = 40
    c.log_every = 10
    c.best_metric = "perplexity"
    c.best_mode = "min"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 8
    c.optimizer.schedule = "cosine"
    return c
